"""Shared fixtures: paths to ../shared, and a smoke-profile papermill run of the notebooks."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from microqa import config

# Under xdist (make test-unit) the suite already runs one pytest worker per core, so there the
# study's own process pools (microqa.parallel) stay serial unless a test asks for more; a
# plain run (make test, the notebooks' kernels) spreads them over the cores as a user's does.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["MICROQA_JOBS"] = "1"  # even where the developer exported another value

# jsonschema offers an "iri" format check when rfc3987_syntax is installed (it comes with
# JupyterLab's jupyter-events), and that module builds an Earley grammar at import: about 6 s
# of every pytest worker's collection here, since nbformat imports jsonschema. nbformat's
# schemas use no formats at all, so the tests leave it out; a user's run is unaffected.
sys.modules.setdefault("rfc3987_syntax", None)  # `import rfc3987_syntax` now raises ImportError

REPO = Path(__file__).resolve().parents[1]
SHARED = config.shared_dir()
MIRROR = SHARED / "doitpoms"
REFERENCE = SHARED / "reference"
NOTEBOOKS = list(config.notebooks())


def needs_mirror():
    return pytest.mark.skipif(
        not (MIRROR / "records.csv").exists(), reason=f"offline mirror not found at {MIRROR}"
    )


def needs_reference():
    return pytest.mark.skipif(
        not (REFERENCE / "clip_vit_b32_openai_image_embeddings.npz").exists(),
        reason=f"reference CLIP features not found at {REFERENCE}",
    )


class NotebookPipeline:
    """Executes the real notebooks with papermill into a temporary tree.

    Asking for notebook k first runs every earlier notebook once (their outputs feed it).
    By default (smoke profile) the site URL points at a closed local port, so notebook 01
    takes the loud sample-data fallback, which is itself under test here.
    """

    def __init__(
        self,
        root: Path,
        *,
        profile: str = "smoke",
        site: str = "http://127.0.0.1:9/miclib/",
        parameters: dict[str, dict] | None = None,
    ):
        self.root = root
        self.profile = profile
        self.parameters = parameters or {}  # notebook name -> its extra parameters
        self.done: dict[str, Path] = {}
        self.env = {
            "MICROQA_BUILD": str(root / "build"),
            "MICROQA_FIGURES": str(root / "figures"),
            "MICROQA_TABLES": str(root / "tables"),
            "MICROQA_DATA": str(root / "data"),
            "MICROQA_PROFILE": profile,
            "DOITPOMS_URL": site,
        }

    def run(self, name: str) -> Path:
        for earlier in NOTEBOOKS[: NOTEBOOKS.index(name) + 1]:
            if earlier not in self.done:
                out = self.root / "notebooks" / f"{earlier}.ipynb"
                parameters = {"profile": self.profile, **self.parameters.get(earlier, {})}
                execute_notebook(earlier, out, env=self.env, parameters=parameters)
                self.done[earlier] = out
        return self.done[name]


def execute_notebook(name: str, out: Path, *, env: dict[str, str], parameters: dict) -> Path:
    """Run notebooks/<name>.ipynb with papermill into `out`, its kernel seeing `env`."""
    import papermill

    out.parent.mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        papermill.execute_notebook(
            str(REPO / "notebooks" / f"{name}.ipynb"),
            str(out),
            parameters=parameters,
            cwd=str(REPO / "notebooks"),
            progress_bar=False,
            kernel_name="python3",
        )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out


# Notebook 04 runs with its technique question reworded, as a user adapting it would (papermill
# passes a JSON string): the wording must reach the model and the page, and be recorded.
SMOKE_TECHNIQUE_QUESTION = "By which imaging technique was this micrograph taken?"
SMOKE_PARAMETERS = {
    "04_vlm_qa": {
        "vlm_questions": json.dumps({"technique": {"question": SMOKE_TECHNIQUE_QUESTION}})
    }
}


@pytest.fixture(scope="session")
def smoke_pipeline(tmp_path_factory) -> NotebookPipeline:
    return NotebookPipeline(tmp_path_factory.mktemp("smoke"), parameters=SMOKE_PARAMETERS)


# Test modules whose every test runs a real component whole: torch models built and embedded,
# worker and killed subprocesses (the CLI, make, git), HTTP servers, a browser. `make test-unit`
# leaves them out; single tests that start processes carry the mark themselves.
INTEGRATION_MODULES = {
    "test_bench_clip",
    "test_cli",
    "test_clip_embed",
    "test_clip_models",
    "test_clip_pixels",
    "test_clip_shards",
    "test_hostile_datasets",
    "test_makefile",
    "test_scraper",
    "test_scraper_resume",
    "test_site",
    "test_vlm_hf",
    "test_vlm_openai",
    "test_vlm_prefix",
    "test_vlm_real_server",
    "test_vlm_runner",
    "test_vlm_variants",
}


def _excluded_by_markexpr(config, marker: str) -> bool:
    """True when `-m` leaves out every test carrying `marker` whatever else it carries: the
    expression is a conjunction ("a and not b and ...") with "not <marker>" among its terms."""
    expression = " ".join(config.getoption("markexpr", "").split())
    terms = expression.split(" and ")
    return f"not {marker}" in terms and not any(" or " in t or "(" in t for t in terms)


def pytest_ignore_collect(collection_path, config):
    """`make test-unit` leaves out notebooks and integration tests: their modules are not even
    imported (each worker would otherwise load torch and the servers only to deselect them)."""
    path = Path(collection_path)
    folder = Path(__file__).parent / "notebooks"
    if (path == folder or folder in path.parents) and _excluded_by_markexpr(config, "notebooks"):
        return True
    if path.stem in INTEGRATION_MODULES and _excluded_by_markexpr(config, "integration"):
        return True
    return None


def pytest_collection_modifyitems(items):
    """Every test under tests/notebooks/ executes notebooks, and the modules above run whole
    components: marked so, whatever their files say (`make test-unit` leaves both out)."""
    folder = Path(__file__).parent / "notebooks"
    for item in items:
        path = Path(str(item.fspath))
        if folder in path.parents:
            item.add_marker(pytest.mark.notebooks)
        elif path.stem in INTEGRATION_MODULES:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """The tiny same-family VLMs (random weights), built once per test session into folders
    and loaded back through the path a user's model takes."""
    from microqa.vlm import tiny

    root = tmp_path_factory.mktemp("tiny_vlms")
    return {family: tiny.build_tiny_vlm(family, root / family) for family in tiny.FAMILIES}
