"""Reduced-size decoding (`images.open_rgb(min_side=...)`), image variants before the model's
resize and crop, and the decoded-image cache (`clip.pixels`); embedding under a variant."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from microqa import clip, files
from microqa.clip import pixels
from microqa.clip.models import FloorCenterCrop
from microqa.data import images, variants
from tests.clip_fixtures import ARCH, random_b32_file, small_dataset, stage_dirs  # noqa: F401
from tests.conftest import MIRROR, needs_mirror


def _texture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth but non-trivial RGB test pattern (JPEG-friendly)."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rng = np.random.default_rng(seed)
    channels = [np.sin(2 * np.pi * (a * x + b * y)) for a, b in rng.uniform(1, 6, (3, 2))]
    return ((np.stack(channels, -1) + 1) * 127.5).round().astype(np.uint8)


def _preprocess(size: int = 16):
    """The shape of a CLIP model's preprocessing, small: resize, floor centre crop, tensor."""
    return transforms.Compose(
        [
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
            FloorCenterCrop(size),
            transforms.ToTensor(),
        ]
    )


# --------------------------------------------------------------------------- decoding


def test_a_jpeg_is_decoded_at_the_largest_dct_scale_that_keeps_min_side(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(_texture(1000, 800)).save(path, quality=95)
    assert images.open_rgb(path).size == (1000, 800)
    # 800 // 224 = 3: scale 1/2 (1/4 would give 200 < 224); 800 // 100 = 8: scale 1/8
    assert images.open_rgb(path, min_side=224).size == (500, 400)
    assert images.open_rgb(path, min_side=100).size == (125, 100)
    assert images.open_rgb(path, min_side=900).size == (1000, 800)  # never below min_side
    full = np.asarray(images.open_rgb(path).reduce(2), dtype=float)
    half = np.asarray(images.open_rgb(path, min_side=224), dtype=float)
    assert np.abs(full - half).mean() < 2.0  # the same picture, decoded smaller


def test_other_formats_are_box_reduced_by_an_integer_factor(tmp_path):
    pixels_in = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(4, 6, 3) * 2
    path = tmp_path / "small.png"
    Image.fromarray(pixels_in).save(path)
    reduced = np.asarray(images.open_rgb(path, min_side=2))  # 4 // 2: factor 2
    blocks = pixels_in.reshape(2, 2, 3, 2, 3).astype(float).mean(axis=(1, 3))
    assert reduced.shape == (2, 3, 3)
    assert np.array_equal(reduced, blocks.round().astype(np.uint8))
    assert images.open_rgb(path, min_side=3).size == (6, 4)  # 4 // 3 = 1: as it is


def test_sixteen_bit_images_are_stretched_on_all_pixels_before_reduction(tmp_path):
    gradient = np.tile(np.linspace(1000, 3000, 64).astype(np.uint16), (32, 1))
    path = tmp_path / "wide.png"
    Image.fromarray(gradient).save(path)
    reduced = np.asarray(images.open_rgb(path, min_side=8))
    assert reduced.shape == (8, 16, 3)
    assert reduced.min() <= 8 and reduced.max() >= 247  # stretched, then averaged in 4x4 boxes


# --------------------------------------------------------------------------- variants


def test_full_decode_with_pillows_resize_is_todays_preprocessing(tmp_path):
    path = tmp_path / "a.jpg"
    Image.fromarray(_texture(90, 60)).save(path)
    source = pixels.PixelSource(_preprocess(), margin=None, fast_resize=False)
    assert torch.equal(source(str(path)), _preprocess()(images.open_rgb(path)))


@pytest.mark.parametrize(
    "kind", [transforms.InterpolationMode.BICUBIC, transforms.InterpolationMode.BILINEAR]
)
def test_the_torch_resize_is_pillows_size_within_two_grey_levels(kind):
    """Landscape and square reductions by torch: Pillow's size, within two grey levels even on
    pure noise (the worst case for clipped overshoots); portraits, enlargements and other
    modes are Pillow's own, bit for bit."""
    import torch.nn.functional as F

    resize = transforms.Resize(224, interpolation=kind)
    rng = np.random.default_rng(0)
    shapes = [(w, h) for w in (225, 449, 600, 1024, 3000) for h in (225, 230, 300, 768) if w >= h]
    differs = 0
    for width, height in shapes:
        noise = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        pillow, fast = np.asarray(resize(noise)), np.asarray(pixels._torch_resize(resize, noise))
        assert pillow.shape == fast.shape, (width, height)
        assert np.abs(pillow.astype(int) - fast.astype(int)).max() <= 2, (width, height)
        differs += not np.array_equal(pillow, fast)
        # and it is torch's kernel that ran, not a quiet hand-over to Pillow
        direct = F.interpolate(
            torch.from_numpy(np.array(noise)).permute(2, 0, 1)[None],
            size=pillow.shape[:2],
            mode=kind.value,
            antialias=True,
        )
        assert np.array_equal(fast, direct[0].permute(1, 2, 0).numpy()), (width, height)
    assert differs  # bit-identical everywhere would mean Pillow ran
    smooth = Image.fromarray(_texture(1024, 768))
    assert (
        np.abs(np.asarray(resize(smooth)).astype(int) - pixels._torch_resize(resize, smooth)).max()
        <= 1
    )
    # Pillow resizes this portrait vertically first: torch's order would differ by ~25 levels
    portrait = Image.fromarray(rng.integers(0, 256, (600, 225, 3), dtype=np.uint8))
    for other in (
        portrait,
        Image.fromarray(_texture(100, 60)),  # an enlargement
        Image.fromarray(_texture(900, 600)[..., 0]),  # grey
    ):
        assert np.array_equal(np.asarray(pixels._torch_resize(resize, other)), resize(other))


def test_only_a_resize_torch_computes_as_pillow_does_takes_the_fast_path():
    bicubic = transforms.Resize(16, interpolation=transforms.InterpolationMode.BICUBIC)
    nearest = transforms.Resize(16, interpolation=transforms.InterpolationMode.NEAREST)
    capped = transforms.Resize(16, max_size=20)
    assert pixels.PixelSource(transforms.Compose([bicubic, transforms.ToTensor()])).fast_resize
    for resize in (nearest, capped):
        assert not pixels.PixelSource(
            transforms.Compose([resize, transforms.ToTensor()])
        ).fast_resize
    fast = pixels.PixelSource(_preprocess())
    assert fast.signature != pixels.PixelSource(_preprocess(), fast_resize=False).signature


def test_a_variant_is_applied_before_the_resize_and_the_crop(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(_texture(62, 20)).save(path)  # resized to 49 x 16: 33 px to crop, odd
    decoded = images.open_rgb(path)
    exact = {"margin": None, "fast_resize": False}  # the model's own preprocessing, bit for bit
    rotated = pixels.PixelSource(_preprocess(), variant="rot90", **exact)(str(path))
    expected = _preprocess()(decoded.transpose(Image.Transpose.ROTATE_90))
    assert torch.equal(rotated, expected)
    # rotating the cropped tensor instead: the floor crop leaves its odd pixel on the other
    # side, so the model would see a window one pixel off
    assert not torch.equal(rotated, torch.rot90(_preprocess()(decoded), 1, dims=(1, 2)))
    gray = pixels.PixelSource(_preprocess(), variant="gray", **exact)(str(path))
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    with pytest.raises(ValueError, match="unknown image variant"):
        pixels.PixelSource(_preprocess(), variant="upside-down")


# --------------------------------------------------------------------------- the decoded cache


def test_the_decoded_cache_returns_the_same_pixels_without_decoding(tmp_path, monkeypatch):
    path = tmp_path / "a.jpg"
    Image.fromarray(_texture(120, 80)).save(path)
    sha = files.sha256_file(path)
    first = pixels.PixelSource(_preprocess(), cache_dir=tmp_path / "decoded")
    want = first(str(path), sha)
    stored = first.cached_path(sha)
    assert stored.is_file() and sha in stored.name and stored.name.endswith("-original.npy")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(images, "open_rgb", no_decoding)
    # a second model with the same resize (another CLIP of 224 px) reads the file
    second = pixels.PixelSource(_preprocess(), cache_dir=tmp_path / "decoded")
    assert torch.equal(second(str(path), sha), want)
    # another variant, or another input size, is another entry
    flipped = pixels.PixelSource(_preprocess(), variant="hflip", cache_dir=tmp_path / "decoded")
    larger = pixels.PixelSource(_preprocess(24), cache_dir=tmp_path / "decoded")
    assert flipped.cached_path(sha) != stored and larger.cached_path(sha) != stored
    with pytest.raises(AssertionError, match="decoded again"):
        flipped(str(path), sha)
    monkeypatch.undo()

    stored.write_bytes(b"not an array")  # a damaged entry is decoded again and rewritten
    assert torch.equal(second(str(path), sha), want)
    assert np.load(stored).dtype == np.uint8


def test_an_unknown_preprocessing_is_applied_whole_and_nothing_is_cached(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(_texture(30, 20)).save(path)
    source = pixels.PixelSource(lambda image: image.size, cache_dir=tmp_path / "decoded")
    assert source(str(path), "ab" * 32) == (30, 20)
    assert source.cached_path("ab" * 32) is None and not (tmp_path / "decoded").exists()


# --------------------------------------------------------------------------- embedding


@pytest.fixture(scope="module")
def random_b32(random_b32_file):  # noqa: F811 (pytest fixture)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return clip.load_model(f"{ARCH}:{random_b32_file}", device="cpu")


def _direct(model, image: Image.Image) -> np.ndarray:
    with torch.inference_mode():
        feats = model.model.encode_image(model.preprocess(image)[None])
    return torch.nn.functional.normalize(feats, dim=-1)[0].numpy()


def test_embedding_under_a_variant_is_cached_under_its_own_key(random_b32, stage_dirs):  # noqa: F811
    small_dataset(stage_dirs / "ds", 3)
    paths = sorted((stage_dirs / "ds" / "images").iterdir())
    original = clip.embed_images(random_b32, paths, batch_size=2, num_workers=0, progress=False)
    flipped = clip.embed_images(
        random_b32, paths, batch_size=2, num_workers=0, progress=False, variant="hflip"
    )
    assert (flipped.n_computed, flipped.n_cached) == (3, 0)  # not the original's rows
    want = _direct(random_b32, variants.apply(images.open_rgb(paths[1]), "hflip"))
    # within two grey levels of the model's own Pillow resize (the fast one): 1e-4, not 1e-3
    assert np.allclose(flipped.embeddings[1], want, atol=1e-4)
    assert not np.allclose(flipped.embeddings[1], original.embeddings[1], atol=1e-3)
    again = clip.embed_images(random_b32, paths, num_workers=0, progress=False, variant="hflip")
    assert again.n_cached == 3 and np.array_equal(again.embeddings, flipped.embeddings)
    # the original's rows are where they always were (caches from before variants stay valid)
    with clip.cache.EmbeddingCache() as cache:
        assert cache.count_images(random_b32.cache_key) == 3


def _largest_mirror_images(n: int) -> list:
    found = [(Image.open(p).size, p) for p in sorted((MIRROR / "images").iterdir())]
    found.sort(key=lambda item: -item[0][0] * item[0][1])
    return [p for _, p in found[:n]]


@needs_mirror()
def test_reduced_decoding_stays_within_cosine_0999_on_large_micrographs(random_b32, tmp_path):
    """The mirror's largest micrographs, and the same upscaled 3x (as a user's 3000 px SEM
    images), decoded at reduced size vs in full: every embedding within cosine 0.999."""
    paths = _largest_mirror_images(6)
    for i, path in enumerate(list(paths)):
        big = images.open_rgb(path)
        big = big.resize((big.width * 3, big.height * 3), Image.Resampling.LANCZOS)
        paths.append(tmp_path / f"big{i}.jpg")
        big.save(paths[-1], quality=92)
    reduced = pixels.PixelSource(random_b32.preprocess)
    assert reduced.min_side == 560  # 2.5 x 224
    worst = 1.0
    for path in paths:
        today = _direct(random_b32, images.open_rgb(path))
        with torch.inference_mode():
            feats = random_b32.model.encode_image(reduced(str(path))[None])
        now = torch.nn.functional.normalize(feats, dim=-1)[0].numpy()
        worst = min(worst, float(today @ now))
    assert worst >= 0.999, worst
