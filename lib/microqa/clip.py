"""CLIP stage: open_clip model loading, fast cached embedding, prompt ensembles, zero-shot scores.

Model names follow open_clip, written `ARCH:PRETRAINED` (`ViT-B-32:openai`,
`ViT-B-32-quickgelu:/path/to/weights.safetensors`) or `hf-hub:org/name`.

Offline (no hub, no file) a model is handled in one of three ways, never silently:
- its architecture cannot be built (config or tokenizer on the hub: SigLIP, BiomedCLIP):
  skipped, with the reason in the stage's output;
- its weights cannot be had: `WeightsUnavailable` names the model and how to supply a file;
  in a non-strict run the same architecture gets seeded random weights instead, written to
  `config.models_dir()` and loaded back through the very `ARCH:/path/to/file` path a user's
  local weights take, and everything computed from it is stamped "random weights".

Embeddings are cached in SQLite under `config.cache_dir()`, keyed by (architecture + weights
identity, image sha256), so a second run embeds nothing and new images embed alone.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import socket
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from microqa import config, dataset, metrics, prompts, provenance, taxonomy

STAGE = "clip"
RANDOM_WEIGHTS_METADATA = "microqa_weights"  # safetensors metadata key marking a stand-in file
HUB_PREFIX = "hf-hub:"
CATEGORY_MULTI = "category_multi"
CATEGORY_MULTI_NAME = "category_multi (hit@1: prediction is one of the record's material classes)"
# openai/clip-vit-base-patch32's preprocessor_config.json, for Hugging Face's CLIPImageProcessor
# (the earlier study's preprocessing): shortest edge 224, centre crop 224, bicubic, OpenAI
# mean/std. Built locally, since the hub is out of reach; used by the fidelity test and bench.
HF_CLIP_B32_PREPROCESSING = {
    "size": {"shortest_edge": 224},
    "crop_size": {"height": 224, "width": 224},
    "resample": 3,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}
SCORE_COLUMNS = ["micrograph_no", "model", "weights", "task", "prompt_set", "class", "probability"]


class ArchitectureUnavailable(RuntimeError):
    """The model's architecture (config or tokenizer) cannot be built here; the run skips it."""


class WeightsUnavailable(RuntimeError):
    """The model's weights cannot be had; the message says how to supply a local file."""


class ImageDecodeError(RuntimeError):
    """An image file that cannot be decoded; the message names the file."""


# --------------------------------------------------------------------------- model names


@dataclass(frozen=True)
class ModelSpec:
    name: str  # as the user wrote it
    arch: str  # open_clip architecture, or "hf-hub:org/name"
    pretrained: str | None  # a pretrained tag, a file path, or None (hub / random init)

    @property
    def is_hub(self) -> bool:
        return self.arch.startswith(HUB_PREFIX)

    @property
    def is_file(self) -> bool:
        return self.pretrained is not None and (
            "/" in self.pretrained or "\\" in self.pretrained or Path(self.pretrained).suffix != ""
        )


def parse_model_name(name: str) -> ModelSpec:
    """`ARCH:PRETRAINED` / `ARCH:/path/file` / `hf-hub:org/name` -> ModelSpec."""
    name = name.strip()
    if not name:
        raise ValueError("empty CLIP model name; write ARCH:PRETRAINED, e.g. ViT-B-32:openai")
    if name.startswith(HUB_PREFIX):
        if not name[len(HUB_PREFIX) :]:
            raise ValueError(f"CLIP model name {name!r} lacks the hub repository after 'hf-hub:'")
        return ModelSpec(name, name, None)
    arch, sep, pretrained = name.partition(":")
    if not sep or not pretrained:
        raise ValueError(
            f"CLIP model name {name!r} lacks weights; write ARCH:PRETRAINED "
            f"(e.g. {arch or 'ViT-B-32'}:openai or "
            f"{arch or 'ViT-B-32'}:/path/to/weights.safetensors)"
        )
    return ModelSpec(name, arch, os.path.expanduser(pretrained))


def slug(name: str) -> str:
    """A file-name-safe version of a model name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_")


# --------------------------------------------------------------------------- hub access


@functools.lru_cache(maxsize=1)
def hub_reachable(host: str = "huggingface.co", timeout_s: float = 3.0) -> bool:
    """One quick TCP probe: offline runs then fail in milliseconds, not after minutes of retries."""
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_guard() -> Iterator[None]:
    """Hub lookups go to the local cache only when the hub cannot be reached."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    if not previous and not hub_reachable():
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


# --------------------------------------------------------------------------- file identity


def _cache_db() -> sqlite3.Connection:
    path = config.cache_dir() / "clip_embeddings.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=60)
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS embeddings (
            model_key TEXT NOT NULL, image_sha256 TEXT NOT NULL, vector BLOB NOT NULL,
            PRIMARY KEY (model_key, image_sha256));
        CREATE TABLE IF NOT EXISTS text_embeddings (
            model_key TEXT NOT NULL, text TEXT NOT NULL, vector BLOB NOT NULL,
            PRIMARY KEY (model_key, text));
        CREATE TABLE IF NOT EXISTS file_hashes (
            path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT);
        CREATE TABLE IF NOT EXISTS timings (
            model_key TEXT NOT NULL, device TEXT NOT NULL, n INTEGER, seconds REAL,
            recorded_at REAL);
        """
    )
    return db


def file_sha256(path: Path | str, db: sqlite3.Connection | None = None) -> str:
    """sha256 of a file's bytes, memoised by (path, size, mtime) so big weights hash once."""
    path = Path(path).resolve()
    stat = path.stat()
    own = db is None
    db = db or _cache_db()
    try:
        row = db.execute(
            "SELECT sha256 FROM file_hashes WHERE path=? AND size=? AND mtime_ns=?",
            (str(path), stat.st_size, stat.st_mtime_ns),
        ).fetchone()
        if row:
            return row[0]
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        value = digest.hexdigest()
        db.execute(
            "INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?)",
            (str(path), stat.st_size, stat.st_mtime_ns, value),
        )
        db.commit()
        return value
    finally:
        if own:
            db.close()


def _weights_kind(path: str) -> str:
    """'random' for a stand-in file this module wrote (marked in its metadata), else 'pretrained'"""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as fh:
            if (fh.metadata() or {}).get(RANDOM_WEIGHTS_METADATA) == "random":
                return "random"
    return "pretrained"


# --------------------------------------------------------------------------- loading


@dataclass
class ClipModel:
    """A loaded open_clip model with its own preprocessing and tokenizer."""

    name: str  # the name the study asked for (e.g. ViT-B-32:openai)
    arch: str
    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    weights: str  # "pretrained" or "random"
    weights_id: str  # "tag:openai", "sha256:<hex>" of the file, or "hf-hub:<id>"
    weights_source: str  # the tag, the file path or the hub id
    device: str

    @property
    def cache_key(self) -> str:
        return f"{self.arch}|{self.weights_id}"

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().clamp(max=100).item())


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_arch(arch: str, tag: str | None) -> tuple[str, dict]:
    """Canonical architecture for a tag (OpenAI weights need QuickGELU: ViT-B-32-quickgelu)."""
    import open_clip

    if open_clip.get_model_config(arch) is None:
        raise ValueError(
            f"unknown open_clip architecture {arch!r}; see open_clip.list_models() for the names"
        )
    tag_cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    if tag_cfg.get("quick_gelu") and not arch.endswith("-quickgelu"):
        if f"{arch}-quickgelu" in open_clip.list_models():
            arch = f"{arch}-quickgelu"
    return arch, tag_cfg


def _image_options(tag_cfg: dict) -> dict:
    """The preprocessing a pretrained tag prescribes, as create_model_and_transforms options."""
    keys = {
        "mean": "image_mean",
        "std": "image_std",
        "interpolation": "image_interpolation",
        "resize_mode": "image_resize_mode",
    }
    return {option: tag_cfg[key] for key, option in keys.items() if key in tag_cfg}


def _supply_hint(spec: ModelSpec, arch: str, tag_cfg: dict) -> str:
    where = tag_cfg.get("hf_hub") or tag_cfg.get("url") or "the model's release"
    return (
        f"Supply the weights as a local file: download them ({where}) and name the model "
        f"'{arch}:/path/to/open_clip_pytorch_model.bin' (.bin, .pt or .safetensors), or put them "
        f"in the Hugging Face cache (HF_HOME) on a machine with network access."
    )


class FloorCenterCrop(torch.nn.Module):
    """Centre crop with the offset rounded down, as Hugging Face's CLIPProcessor does.

    torchvision's CenterCrop rounds a half-pixel offset to even, HF floors it: on the ~13% of
    micrographs whose resized width minus 224 is odd the two crops sit one pixel apart (mean
    |difference| up to 0.4 in normalised units). The reference features came from HF, so the
    project crops as HF does.
    """

    def __init__(self, size):
        super().__init__()
        self.height, self.width = (size, size) if isinstance(size, int) else tuple(size)

    def forward(self, img: Image.Image) -> Image.Image:
        width, height = img.size
        top, left = max(0, (height - self.height) // 2), max(0, (width - self.width) // 2)
        if height < self.height or width < self.width:  # never happens after the resize
            from torchvision.transforms import functional

            return functional.center_crop(img, [self.height, self.width])
        return img.crop((left, top, left + self.width, top + self.height))


def _hf_compatible(preprocess):
    """The model's own preprocessing with its centre crop replaced by FloorCenterCrop."""
    from torchvision import transforms

    if isinstance(preprocess, transforms.Compose):
        preprocess.transforms = [
            FloorCenterCrop(t.size) if isinstance(t, transforms.CenterCrop) else t
            for t in preprocess.transforms
        ]
    return preprocess


def load_model(
    name: str, *, device: str | None = None, image_options: dict | None = None
) -> ClipModel:
    """Load an open_clip model by name. Raises ArchitectureUnavailable / WeightsUnavailable.

    `image_options` overrides the preprocessing (used for a random stand-in, which must
    preprocess exactly as the pretrained model it replaces).
    """
    import open_clip

    device = device or default_device()
    spec = parse_model_name(name)
    if spec.is_hub:
        with _hub_guard():
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    spec.arch, device=device
                )
                tokenizer = open_clip.get_tokenizer(spec.arch)
            except Exception as err:  # noqa: BLE001 - any hub failure means: cannot build here
                raise ArchitectureUnavailable(
                    f"{name}: architecture config lives on the Hugging Face hub and is not cached "
                    f"here ({type(err).__name__}); run with network access once to cache it"
                ) from err
        return ClipModel(
            name,
            spec.arch,
            model.eval(),
            _hf_compatible(preprocess),
            tokenizer,
            "pretrained",
            spec.arch,
            spec.arch,
            device,
        )

    tag = None if spec.is_file else spec.pretrained
    arch, tag_cfg = _resolve_arch(spec.arch, tag)
    if tag and not tag_cfg:
        raise ValueError(
            f"{name}: {tag!r} is neither a pretrained tag of {spec.arch} "
            f"({open_clip.list_pretrained_tags_by_model(spec.arch)}) nor a weights file"
        )
    with _hub_guard():
        try:
            tokenizer = open_clip.get_tokenizer(arch)
        except Exception as err:  # noqa: BLE001
            raise ArchitectureUnavailable(
                f"{name}: the tokenizer of {arch} lives on the Hugging Face hub and is not cached "
                f"here ({type(err).__name__})"
            ) from err
    options = {**_image_options(tag_cfg), **(image_options or {})}

    if spec.is_file:
        path = Path(spec.pretrained)
        if not path.is_file():
            raise WeightsUnavailable(
                f"{name}: weights file {path} does not exist. " + _supply_hint(spec, arch, tag_cfg)
            )
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=str(path), device=device, **options
        )
        weights, weights_id, source = (
            _weights_kind(str(path)),
            f"sha256:{file_sha256(path)}",
            str(path),
        )
    else:
        with _hub_guard():
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    arch, pretrained=tag, device=device, **options
                )
            except Exception as err:  # noqa: BLE001 - download failures come in many types
                raise WeightsUnavailable(
                    f"{name}: pretrained weights '{tag}' cannot be downloaded or found in the "
                    f"cache ({type(err).__name__}: {str(err)[:200]}). "
                    + _supply_hint(spec, arch, tag_cfg)
                ) from err
        weights, weights_id, source = "pretrained", f"tag:{tag}", tag
    return ClipModel(
        name,
        arch,
        model.eval(),
        _hf_compatible(preprocess),
        tokenizer,
        weights,
        weights_id,
        source,
        device,
    )


def random_weights_file(arch: str, *, seed: int = 0) -> Path:
    """Seeded random weights of `arch`, saved once under models_dir() (marked as random)."""
    import open_clip
    from safetensors.torch import save_file

    path = config.models_dir() / f"open_clip-{arch}-random-seed{seed}.safetensors"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None, pretrained_text=False)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file(
        state,
        str(tmp),
        metadata={RANDOM_WEIGHTS_METADATA: "random", "seed": str(seed), "arch": arch},
    )
    os.replace(tmp, path)
    return path


def load_or_substitute(
    name: str,
    *,
    device: str | None = None,
    seed: int = 0,
    random_archs: Sequence[str] | None = None,
) -> ClipModel:
    """`load_model`, or (non-strict only) the same architecture with random weights.

    `random_archs`: architectures allowed a random stand-in (None: all). A model outside it
    whose weights are missing is skipped (ArchitectureUnavailable, with the supply hint); under
    STRICT=1 every missing weight is an error.
    """
    try:
        return load_model(name, device=device)
    except WeightsUnavailable as err:
        spec = parse_model_name(name)
        arch, tag_cfg = _resolve_arch(spec.arch, None if spec.is_file else spec.pretrained)
        base = arch.removesuffix("-quickgelu")
        if random_archs is not None and arch not in random_archs and base not in random_archs:
            if config.strict():
                raise
            raise ArchitectureUnavailable(
                f"{name}: no weights here, and this profile runs no random stand-in for {arch} "
                f"(too slow on CPU); {err}"
            ) from err
        provenance.substitute(
            STAGE, f"{name} -> same architecture {arch} with random weights (seed {seed})", str(err)
        )
        path = random_weights_file(arch, seed=seed)
        loaded = load_model(f"{arch}:{path}", device=device, image_options=_image_options(tag_cfg))
        loaded.name = name
        return loaded


# --------------------------------------------------------------------------- images


def load_image(path: Path | str) -> Image.Image:
    """Decode any micrograph file (JPEG, GIF, BMP, PNG; modes L, P, RGB, ...) to RGB."""
    try:
        with Image.open(path) as img:
            img.seek(0)  # first frame of an animated GIF
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageDecodeError(f"cannot decode image file {path}: {err}") from err


class _ImageFiles(torch.utils.data.Dataset):
    """Decodes and preprocesses in DataLoader workers, so the model never waits for JPEGs."""

    def __init__(self, paths: Sequence[str], preprocess):
        self.paths, self.preprocess = list(paths), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return i, self.preprocess(load_image(self.paths[i]))


def default_workers() -> int:
    # One worker per core (capped): on 2 CPU cores 2 workers beat 1 slightly (bench_clip); on a
    # GPU machine decoding is the bottleneck, so every core should decode.
    return max(1, min(16, os.cpu_count() or 1))


def embed_tensors_loader(
    paths: Sequence[str], preprocess, *, batch_size: int, num_workers: int, device: str
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        _ImageFiles(paths, preprocess),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.startswith("cuda"),
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )


@dataclass
class EmbeddingResult:
    embeddings: np.ndarray  # (n, d) float32, L2-normalised, in the order of the paths
    n_computed: int
    n_cached: int
    seconds: float  # wall time of the computed part (decode + preprocess + forward)
    device: str


def embed_images(
    loaded: ClipModel,
    paths: Sequence[str | Path],
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> EmbeddingResult:
    """L2-normalised image embeddings; cached ones are read back, the rest computed in batches."""
    from tqdm.auto import tqdm

    paths = [str(p) for p in paths]
    db = _cache_db() if use_cache else None
    try:
        hashes = [file_sha256(p, db) if db else "" for p in paths]
        out: list[np.ndarray | None] = [None] * len(paths)
        if db:
            for i, h in enumerate(hashes):
                row = db.execute(
                    "SELECT vector FROM embeddings WHERE model_key=? AND image_sha256=?",
                    (loaded.cache_key, h),
                ).fetchone()
                if row:
                    out[i] = np.frombuffer(row[0], dtype=np.float32).copy()
        todo = [i for i, v in enumerate(out) if v is None]
        seconds = 0.0
        if todo:
            workers = default_workers() if num_workers is None else num_workers
            loader = embed_tensors_loader(
                [paths[i] for i in todo],
                loaded.preprocess,
                batch_size=batch_size,
                num_workers=workers,
                device=loaded.device,
            )
            start = time.perf_counter()
            bar = tqdm(
                total=len(todo),
                desc=f"embed {loaded.name}",
                disable=not progress,
                unit="img",
                file=sys.stderr,
            )
            with torch.inference_mode():
                for idx, pixels in loader:
                    feats = loaded.model.encode_image(pixels.to(loaded.device, non_blocking=True))
                    feats = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
                    for j, vec in zip(idx.tolist(), feats, strict=True):
                        out[todo[j]] = vec.astype(np.float32)
                    bar.update(len(idx))
            bar.close()
            seconds = time.perf_counter() - start
            if db:
                db.executemany(
                    "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)",
                    [(loaded.cache_key, hashes[i], out[i].tobytes()) for i in todo],
                )
                db.execute(
                    "INSERT INTO timings VALUES (?, ?, ?, ?, ?)",
                    (loaded.cache_key, loaded.device, len(todo), seconds, time.time()),
                )
                db.commit()
        dim = next((len(v) for v in out if v is not None), 0)
        matrix = np.stack(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)
        return EmbeddingResult(matrix, len(todo), len(paths) - len(todo), seconds, loaded.device)
    finally:
        if db:
            db.close()


def last_timing(loaded: ClipModel) -> dict | None:
    """The latest measured embedding speed of this model (from any run), or None."""
    with contextlib.closing(_cache_db()) as db:
        row = db.execute(
            "SELECT device, n, seconds FROM timings WHERE model_key=? AND n>0 "
            "ORDER BY recorded_at DESC LIMIT 1",
            (loaded.cache_key,),
        ).fetchone()
    if not row:
        return None
    return {"seconds_per_image": row[2] / row[1], "device": row[0], "n": int(row[1])}


# --------------------------------------------------------------------------- zero-shot


def encode_texts(loaded: ClipModel, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            tokens = loaded.tokenizer(list(texts[start : start + batch_size])).to(loaded.device)
            feats = loaded.model.encode_text(tokens)
            chunks.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
    return np.concatenate(chunks)


def cached_text_embeddings(loaded: ClipModel, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """{text: normalised embedding}; texts already embedded by this model come from the cache."""
    unique = list(dict.fromkeys(texts))
    found: dict[str, np.ndarray] = {}
    with contextlib.closing(_cache_db()) as db:
        for text in unique:
            row = db.execute(
                "SELECT vector FROM text_embeddings WHERE model_key=? AND text=?",
                (loaded.cache_key, text),
            ).fetchone()
            if row:
                found[text] = np.frombuffer(row[0], dtype=np.float32).copy()
        todo = [t for t in unique if t not in found]
        if todo:
            for text, vec in zip(todo, encode_texts(loaded, todo), strict=True):
                found[text] = vec.astype(np.float32)
            db.executemany(
                "INSERT OR REPLACE INTO text_embeddings VALUES (?, ?, ?)",
                [(loaded.cache_key, t, found[t].tobytes()) for t in todo],
            )
            db.commit()
    return found


def class_embeddings(encode, prompt_set: dict[str, list[str]]) -> np.ndarray:
    """One row per class: mean of the normalised prompt embeddings, renormalised.

    `encode(texts) -> (n, d)` normalised embeddings (e.g. a partial of `encode_texts`).
    """
    rows = []
    for cls, texts in prompt_set.items():
        if not texts:
            raise ValueError(f"class {cls!r} has no prompts")
        emb = np.asarray(encode(texts), dtype=np.float64)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        mean = emb.mean(axis=0)
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows)


def zero_shot_probabilities(
    image_embeddings: np.ndarray, class_embeddings_: np.ndarray, logit_scale: float
) -> np.ndarray:
    """Softmax over classes of logit_scale x cosine similarity; rows sum to 1."""
    logits = (
        logit_scale * np.asarray(image_embeddings, float) @ np.asarray(class_embeddings_, float).T
    )
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


def material_set(categories: Sequence[str]) -> set[str]:
    """The record's material classes for the multi-label hit view (not the single-label task).

    Every PRIMARY_CATEGORY named in the set, "Composite" for any composite tag (incl. composite
    foams), and "Ceramic" for "Oxide"; feature tags such as Fracture or Foam add nothing.
    """
    out = {c for c in categories if c in taxonomy.PRIMARY_CATEGORIES}
    if any("composite" in c.lower() for c in categories):
        out.add(taxonomy.COMPOSITE)
    if "Oxide" in categories:
        out.add(taxonomy.CERAMIC)
    return out


@dataclass
class ZeroShotRun:
    scores: pd.DataFrame  # SCORE_COLUMNS
    status: dict[str, str]  # model -> "pretrained" | "random" | "skipped:<reason>"
    timing: dict[str, dict]
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    weights_files: dict[str, str] = field(default_factory=dict)  # model -> ARCH:/file reload name

    @property
    def run_models(self) -> list[str]:
        return [m for m, s in self.status.items() if not s.startswith("skipped")]

    def weights(self, model: str) -> str:
        return self.status[model]


def run_zero_shot(
    df: pd.DataFrame,
    model_names: Sequence[str],
    *,
    profile: config.Profile,
    device: str | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> ZeroShotRun:
    """Embed every image with every model, score every task x prompt set. One model in memory."""
    provenance.reset_stage(STAGE)
    device = device or default_device()
    frames, status, timing, embeddings, reload = [], {}, {}, {}, {}
    for name in model_names:
        try:
            loaded = load_or_substitute(
                name, device=device, seed=seed, random_archs=profile.clip_random_archs
            )
        except ArchitectureUnavailable as err:
            status[name] = f"skipped:{err}"
            print(f"SKIPPED: {err}", file=sys.stderr)
            continue
        status[name] = loaded.weights
        reload[name] = (
            f"{loaded.arch}:{loaded.weights_source}" if loaded.weights == "random" else name
        )
        result = embed_images(
            loaded,
            df["image_path"],
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
        )
        embeddings[name] = (df["micrograph_no"].to_numpy(), result.embeddings)
        if result.n_computed:
            timing[name] = {
                "seconds_per_image": result.seconds / result.n_computed,
                "device": result.device,
                "n": result.n_computed,
            }
        elif (previous := last_timing(loaded)) is not None:
            timing[name] = previous
        frames.append(_score_model(loaded, df, result.embeddings))
        del loaded  # one model in memory at a time
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SCORE_COLUMNS)
    return ZeroShotRun(scores, status, timing, embeddings, reload)


def _score_model(loaded: ClipModel, df: pd.DataFrame, image_emb: np.ndarray) -> pd.DataFrame:
    every_prompt = [
        text
        for task in taxonomy.TASKS
        for prompt_set in prompts.prompt_sets(task).values()
        for texts in prompt_set.values()
        for text in texts
    ]
    table = cached_text_embeddings(loaded, every_prompt)

    def encode(texts):
        return np.stack([table[t] for t in texts])

    frames = []
    for task, (column, classes) in taxonomy.TASKS.items():
        mask = df[column].isin(classes).to_numpy()
        if not mask.any():
            continue
        ids = df.loc[mask, "micrograph_no"].to_numpy()
        for set_name, prompt_set in prompts.prompt_sets(task).items():
            probs = zero_shot_probabilities(
                image_emb[mask], class_embeddings(encode, prompt_set), loaded.logit_scale
            )
            frames.append(
                pd.DataFrame(
                    {
                        "micrograph_no": np.repeat(ids, len(classes)),
                        "model": loaded.name,
                        "weights": loaded.weights,
                        "task": task,
                        "prompt_set": set_name,
                        "class": np.tile(classes, len(ids)),
                        "probability": probs.ravel(),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def predictions(scores: pd.DataFrame) -> pd.DataFrame:
    """Wide view: one row per (model, task, prompt_set, image) with the argmax class and the
    probability matrix in the task's class order (ties: the earlier class)."""
    rows = []
    for (model, weights, task, prompt_set), g in scores.groupby(
        ["model", "weights", "task", "prompt_set"], sort=False
    ):
        classes = list(taxonomy.TASKS[task][1])
        wide = g.pivot(index="micrograph_no", columns="class", values="probability")[classes]
        matrix = wide.to_numpy()
        rows.append(
            pd.DataFrame(
                {
                    "model": model,
                    "weights": weights,
                    "task": task,
                    "prompt_set": prompt_set,
                    "micrograph_no": wide.index.to_numpy(),
                    "predicted": [classes[i] for i in matrix.argmax(axis=1)],
                    "scores": list(matrix),
                }
            )
        )
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def _labels(df: pd.DataFrame, task: str) -> pd.Series:
    return df.set_index("micrograph_no")[taxonomy.TASKS[task][0]]


def choose_prompt_sets(scores: pd.DataFrame, df: pd.DataFrame, split: pd.Series) -> pd.DataFrame:
    """Best prompt set per (model, task) by balanced accuracy on the "select" half only."""
    select_ids = set(df.loc[split == "select", "micrograph_no"])
    pred = predictions(scores)
    rows = []
    for (model, task), g in pred.groupby(["model", "task"], sort=False):
        truth = _labels(df, task)
        best, best_key = None, None
        for order, (prompt_set, h) in enumerate(g.groupby("prompt_set", sort=False)):
            h = h[h["micrograph_no"].isin(select_ids)]
            y = truth.loc[h["micrograph_no"]].to_numpy()
            key = (
                metrics.balanced_accuracy(y, h["predicted"]) if len(h) else -1.0,
                metrics.accuracy(y, h["predicted"]) if len(h) else -1.0,
                -order,
            )
            if best_key is None or key > best_key:
                best, best_key = prompt_set, key
        rows.append(
            {
                "model": model,
                "task": task,
                "prompt_set": best,
                "select_balanced_accuracy": best_key[0],
            }
        )
    return pd.DataFrame(rows)


def zero_shot_table(
    scores: pd.DataFrame,
    df: pd.DataFrame,
    split: pd.Series,
    best: pd.DataFrame,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """model x task x prompt_set rows on the "evaluate" half and (labelled) on all images."""
    subsets = {
        "evaluate": set(df.loc[split == "evaluate", "micrograph_no"]),
        "all (incl. select half)": set(df["micrograph_no"]),
    }
    chosen = {(r.model, r.task): r.prompt_set for r in best.itertuples()}
    rows = []
    for r in predictions(scores).groupby(["model", "weights", "task", "prompt_set"], sort=False):
        (model, weights, task, prompt_set), g = r
        truth, classes = _labels(df, task), taxonomy.TASKS[task][1]
        for subset, ids in subsets.items():
            h = g[g["micrograph_no"].isin(ids)]
            y = truth.loc[h["micrograph_no"]].to_numpy()
            row = metrics.summarise(
                y,
                h["predicted"].tolist(),
                scores=np.stack(h["scores"]) if len(h) else None,
                classes=classes,
                n_boot=n_boot,
                seed=seed,
            )
            rows.append(
                {
                    "model": model,
                    "weights": weights,
                    "task": task,
                    "prompt_set": prompt_set,
                    "subset": subset,
                    "selected": chosen.get((model, task)) == prompt_set,
                    "selected_on": "select half (balanced accuracy)",
                    **row,
                }
            )
    return pd.DataFrame(rows)


def category_multi_table(
    scores: pd.DataFrame, df: pd.DataFrame, split: pd.Series, *, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """The multi-label *hit* view: argmax of the category task counted as a hit when it is one of
    the record's material classes. A hit rate over overlapping classes, not an accuracy."""
    sets = df.set_index("micrograph_no")["category_set"].map(material_set)
    evaluate = set(df.loc[split == "evaluate", "micrograph_no"])
    pred = predictions(scores[scores["task"] == "category"])
    rows = []
    for (model, weights, prompt_set), g in pred.groupby(
        ["model", "weights", "prompt_set"], sort=False
    ):
        for subset, h in (
            ("evaluate", g[g["micrograph_no"].isin(evaluate)]),
            ("all (incl. select half)", g),
        ):
            hits = np.array(
                [p in sets.loc[m] for m, p in zip(h["micrograph_no"], h["predicted"], strict=True)]
            )
            low, high = metrics.bootstrap_ci(
                lambda i, hits=hits: float(hits[i].mean()), len(hits), n_boot=n_boot, seed=seed
            )
            rows.append(
                {
                    "model": model,
                    "weights": weights,
                    "task": CATEGORY_MULTI,
                    "view": CATEGORY_MULTI_NAME,
                    "prompt_set": prompt_set,
                    "subset": subset,
                    "n": len(hits),
                    "hit_at_1": float(hits.mean()) if len(hits) else np.nan,
                    "hit_at_1_ci_low": low,
                    "hit_at_1_ci_high": high,
                }
            )
    return pd.DataFrame(rows)


def per_class_tables(
    scores: pd.DataFrame, df: pd.DataFrame, split: pd.Series, best: pd.DataFrame
) -> pd.DataFrame:
    """Per-class P/R/F1/n of each model's selected prompt set, on the "evaluate" half."""
    evaluate = set(df.loc[split == "evaluate", "micrograph_no"])
    pred = predictions(scores)
    frames = []
    for r in best.itertuples():
        g = pred[
            (pred["model"] == r.model)
            & (pred["task"] == r.task)
            & (pred["prompt_set"] == r.prompt_set)
            & pred["micrograph_no"].isin(evaluate)
        ]
        if g.empty:
            continue
        y = _labels(df, r.task).loc[g["micrograph_no"]].to_numpy()
        table = metrics.per_class_table(y, g["predicted"].tolist())
        frames.append(
            table.assign(
                model=r.model,
                weights=g["weights"].iloc[0],
                task=r.task,
                prompt_set=r.prompt_set,
                subset="evaluate",
            )
        )
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    return out[
        [
            "model",
            "weights",
            "task",
            "prompt_set",
            "subset",
            "class",
            "precision",
            "recall",
            "f1",
            "n",
        ]
    ]


def confusion_figure(
    scores: pd.DataFrame,
    df: pd.DataFrame,
    split: pd.Series,
    best: pd.DataFrame,
    model: str,
    title_labels: Sequence[str] = (),
):
    """Confusion matrices (rows: truth) of one model's selected prompt sets, "evaluate" half."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    evaluate = set(df.loc[split == "evaluate", "micrograph_no"])
    pred = predictions(scores[scores["model"] == model])
    chosen = best[best["model"] == model]
    fig, axes = plt.subplots(1, len(chosen), figsize=(6.2 * len(chosen), 5.0), squeeze=False)
    for ax, r in zip(axes[0], chosen.itertuples(), strict=True):
        g = pred[
            (pred["task"] == r.task)
            & (pred["prompt_set"] == r.prompt_set)
            & pred["micrograph_no"].isin(evaluate)
        ]
        classes = list(taxonomy.TASKS[r.task][1])
        y = _labels(df, r.task).loc[g["micrograph_no"]].to_numpy()
        matrix = metrics.confusion(y, g["predicted"].tolist(), classes)
        sns.heatmap(matrix, annot=True, fmt="d", cbar=False, cmap="Blues", ax=ax)
        ax.set_title(f"{r.task} — {r.prompt_set} (n={len(g)})", fontsize=9)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.tick_params(axis="y", rotation=0)
        ax.tick_params(axis="x", rotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    fig.suptitle(
        provenance.stamp(f"CLIP zero-shot confusion, {model}, evaluate half", list(title_labels))
    )
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- outputs


def out_dir() -> Path:
    return config.build_dir() / "clip"


def write_outputs(run: ZeroShotRun, best: pd.DataFrame) -> dict[str, Path]:
    """The downstream contract: zero_shot_scores.csv, best_prompt_sets.csv, timing.json."""
    directory = out_dir()
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "scores": directory / "zero_shot_scores.csv",
        "best": directory / "best_prompt_sets.csv",
        "timing": directory / "timing.json",
    }
    run.scores[SCORE_COLUMNS].to_csv(paths["scores"], index=False)
    best[["model", "task", "prompt_set"]].to_csv(paths["best"], index=False)
    paths["timing"].write_text(json.dumps(run.timing, indent=2), encoding="utf-8")
    return paths


def load_scores(kind: str = "zero_shot") -> pd.DataFrame:
    """Read the stage's scores: kind "zero_shot" (zero_shot_scores.csv) or "probe"."""
    files = {"zero_shot": "zero_shot_scores.csv", "probe": "probe_scores.csv"}
    if kind not in files:
        raise ValueError(f"unknown score kind {kind!r}; choose one of {sorted(files)}")
    path = out_dir() / files[kind]
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run notebook 03 (make reproduce) first")
    return pd.read_csv(path)


def text_to_image_search(
    loaded: ClipModel, query: str, image_ids: np.ndarray, image_embeddings: np.ndarray, k: int = 5
) -> pd.DataFrame:
    """The k images whose embeddings are most similar to the text query's (cosine)."""
    text = encode_texts(loaded, [query])[0]
    sims = np.asarray(image_embeddings, float) @ text
    order = np.argsort(-sims, kind="stable")[:k]
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(order) + 1),
            "micrograph_no": image_ids[order],
            "cosine": sims[order],
            "query": query,
            "model": loaded.name,
            "weights": loaded.weights,
        }
    )


# --------------------------------------------------------------------------- CLI


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset directory (records.csv, images/)")
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="ARCH:PRETRAINED, ARCH:/path/to/weights or hf-hub:org/name (repeatable)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers")
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)"
    )
    parser.add_argument("--out", default=None, help="write micrograph_no + embeddings to this .npz")


def run_cli(args: argparse.Namespace) -> int:
    df = dataset.load_records(args.dataset)
    status = 0
    for name in args.model:
        try:
            loaded = load_or_substitute(name, device=args.device)
        except ArchitectureUnavailable as err:
            print(f"skipped: {err}", file=sys.stderr)
            status = 1
            continue
        result = embed_images(
            loaded, df["image_path"], batch_size=args.batch_size, num_workers=args.workers
        )
        print(
            f"{name} ({loaded.weights}): {len(df)} images, {result.n_computed} embedded, "
            f"{result.n_cached} from cache, {result.seconds:.1f} s on {result.device}"
        )
        if args.out:
            out = Path(args.out)
            if len(args.model) > 1:
                out = out.with_name(f"{out.stem}-{slug(name)}{out.suffix}")
            np.savez(
                out, micrograph_no=df["micrograph_no"].to_numpy(), embeddings=result.embeddings
            )
    return status


# --------------------------------------------------------------------------- notebook helpers


def status_table(run: ZeroShotRun) -> pd.DataFrame:
    """One row per requested model: weights used, or why it was skipped."""
    rows = []
    for model, status in run.status.items():
        skipped = status.startswith("skipped:")
        rows.append(
            {
                "model": model,
                "weights": "skipped" if skipped else status,
                "reason": status.removeprefix("skipped:") if skipped else "",
                "seconds_per_image": run.timing.get(model, {}).get("seconds_per_image"),
                "device": run.timing.get(model, {}).get("device"),
            }
        )
    return pd.DataFrame(rows)


def stage_labels(run: ZeroShotRun, model: str | None = None) -> list[str]:
    """Labels for titles: 'random weights' (of `model`, or of any model), 'sample data'."""
    models = [model] if model else run.run_models
    random = any(run.status.get(m) == "random" for m in models)
    return (["random weights"] if random else []) + dataset.data_substitutes()


def search_figure(results: pd.DataFrame, df: pd.DataFrame, labels: Sequence[str] = ()):
    """The retrieved images of a text query, best first, with their technique family."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(2.6 * len(results), 3.2), squeeze=False)
    records = df.set_index("micrograph_no")
    for ax, r in zip(axes[0], results.itertuples(), strict=True):
        ax.imshow(load_image(records.loc[r.micrograph_no, "image_path"]))
        ax.set_title(
            f"#{r.rank} {r.micrograph_no}\n{records.loc[r.micrograph_no, 'technique_family']}"
            f"\ncos {r.cosine:.3f}",
            fontsize=8,
        )
        ax.axis("off")
    query, model = results["query"].iloc[0], results["model"].iloc[0]
    fig.suptitle(provenance.stamp(f"Text->image search: '{query}' ({model})", list(labels)))
    fig.tight_layout()
    return fig
