"""The image variants are label-preserving transforms of the pixels they claim to be."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from microqa.data import variants


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
