"""What a CLIP model's preprocessing is given: the micrograph decoded no larger than the model
needs, turned into its image variant, and resized by the model's own resize, with an on-disk
cache of that resized image keyed by content.

Decoding a large micrograph at full size and resizing it is what kept the GPU waiting (the
H200 embedded 112 img/s against 3,415 img/s for the bare forward). Here:

1. `images.open_rgb(path, min_side=...)` decodes a JPEG at a reduced DCT scale (other formats
   are box-reduced), keeping at least `DECODE_MARGIN` x the model's input size on the short
   side, so the model's own antialiased resize still does the last, largest step;
2. the variant (`data.variants`: hflip, rot90, gray, ...) is applied *before* the resize and
   the centre crop, so a rotated non-square micrograph is cropped as a rotated one;
3. the model's resize (its first transform), then the rest of its preprocessing. A bicubic or
   bilinear antialiased reduction of a landscape or square RGB image is computed by torch's
   uint8 kernel on a channels-last view instead of by Pillow: the same output size, within two
   grey levels of Pillow's pixels on pure noise (tested), and about 4x faster on one core
   (resizing, not decoding, was most of the time on the mirror's largest micrographs:
   `make bench`). A portrait image stays with Pillow, which resizes some of them vertically
   first: where bicubic overshoots are clipped between the two passes, the other order differs
   by up to 27 grey levels on pure noise.

The resized RGB image of step 3 is kept as `<cache>/clip_decoded/<sha[:2]>/<sha>-<sig>-<variant>
.npy` (uint8, about 200 kB at 224 px), where `<sig>` is a hash of the decode size, the resize
and the Pillow version: a second model with the same input size, or a rerun, reads it instead
of decoding, and gets the very same pixels (lossless). Writes are atomic, so workers and
shards can share the folder. A model whose preprocessing does not start with a torchvision
Resize is decoded at full size and not cached (nothing here can say what size it needs).
"""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

from microqa import config, files
from microqa.data import images, variants

# The short side kept at decode, as a multiple of the model's input size, so the model's bicubic
# resize still does a 2.5x or larger step. Measured (bench/bench_clip.py) on the 30 largest
# mirror micrographs upscaled 3x, worst per-image cosine to the full decode: 0.99829 at 2,
# 0.99985 at 2.5 (the bound is 0.999); at 1, on the mirror itself: 0.99769.
DECODE_MARGIN = 2.5
DECODED_DIR = "clip_decoded"


def decoded_cache_dir() -> Path:
    return config.cache_dir() / DECODED_DIR


class PixelSource:
    """path + content hash -> the model's input tensor. Picklable, for DataLoader workers."""

    def __init__(
        self,
        preprocess,
        *,
        variant: str = variants.ORIGINAL,
        margin: float | None = DECODE_MARGIN,
        cache_dir: Path | None = None,
        fast_resize: bool = True,
    ):
        from torchvision import transforms

        self.variant = variants.check(variant)
        steps = list(getattr(preprocess, "transforms", []))
        if steps and isinstance(steps[0], transforms.Resize):
            self.resize, self.rest = steps[0], transforms.Compose(steps[1:])
            size = steps[0].size
            largest = max(size) if isinstance(size, list | tuple) else size
            self.min_side = math.ceil(margin * largest) if margin else None
            self.fast_resize = fast_resize and _torch_can_resize(steps[0])
            kernel = f"Pillow {PIL.__version__}" + (" + torch uint8" if self.fast_resize else "")
            described = f"{steps[0]!r}|min_side={self.min_side}|{kernel}"
            self.signature = hashlib.sha256(described.encode()).hexdigest()[:12]
        else:  # unknown preprocessing: decode in full, apply it whole, cache nothing
            self.resize, self.rest, self.min_side, self.signature = None, preprocess, None, None
            self.fast_resize = False
        self.cache_dir = Path(cache_dir) if cache_dir is not None and self.signature else None

    def cached_path(self, sha256: str) -> Path | None:
        if self.cache_dir is None or not sha256:
            return None
        return self.cache_dir / sha256[:2] / f"{sha256}-{self.signature}-{self.variant}.npy"

    def _read(self, where: Path | None) -> Image.Image | None:
        if where is None or not where.is_file():
            return None
        try:
            pixels = np.load(where, allow_pickle=False)
        except (OSError, ValueError):
            return None  # unreadable: decoded again and rewritten
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            return None
        return Image.fromarray(pixels, mode="RGB")

    def image(self, path: str, sha256: str = "") -> Image.Image:
        """The resized variant of the image at `path` (before crop and normalisation)."""
        where = self.cached_path(sha256)
        cached = self._read(where)
        if cached is not None:
            return cached
        image = variants.apply(images.open_rgb(path, min_side=self.min_side), self.variant)
        if self.resize is None:
            return image
        image = _torch_resize(self.resize, image) if self.fast_resize else self.resize(image)
        if where is not None:
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(image, dtype=np.uint8))
            files.atomic_write_bytes(where, buffer.getvalue())
        return image

    def __call__(self, path: str, sha256: str = ""):
        return self.rest(self.image(path, sha256))


def _torch_can_resize(resize) -> bool:
    """Whether `resize` (a torchvision Resize) is one torch's uint8 kernel computes as Pillow
    does: bicubic or bilinear, antialiased, to a short side, no cap on the long one."""
    from torchvision.transforms import InterpolationMode

    size = resize.size
    return (
        resize.interpolation in (InterpolationMode.BICUBIC, InterpolationMode.BILINEAR)
        and resize.antialias is not False
        and resize.max_size is None
        and (isinstance(size, int) or len(size) == 1)
    )


def _torch_resize(resize, image: Image.Image) -> Image.Image:
    """`resize(image)` for a landscape or square RGB image made smaller, by torch's uint8
    antialiased kernel on a channels-last view (the layout its vectorised path reads), which,
    like Pillow here, resizes horizontally first; anything else goes to Pillow."""
    import torch

    short = resize.size if isinstance(resize.size, int) else resize.size[0]
    width, height = image.size
    if image.mode != "RGB" or height <= short or height > width:
        return resize(image)  # an enlargement is cheap; a portrait Pillow may resize V first
    # torchvision's rule: the short side (here the height) becomes `short`, the long one is
    # truncated
    size = (short, int(short * width / height))
    hwc = torch.from_numpy(np.array(image))  # a writable copy: torch.from_numpy needs one
    resized = torch.nn.functional.interpolate(
        hwc.permute(2, 0, 1)[None],
        size=size,
        mode=resize.interpolation.value,
        antialias=True,
    )
    return Image.fromarray(resized[0].permute(1, 2, 0).numpy(), mode="RGB")
