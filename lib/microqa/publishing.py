"""Where a run's figures and tables go, and how outputs name paths.

The publishing rule (README, "What runs where"): only a `make reproduce` run in the
full profile on the full library writes to the committed `figures/` and `tables/` (and may
update the README and `docs/`). Every other run (the embedded sample, a partial scrape, the
smoke profile, a notebook run by hand in JupyterLab or by papermill outside `make reproduce`)
writes under `build/runs/<name>/` and says so. `destination()` is the one function that
decides (a `microqa.run.Run` asks it, with the run's profile, data and variant);
`plots.save_figure` / `plots.save_table` write where the run says.

`relative(path)` is how every banner, title and caption names a path for a reader: relative to
the repository (or to the stage folder it lives in), never as a path of the machine. Why two path
helpers: `config.display_path` is the *stored* form (relative when inside the repository, else
absolute, so `config.repo_path` can invert it: provenance's dataset folder, errors naming a
user's folder); `relative` is the *shown* form, which may drop a machine's folders and so
cannot be inverted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from microqa import config

# Set by the Makefile's reproduce rule for the notebooks it executes: the only publishing runs.
PUBLISH_ENV = "MICROQA_PUBLISH"


def relative(path: Path | str) -> str:
    """`path` as a reader knows it: relative to the repository ("figures/x.png",
    "../shared/doitpoms"), or to a stage folder the environment moved ("build/vlm/answers.csv"),
    else just its name. Never an absolute path of this machine."""
    text = str(path)
    if not text:
        return text
    target = Path(text).expanduser()
    if not target.is_absolute():
        return target.as_posix()
    target = Path(os.path.abspath(target))
    anchors = [
        (config.figures_dir(), "figures"),
        (config.tables_dir(), "tables"),
        (config.build_dir(), "build"),
        (config.sample_dir(), "data/sample"),
        (config.data_dir(), "data"),
        (config.repo_root(), "."),
        (config.shared_dir(), "../shared"),
        (config.repo_root().parent, ".."),
    ]
    for anchor, name in anchors:
        try:
            rest = target.relative_to(Path(os.path.abspath(anchor)))
        except ValueError:
            continue
        joined = Path(name) / rest
        return joined.as_posix() if str(rest) != "." else name
    return target.name


@dataclass(frozen=True)
class Destination:
    """Where this run's figures and tables go, and why."""

    figures: Path
    tables: Path
    published: bool
    reasons: tuple[str, ...]  # why the run does not publish (empty when it does)
    run_name: str

    def note(self) -> str:
        """One Markdown sentence for a notebook's last cell."""
        if self.published:
            return (
                "**Published:** this `make reproduce` run (full profile, full library) wrote "
                f"`{relative(self.figures)}/` and `{relative(self.tables)}/`."
            )
        return (
            f"**Not published** ({'; '.join(self.reasons)}): this run wrote its figures to "
            f"`{relative(self.figures)}/` and its tables to `{relative(self.tables)}/`; the "
            "committed `figures/`, `tables/`, `docs/` and README are unchanged."
        )


def _overridden(name: str) -> bool:
    return bool(os.environ.get(name))


def destination(profile: str, data: dict, variant: str = "") -> Destination:
    """THE publishing decision, from the run's profile name, how it was started, its data
    stage's record (`source`, `complete`) and `variant`: a short name of the parameters a
    variant run changed, so two variants keep their own folders (empty: the profile's own)."""
    reasons = []
    if os.environ.get(PUBLISH_ENV) != "1":
        reasons.append("not run by `make reproduce`")
    if profile != "full":
        reasons.append(f"{profile} profile")
    if variant:
        reasons.append(f"parameters changed ({variant})")
    if not data:
        reasons.append("no data stage recorded")
    elif data.get("source") == "sample":
        reasons.append("embedded sample data")
    elif data.get("source") == "user":
        reasons.append("a user dataset, not the DoITPoMS library")
    elif data.get("complete") is False:
        reasons.append("partial scrape")
    kind = {"sample": "sample", "user": "user"}.get(data.get("source", ""), "library")
    run_name = "-".join(
        [profile, kind]
        + ([] if os.environ.get(PUBLISH_ENV) == "1" else ["interactive"])
        + ([variant] if variant else [])
    )
    root = config.build_dir() / "runs" / run_name
    # An explicit MICROQA_FIGURES / MICROQA_TABLES (tests, `make smoke`) is where the caller
    # asked outputs to go; the committed folders are only ever written by a publishing run.
    figures = config.figures_dir() if _overridden("MICROQA_FIGURES") else root / "figures"
    tables = config.tables_dir() if _overridden("MICROQA_TABLES") else root / "tables"
    if not reasons:
        figures, tables = config.figures_dir(), config.tables_dir()
    return Destination(figures, tables, not reasons, tuple(reasons), run_name)


def kept_published(target: Destination, kind: str, filename: str, degraded: str) -> Path | None:
    """A weaker result (e.g. probes without the reference features) never replaces a published
    one: returns the folder to write it to instead (and says so), or None to go ahead."""
    folder = target.figures if kind == "figures" else target.tables
    if not degraded or not target.published or not (folder / filename).exists():
        return None
    fallback = config.build_dir() / "runs" / f"{target.run_name}-degraded" / kind
    print(
        f"kept the published {kind}/{filename}: this run could not redo it ({degraded}); "
        f"its weaker version is in {relative(fallback)}/"
    )
    return fallback
