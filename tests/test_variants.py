"""The image variants are label-preserving transforms of the pixels they claim to be."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from microqa import config
from microqa.data import dataset, taxonomy, variants


def _image() -> Image.Image:
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
    return Image.fromarray(pixels, "RGB")


def test_geometric_variants_move_pixels_as_named():
    image = _image()
    pixels = np.asarray(image)
    assert np.array_equal(np.asarray(variants.apply(image, "hflip")), pixels[:, ::-1])
    # counter-clockwise: the first column becomes the last row
    assert np.array_equal(np.asarray(variants.apply(image, "rot90")), np.rot90(pixels))
    assert np.array_equal(np.asarray(variants.apply(image, "original")), pixels)


def test_gray_has_equal_channels_and_blank_keeps_only_the_size():
    gray = np.asarray(variants.apply(_image(), "gray"))
    assert gray.shape == (4, 6, 3) and (gray[..., 0] == gray[..., 2]).all()
    blank = variants.apply(_image(), "blank")
    assert blank.size == (6, 4) and set(blank.get_flattened_data()) == {variants.NEUTRAL_GRAY}


def test_unknown_variant_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown image variant 'sideways'; choose one of"):
        variants.apply(_image(), "sideways")


def _records(n_per_family: dict[str, int]) -> pd.DataFrame:
    families = [f for f, n in n_per_family.items() for _ in range(n)]
    return pd.DataFrame(
        {
            "micrograph_no": range(1, len(families) + 1),
            "technique_family": families,
            "technique_coarse": [taxonomy.coarse_class(f) for f in families],
            "primary_category": [None] * len(families),
        }
    )


def test_the_robustness_sample_is_stratified_and_fixed_by_the_seed():
    sem, tem, afm, other = (*taxonomy.TECHNIQUE_FAMILIES[:3], taxonomy.OTHER)
    records = _records({sem: 60, tem: 30, afm: 2, other: 8})  # Other: no task can score it
    profile = config.profile("full").with_overrides(robustness_sample_size=10)
    picked = variants.robustness_sample(records, profile)
    # proportional over the 92 scorable records, at least one of the rare AFM family
    assert picked.groupby("technique_family").size().to_dict() == {sem: 6, tem: 3, afm: 1}
    again = variants.robustness_sample(records.sample(frac=1, random_state=1), profile)
    assert list(again["micrograph_no"]) == list(picked["micrograph_no"])  # order-free, seeded
    other_seed = variants.robustness_sample(records, profile.with_overrides(seed=1))
    assert set(other_seed["micrograph_no"]) != set(picked["micrograph_no"])
    # drawn out of the VLM's question sample, so every image also has original answers
    smaller = profile.with_overrides(vlm_sample_size=20)
    asked = dataset.stratified_sample(dataset.task_labelled(records), 20, seed=0)
    assert set(variants.robustness_sample(records, smaller)["micrograph_no"]) <= set(
        asked["micrograph_no"]
    )
    assert config.profile("smoke").robustness_sample_size == 8
    assert config.profile("full").robustness_sample_size == 150
