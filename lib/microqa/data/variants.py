"""Label-preserving image variants: the shortcut and robustness controls of the study.

Every stage that looks at pixels (CLIP embedding, VLM questions) can be run on a variant of each
micrograph instead of the original; the variant's name is part of every cache key (embeddings,
answers), so results of different variants never mix. One registry, used by both stages:

- ``original``: the micrograph as decoded by `images.open_rgb`.
- ``hflip``: mirrored left-right (orientation carries no label).
- ``rot90``: rotated by 90 degrees (counter-clockwise).
- ``gray``: converted to grayscale (still three channels). Colour can be a shortcut, e.g. for
  transmitted polarised light, so it is reported separately from the geometric variants.
- ``masked``: annotation regions (scale bars, SEM data bars, burned-in text) painted over with
  the image's median colour (`annotations.mask_annotations`), so a model cannot read them.
- ``blank``: a neutral mid-gray image of the same size: the no-image baseline (what a model
  answers from the question's wording alone).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from PIL import Image, ImageOps

if TYPE_CHECKING:
    import pandas as pd

    from microqa.config import Profile

ORIGINAL = "original"
BLANK = "blank"
NEUTRAL_GRAY = (128, 128, 128)


def _masked(image: Image.Image) -> Image.Image:
    from microqa.data import annotations  # the detector is heavier; loaded only when asked for

    return annotations.mask_annotations(image)


_TRANSFORMS: dict[str, Callable[[Image.Image], Image.Image]] = {
    ORIGINAL: lambda image: image,
    "hflip": ImageOps.mirror,
    "rot90": lambda image: image.transpose(Image.Transpose.ROTATE_90),
    "gray": lambda image: ImageOps.grayscale(image).convert("RGB"),
    "masked": _masked,
    BLANK: lambda image: Image.new("RGB", image.size, NEUTRAL_GRAY),
}
VARIANTS = tuple(_TRANSFORMS)
# The label-preserving transforms of the robustness table (the blank image is a baseline).
ROBUSTNESS_VARIANTS = ("hflip", "rot90", "gray", "masked")


def check(name: str) -> str:
    """`name` if it is a known variant, else a one-line error listing the known ones."""
    if name not in _TRANSFORMS:
        raise ValueError(f"unknown image variant {name!r}; choose one of {', '.join(VARIANTS)}")
    return name


def apply(image: Image.Image, name: str) -> Image.Image:
    """The variant `name` of an RGB image (a new image; the input is not changed)."""
    return _TRANSFORMS[check(name)](image)


def robustness_sample(records: pd.DataFrame, profile: Profile) -> pd.DataFrame:
    """The images every variant run asks about, CLIP and VLMs alike: `robustness_sample_size`
    images stratified by technique family (seeded by the profile) out of the VLM's question
    sample (the same draw as `vlm.runner.question_sample`), so each of them also has the
    original answers a variant is compared with."""
    from microqa.data import dataset

    ordered = records.sort_values("micrograph_no")  # the same draw whatever the row order
    asked = dataset.stratified_sample(
        dataset.task_labelled(ordered), profile.vlm_sample_size, seed=profile.seed
    )
    return dataset.stratified_sample(asked, profile.robustness_sample_size, seed=profile.seed)
