"""Every path the study uses, the environment overrides, and the run profiles.

Environment variables (all optional):
  MICROQA_ROOT      repository root (default: found from this file)
  MICROQA_DATA      data directory (default: <root>/data)
  MICROQA_BUILD     build directory (default: <root>/build)
  MICROQA_PROFILE   "full" (default) or "smoke" (tiny, fast; used by the tests)
  MICROQA_SAMPLE    the embedded offline sample (default: <root>/data/sample)
  DOITPOMS_URL      base URL of the micrograph library (default: the live site)
  STRICT            "1" turns every offline substitution (sample data, random weights) into an error
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
    """Locally built model files (random-weight substitutes, tiny test models)."""
    return data_dir() / "models"


def cache_dir() -> Path:
    return data_dir() / "cache"


def shared_dir() -> Path:
    """The offline mirror and reference features beside the checkout (absent for most users)."""
    return _env_path("MICROQA_SHARED", repo_root().parent / "shared")


def display_path(path: Path | str) -> str:
    """A path as outputs show and store it: relative to the repository when inside it (so a
    second clone reads its own data, and no output names the machine), else as given."""
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


def strict() -> bool:
    return os.environ.get("STRICT", "0").strip().lower() in {"1", "true", "yes"}


@dataclass(frozen=True)
class Profile:
    """How much work a run does. `smoke` keeps every code path but shrinks the sizes."""

    name: str
    vlm_sample_size: int | None  # None: all images
    clip_models: tuple[str, ...]
    max_images: int | None  # None: all images
    # CLIP architectures that may stand in with random weights when pretrained ones are missing.
    # ViT-L-14 is left out: on CPU it embeds ~0.5 img/s (measured), over the notebook's budget.
    clip_random_archs: tuple[str, ...] = ("ViT-B-32",)


PROFILES = {
    "full": Profile(
        name="full",
        vlm_sample_size=150,
        clip_models=(
            "ViT-B-32:openai",
            "ViT-L-14:openai",
            "ViT-B-16-SigLIP:webli",
            "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        ),
        max_images=None,
        clip_random_archs=("ViT-B-32",),
    ),
    "smoke": Profile(
        name="smoke",
        vlm_sample_size=12,
        clip_models=("ViT-B-32:openai",),
        max_images=40,
        clip_random_archs=("ViT-B-32",),
    ),
}


_chosen_profile: str | None = None  # the profile this process chose by name (see profile())


def profile(name: str | None = None) -> Profile:
    """The named profile; with no name, the one this process chose by name earlier (a notebook's
    `profile` parameter), else MICROQA_PROFILE, else "full". Choosing one by name makes it the
    run's profile, so provenance records the profile that ran, not an environment default."""
    global _chosen_profile
    chosen = name or _chosen_profile or os.environ.get("MICROQA_PROFILE", "full")
    if chosen not in PROFILES:
        raise ValueError(f"unknown profile {chosen!r}; choose one of {sorted(PROFILES)}")
    if name:
        _chosen_profile = name
    return PROFILES[chosen]
