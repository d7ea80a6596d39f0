"""Image embeddings: decoding, batching with DataLoader workers, and the SQLite cache.

Images are decoded by THE project decoder (`images.open_rgb`: every PIL mode, 16-bit
stretched, EXIF, pixel limit), so CLIP sees the pixels the VLMs see, at the reduced size the
model needs and under an image variant (`clip.pixels`). DataLoader workers decode and
preprocess while the model runs.

An image's embedding depends on its pixels and the model only: every batch goes through the
model at the full batch size (a short last batch is padded by repeating its last image), so
the kernels see the same shapes whatever else is in the batch. That is what makes a sharded run
(`shard`, `clip.shards`: each process embeds the images whose content hash falls in its part)
equal a single-process run bit for bit, at the same batch size on the same device.

The cache (`config.cache_dir()/clip_embeddings.sqlite`) is keyed by (architecture + weights
identity, image sha256): a second run embeds nothing and new images embed alone. Each batch is
committed as soon as it is computed, so a killed or failed run keeps every finished batch and a
rerun computes only the rest. An image that cannot be decoded is skipped and reported, never
fatal. A cache file SQLite cannot read is moved aside and rebuilt, saying so.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from microqa import config, files
from microqa.clip import pixels
from microqa.clip.cache import EmbeddingCache, variant_key
from microqa.clip.shards import WHOLE, Shard
from microqa.data import images, variants

if TYPE_CHECKING:
    from microqa.clip.models import ClipModel


def last_timing(loaded: ClipModel) -> dict | None:
    with EmbeddingCache() as cache:
        return cache.last_timing(loaded.cache_key)


# --------------------------------------------------------------------------- decoding


def _reason(error: Exception, path: str) -> str:
    """The error's reason without the path it starts with (the caller names the file)."""
    return str(error).removeprefix(f"{path}: ") or type(error).__name__


class _ImageFiles(torch.utils.data.Dataset):
    """Decodes and preprocesses in DataLoader workers, so the model never waits for JPEGs.

    `source`: a `pixels.PixelSource`, or any preprocess (applied to the full decode)."""

    def __init__(self, paths: Sequence[str], source, hashes: Sequence[str] | None = None):
        self.paths, self.source = list(paths), source
        self.hashes = list(hashes) if hashes is not None else [""] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            if isinstance(self.source, pixels.PixelSource):
                return i, self.source(self.paths[i], self.hashes[i]), ""
            return i, self.source(images.open_rgb(self.paths[i])), ""
        except images.ImageError as err:
            return i, None, _reason(err, self.paths[i])


def _collate(items):
    """(positions, pixels or None, [(position, reason)] of the images that failed to decode)."""
    ok = [(i, tensor) for i, tensor, _ in items if tensor is not None]
    failed = [(i, reason) for i, tensor, reason in items if tensor is None]
    positions = torch.tensor([i for i, _ in ok], dtype=torch.long)
    return positions, (torch.stack([p for _, p in ok]) if ok else None), failed


def default_workers() -> int:
    # One worker per core (capped): on a GPU machine decoding is the bottleneck, so every core
    # should decode; bench/bench_clip.py measures the effect.
    return min(16, config.usable_cores())


def embed_tensors_loader(
    paths: Sequence[str],
    source,
    *,
    batch_size: int,
    num_workers: int,
    device: str,
    hashes: Sequence[str] | None = None,
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        _ImageFiles(paths, source, hashes),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.startswith("cuda"),
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )


# --------------------------------------------------------------------------- embedding


@dataclass
class EmbeddingResult:
    embeddings: np.ndarray  # (n, d) float32, L2-normalised, in path order; NaN rows: failures
    n_computed: int
    n_cached: int
    seconds: float  # wall time of the computed part (decode + preprocess + forward)
    device: str
    failures: dict[int, str] = field(default_factory=dict)  # position in paths -> reason
    other_shards: list[int] = field(default_factory=list)  # positions left to other shards

    @property
    def ok(self) -> np.ndarray:
        """Mask of the paths that have an embedding."""
        mask = np.ones(len(self.embeddings), bool)
        mask[list(self.failures)] = False
        mask[self.other_shards] = False
        return mask


def _hashes(cache: EmbeddingCache | None, paths: list[str]) -> list[str | OSError]:
    if cache is not None:
        return cache.file_sha256s(paths)
    found: list[str | OSError] = []
    for path in paths:
        try:
            found.append(files.sha256_file(path))
        except OSError as err:
            found.append(err)
    return found


def _forward(loaded: ClipModel, batch: torch.Tensor, batch_size: int) -> np.ndarray:
    """Normalised embeddings of a batch, run at the full batch size (see the module's note)."""
    n = len(batch)
    if n < batch_size:
        batch = torch.cat([batch, batch[-1:].expand(batch_size - n, *batch.shape[1:])])
    feats = loaded.model.encode_image(batch.to(loaded.device, non_blocking=True))[:n]
    return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()


def embed_images(
    loaded: ClipModel,
    paths: Sequence[str | Path],
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    use_cache: bool = True,
    progress: bool = True,
    variant: str = variants.ORIGINAL,
    shard: Shard = WHOLE,
    decoded_cache: bool = True,
    decode_margin: float | None = pixels.DECODE_MARGIN,
) -> EmbeddingResult:
    """L2-normalised image embeddings: cached ones read back, the rest computed in batches and
    each batch committed to the cache at once. Undecodable images are skipped (`failures`).

    `variant`: embed that variant of every image (`data.variants`; cached under its own key).
    `shard`: embed only the images of this shard (`clip.shards`); the others are left out
    (`other_shards`). An unreadable file has no content hash: shard 0 reports it.
    `decoded_cache`: keep and reuse the resized images (`clip.pixels`; with `use_cache`).
    `decode_margin`: decode at least this multiple of the model's input size (None: in full).
    """
    from tqdm.auto import tqdm

    paths = [str(p) for p in paths]
    key = variant_key(loaded.cache_key, variants.check(variant))
    out: list[np.ndarray | None] = [None] * len(paths)
    failures: dict[int, str] = {}
    with EmbeddingCache() if use_cache else contextlib.nullcontext() as cache:
        hashes = [""] * len(paths)
        for i, digest in enumerate(_hashes(cache, paths)):
            if isinstance(digest, OSError):
                failures[i] = f"cannot read ({digest.strerror or digest})"
            else:
                hashes[i] = digest
        # an unreadable file has no content hash to place it by: shard 0 reports it
        owned = [shard.owns(h) if h else shard.index == 0 for h in hashes]
        other_shards = [i for i, own in enumerate(owned) if not own]
        for i in other_shards:
            failures.pop(i, None)
        mine = [i for i, own in enumerate(owned) if own]
        if cache is not None:
            found = cache.images(key, [hashes[i] for i in mine if hashes[i]])
            for i in mine:
                if hashes[i] in found:
                    out[i] = found[hashes[i]]
        todo = [i for i in mine if out[i] is None and i not in failures]
        n_cached = sum(v is not None for v in out)
        seconds, n_computed = 0.0, 0
        if todo:
            workers = default_workers() if num_workers is None else num_workers
            source = pixels.PixelSource(
                loaded.preprocess,
                variant=variant,
                margin=decode_margin,
                cache_dir=pixels.decoded_cache_dir() if use_cache and decoded_cache else None,
            )
            loader = embed_tensors_loader(
                [paths[i] for i in todo],
                source,
                batch_size=batch_size,
                num_workers=workers,
                device=loaded.device,
                hashes=[hashes[i] for i in todo],
            )
            bar = tqdm(
                total=len(todo),
                desc=f"embed {loaded.label}",
                disable=not progress,
                unit="img",
                file=sys.stderr,
            )
            start = time.perf_counter()
            with torch.inference_mode():
                for positions, tensors, failed in loader:
                    for j, reason in failed:
                        failures[todo[j]] = reason
                    if tensors is not None:
                        feats = _forward(loaded, tensors, batch_size)
                        batch = [todo[j] for j in positions.tolist()]
                        for i, vec in zip(batch, feats, strict=True):
                            out[i] = vec.astype(np.float32)
                        if cache is not None:
                            cache.put_images(key, [(hashes[i], out[i]) for i in batch])
                        n_computed += len(batch)
                    bar.update(len(positions) + len(failed))
            seconds = time.perf_counter() - start
            bar.close()
            if cache is not None and n_computed:
                cache.record_timing(key, loaded.device, n_computed, seconds)
    dim = next((len(v) for v in out if v is not None), 0)
    matrix = np.full((len(paths), dim), np.nan, dtype=np.float32)
    for i, vec in enumerate(out):
        if vec is not None:
            matrix[i] = vec
    return EmbeddingResult(
        matrix, n_computed, n_cached, seconds, loaded.device, failures, other_shards
    )


def encode_texts(loaded: ClipModel, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            tokens = loaded.tokenizer(list(texts[start : start + batch_size])).to(loaded.device)
            feats = text_features(loaded.model, tokens)
            chunks.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
    return np.concatenate(chunks)


def text_features(model, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens)`, without the padding after the batch's last end-of-text.

    In an OpenAI-style CLIP text tower (open_clip's `CLIP`: a causal mask, the feature taken
    at each prompt's end-of-text token) no position sees a later one, so the padding after the
    last end-of-text changes no feature: the study's prompts end by token 40 of 77, and the
    tower runs on 40 (3x faster on a CPU; equal to `encode_text` up to float rounding, tested).
    Any other text tower (SigLIP, BiomedCLIP's BERT: no causal mask) runs as it is."""
    import open_clip

    if (
        type(model).encode_text is not open_clip.CLIP.encode_text
        or model.text_pool_type != "argmax"
        or model.attn_mask is None
    ):
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1  # the end-of-text token has the largest id
    tokens = tokens[:, :length]
    dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(dtype) + model.positional_embedding[:length].to(dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def cached_text_embeddings(loaded: ClipModel, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """{text: normalised embedding}; texts already embedded by this model come from the cache."""
    unique = list(dict.fromkeys(texts))
    with EmbeddingCache() as cache:
        found = cache.texts(loaded.cache_key, unique)
        todo = [t for t in unique if t not in found]
        if todo:
            for text, vec in zip(todo, encode_texts(loaded, todo), strict=True):
                found[text] = vec.astype(np.float32)
            cache.put_texts(loaded.cache_key, [(t, found[t]) for t in todo])
    return found
