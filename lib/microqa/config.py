"""Every path the study uses, the environment overrides, and the run profiles.

Environment variables (all optional):
  MICROQA_ROOT      repository root (default: found from this file)
  MICROQA_DATA      data directory (default: <root>/data)
  MICROQA_BUILD     build directory (default: <root>/build)
  MICROQA_PROFILE   "full" (default) or "smoke" (tiny, fast; used by the tests)
  MICROQA_SAMPLE    the embedded offline sample (default: <root>/data/sample)
  MICROQA_MODELS    locally built stand-in models (default: ~/.cache/microqa/models)
  DOITPOMS_URL      base URL of the micrograph library (default: the live site)
  STRICT            "1" turns every offline substitution (sample data, random weights) into an error
  MICROQA_JOBS      processes for the CPU-bound fits and bootstraps (default: every usable core)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_DOITPOMS_URL = "https://www.doitpoms.ac.uk/miclib/"
PROJECT_URL = "https://github.com/microqa/microqa"
USER_AGENT = f"microqa/0.1 (research study of micrographs; +{PROJECT_URL})"


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


def repo_root() -> Path:
    return _env_path("MICROQA_ROOT", Path(__file__).resolve().parents[2])


def data_dir() -> Path:
    return _env_path("MICROQA_DATA", repo_root() / "data")


def build_dir() -> Path:
    return _env_path("MICROQA_BUILD", repo_root() / "build")


def figures_dir() -> Path:
    return _env_path("MICROQA_FIGURES", repo_root() / "figures")


def tables_dir() -> Path:
    return _env_path("MICROQA_TABLES", repo_root() / "tables")


def scraped_dir() -> Path:
    """Where `make reproduce` keeps (and looks for) a scraped copy of the library."""
    return data_dir() / "doitpoms"


def sample_dir() -> Path:
    """The embedded offline sample, committed with the repository."""
    return _env_path("MICROQA_SAMPLE", repo_root() / "data" / "sample")


def models_dir() -> Path:
    """Locally built model files (random-weight substitutes, tiny test models): rebuilt from
    their seed when missing, so they live in the user's cache, not in the working tree
    (MICROQA_MODELS, else $XDG_CACHE_HOME/microqa/models, else ~/.cache/microqa/models)."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return _env_path("MICROQA_MODELS", Path(cache_home).expanduser() / "microqa" / "models")


def cache_dir() -> Path:
    return data_dir() / "cache"


def shared_dir() -> Path:
    """The offline mirror and reference features beside the checkout (absent for most users)."""
    return _env_path("MICROQA_SHARED", repo_root().parent / "shared")


def notebooks() -> tuple[str, ...]:
    """The study's notebooks in run order (notebooks/NN_*.ipynb): the one list the Makefile
    (by the same pattern), the report and the tests use."""
    folder = Path(__file__).resolve().parents[2] / "notebooks"  # this checkout's, always
    return tuple(sorted(p.stem for p in folder.glob("[0-9][0-9]_*.ipynb")))


def display_path(path: Path | str) -> str:
    """A path as provenance stores it and an error names a user's folder: relative to the
    repository when inside it (so a second clone reads its own data), else as given.
    `repo_path` inverts it; `publishing.relative` is the form shown to readers."""
    path = Path(path)
    try:
        return path.resolve().relative_to(repo_root()).as_posix()
    except ValueError:
        return str(path)


def repo_path(path: Path | str) -> Path:
    """The inverse of display_path: a relative path is taken from the repository root
    (notebooks run in notebooks/, so their working directory is no anchor)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else repo_root() / path


def doitpoms_url() -> str:
    return os.environ.get("DOITPOMS_URL") or DEFAULT_DOITPOMS_URL


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity and a container's CPU quota (joblib reads
    both; os.cpu_count() sees every core of the host)."""
    from joblib import cpu_count

    return max(1, cpu_count())


def parallel_jobs() -> int:
    """Processes for the CPU-bound pieces the study spreads over cores (`microqa.parallel`:
    the probes' fits and bootstraps, notebook 05's per-row bootstraps): MICROQA_JOBS, else
    every usable core."""
    value = os.environ.get("MICROQA_JOBS", "").strip()
    if value:
        if not (value.isascii() and value.isdigit()) or int(value) < 1:
            raise ValueError(f"MICROQA_JOBS={value!r}: expected a whole number of processes >= 1")
        return int(value)
    return usable_cores()


def strict() -> bool:
    return os.environ.get("STRICT", "0").strip().lower() in {"1", "true", "yes"}


VLM_MODELS = ("Qwen/Qwen3-VL-8B-Instruct", "llava-hf/llava-v1.6-mistral-7b-hf")


@dataclass(frozen=True)
class Profile:
    """Every setting of a run that changes its numbers, in one place: the models, how many
    images, the bootstrap size, the seeds. `smoke` keeps every code path but shrinks the sizes.
    A notebook's parameters override these fields (`with_overrides`); the run records the
    resolved profile in provenance."""

    name: str
    clip_models: tuple[str, ...]
    max_images: int | None  # None: all images
    # CLIP architectures that may stand in with random weights when pretrained ones are missing.
    # ViT-L-14 is left out: on CPU it embeds ~0.5 img/s (measured), over the notebook's budget.
    clip_random_archs: tuple[str, ...] = ("ViT-B-32",)
    # None: the prompt sets of microqa.clip.prompts; else {set name: {task: {class: [prompts]}}}
    clip_prompt_sets: dict | None = None
    vlm_models: tuple[str, ...] = VLM_MODELS
    # None: the questions of microqa.vlm.questions; else the study's wording per task,
    # {task: {"question": text, "options": {class: text}}} (either key optional)
    vlm_questions: dict | None = None
    vlm_sample_size: int | str = "all"  # "all" labelled images, or a stratified sample size
    vlm_agreement_n: int = 60  # images also asked in the other mode; 0: skip
    # the images every image-variant run asks about (CLIP and VLMs alike): a seeded sample of
    # the VLM's images stratified by technique family (`data.variants.robustness_sample`)
    robustness_sample_size: int = 150
    n_boot: int = 1000  # bootstrap resamples behind every interval
    seed: int = 0  # folds, samples, stand-in weights, bootstrap
    cv_seeds: int = 10  # repeated CV of the probes: fold seeds per probe and scheme
    # The sizes used instead when the data is the embedded sample (`for_sample`); {}: the same.
    on_sample: dict[str, Any] = field(default_factory=dict)

    def with_overrides(self, **overrides: Any) -> Profile:
        """This profile with some fields replaced (a notebook's parameters). A value of None
        keeps the profile's; a list or dict may come as a JSON string (papermill's `-p`
        passes strings: `-p clip_models '["ViT-B-32:openai","RN50:openai"]'`)."""
        known = {f.name: f for f in fields(self)}
        changes = {}
        for key, value in overrides.items():
            if value is None:
                continue
            if key not in known or key in NOT_PARAMETERS:
                settable = sorted(set(known) - NOT_PARAMETERS)
                raise ValueError(f"unknown profile setting {key!r}; settings: {settable}")
            changes[key] = _coerce(key, value, getattr(self, key))
        return replace(self, **changes)

    def for_sample(self, kept: Sequence[str] = ()) -> Profile:
        """This profile as it runs on the embedded sample: `on_sample`'s sizes, except for the
        settings in `kept` (a notebook's parameters: what a user sets is what runs)."""
        return replace(self, **{k: v for k, v in self.on_sample.items() if k not in kept})

    def sample_note(self) -> str:
        """The sizes `for_sample` changes, as a reader of the banner knows them ("" if none)."""
        shown = [SAMPLE_SIZE_NAMES[k].format(v) for k, v in self.on_sample.items()]
        return ", ".join(shown)

    def overrides_from(self, base: Profile) -> dict[str, Any]:
        """The fields where this profile differs from `base` (what a variant run changed)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) != getattr(base, f.name)
        }

    def as_record(self) -> dict[str, Any]:
        """The resolved profile as provenance stores it (JSON types)."""
        return json.loads(json.dumps(asdict(self)))


# Profile fields a notebook parameter cannot set: the profile's name and its sample sizes.
NOT_PARAMETERS = {"name", "on_sample"}

# How the banner names each size `Profile.on_sample` may change.
SAMPLE_SIZE_NAMES = {
    "cv_seeds": "{} CV fold seeds per probe",
    "vlm_agreement_n": "{} images asked in both VLM modes",
    "robustness_sample_size": "{} images per image variant",
    "n_boot": "{} bootstrap resamples",
}

# settings given as a mapping (None by default), and the shape each expects
MAPPING_SETTINGS = {
    "clip_prompt_sets": "{set: {task: {class: [prompts]}}}",
    "vlm_questions": '{task: {"question": text, "options": {class: text}}}',
}


def _coerce(key: str, value: Any, current: Any) -> Any:
    """A parameter value in the type of the profile field it overrides."""
    wants_collection = isinstance(current, tuple | dict) or key in MAPPING_SETTINGS
    if isinstance(value, str) and wants_collection:
        text = value.strip()
        if text[:1] in "[{":
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"{key}: not valid JSON ({err.msg}): {text[:60]!r}") from None
        else:
            value = [text]  # one model name
    if isinstance(current, tuple):
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{key} must be a list of strings, got {value!r}")
        return tuple(value)
    if key in MAPPING_SETTINGS and not isinstance(value, dict):
        raise ValueError(f"{key} must be a mapping {MAPPING_SETTINGS[key]}")
    return value


PROFILES = {
    "full": Profile(
        name="full",
        clip_models=(
            "ViT-B-32:openai",
            "ViT-L-14:openai",
            "ViT-B-16-SigLIP:webli",
            "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        ),
        max_images=None,
        # The embedded sample is 60 images: a newcomer's offline first run, on random weights,
        # whose numbers are noise by construction. The side analyses sized for the 867-image
        # library would cover all of it (every image asked in both VLM modes and under every
        # image variant) and its repeated CV would refit ten times; these sizes keep every
        # analysis, table and page, with fewer repeats, in about three minutes on 2 cores.
        on_sample={"cv_seeds": 3, "vlm_agreement_n": 20, "robustness_sample_size": 30},
    ),
    "smoke": Profile(
        name="smoke",
        clip_models=("ViT-B-32:openai",),
        max_images=40,
        vlm_sample_size=12,
        vlm_agreement_n=6,
        robustness_sample_size=8,
        n_boot=100,  # smoke checks the code paths, not the intervals
    ),
}


def profile(name: str | None = None) -> Profile:
    """The named profile; with no name, MICROQA_PROFILE, else "full". (A run holds the profile
    it resolved: see microqa.run.Run.)"""
    chosen = name or os.environ.get("MICROQA_PROFILE", "full")
    if chosen not in PROFILES:
        raise ValueError(f"unknown profile {chosen!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[chosen]
