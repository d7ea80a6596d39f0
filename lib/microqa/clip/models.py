"""CLIP models: names, loading, and seeded random same-architecture stand-ins.

Model names follow open_clip, written `ARCH:PRETRAINED` (`ViT-B-32:openai`,
`ViT-B-32-quickgelu:/path/to/weights.safetensors`) or `hf-hub:org/name`.

A name is parsed once; what was loaded is kept as data (`ModelIdentity`: the user's name, the
architecture built, the weights identity, the local file when there is one), and display
labels are derived from it, never parsed back.

Offline (no hub, no file) a model is handled in one of three ways, never silently:
- its architecture cannot be built (config or tokenizer on the hub: SigLIP, BiomedCLIP):
  `ArchitectureUnavailable`, and the run skips it with the reason;
- its weights cannot be had: `WeightsUnavailable` names the model and how to supply a file;
  in a non-strict run the same architecture gets seeded random weights instead, written to
  `config.models_dir()` and loaded through the same file route a user's local weights take,
  keeping the user's name and stamped "random weights" everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from microqa import config, files, hub, provenance
from microqa.clip.cache import EmbeddingCache

STAGE = "clip"
RANDOM_WEIGHTS_METADATA = "microqa_weights"  # safetensors metadata key marking a stand-in file
HUB_PREFIX = "hf-hub:"
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


class ArchitectureUnavailable(RuntimeError):
    """The model's architecture (config or tokenizer) cannot be built here; the run skips it."""


class WeightsUnavailable(RuntimeError):
    """The model's weights cannot be had; the message says how to supply a local file."""


# --------------------------------------------------------------------------- names


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


# --------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class ModelIdentity:
    """What was loaded, as data: enough to name it anywhere and to load it again."""

    name: str  # the name the study asked for (e.g. ViT-B-32:openai)
    arch: str  # the open_clip architecture built (e.g. ViT-B-32-quickgelu)
    weights: str  # "pretrained" or "random"
    weights_id: str  # "tag:openai", "sha256:<hex>" of the file, or "hf-hub:<id>"
    weights_file: Path | None = None  # the local file loaded (the user's, or a stand-in)
    seed: int | None = None  # seed of random weights (from the file's metadata)
    substitute: bool = False  # True: random weights stand in for the weights the name asked for

    @property
    def cache_key(self) -> str:
        return f"{self.arch}|{self.weights_id}"

    @property
    def label(self) -> str:
        """The name a reader knows plus the weights identity, never a path of this machine:
        'ViT-B-32:openai (random weights, seed 0)', 'ViT-B-32-quickgelu:w.pt (sha256 1a2b..)'."""
        spec = parse_model_name(self.name)
        shown = f"{spec.arch}:{Path(spec.pretrained).name}" if spec.is_file else self.name
        if self.weights == "random":
            seed = "" if self.seed is None else f", seed {self.seed}"
            return f"{shown} (random weights{seed})"
        if spec.is_file:
            return f"{shown} ({self.weights_id.replace(':', ' ')[:19]})"
        return shown


@dataclass
class ClipModel:
    """A loaded open_clip model with its own preprocessing and tokenizer."""

    identity: ModelIdentity
    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    device: str

    name = property(lambda self: self.identity.name)
    arch = property(lambda self: self.identity.arch)
    weights = property(lambda self: self.identity.weights)
    weights_id = property(lambda self: self.identity.weights_id)
    cache_key = property(lambda self: self.identity.cache_key)
    label = property(lambda self: self.identity.label)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().clamp(max=100).item())


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- preprocessing


class FloorCenterCrop(torch.nn.Module):
    """Centre crop with the offset rounded down, as Hugging Face's CLIPProcessor does.

    torchvision's CenterCrop rounds a half-pixel offset to even, HF floors it: on micrographs
    whose resized width minus 224 is odd the two crops sit one pixel apart. The reference
    features came from HF, so the project crops as HF does.
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


# --------------------------------------------------------------------------- loading


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


def _supply_hint(arch: str, tag_cfg: dict) -> str:
    where = tag_cfg.get("hf_hub") or tag_cfg.get("url") or "the model's release"
    return (
        f"Supply the weights as a local file: download them ({where}) and name the model "
        f"'{arch}:/path/to/open_clip_pytorch_model.bin' (.bin, .pt or .safetensors), or put them "
        f"in the Hugging Face cache (HF_HOME) on a machine with network access."
    )


def _file_metadata(path: Path) -> dict[str, str]:
    """The safetensors metadata of a weights file ({} for other formats)."""
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def _weights_sha256(path: Path) -> str:
    """sha256 of a weights file, memoised in the embedding cache (gigabytes hash once)."""
    with EmbeddingCache() as cache:
        return cache.file_sha256(path)


def _load_hub(spec: ModelSpec, device: str) -> ClipModel:
    import open_clip

    with hub.offline_unless_reachable():
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(spec.arch, device=device)
            tokenizer = open_clip.get_tokenizer(spec.arch)
        except Exception as err:  # noqa: BLE001 - any hub failure means: cannot build here
            raise ArchitectureUnavailable(
                f"{spec.name}: architecture config lives on the Hugging Face hub and is not "
                f"cached here ({type(err).__name__}); run with network access once to cache it"
            ) from err
    identity = ModelIdentity(spec.name, spec.arch, "pretrained", spec.arch)
    return ClipModel(identity, model.eval(), _hf_compatible(preprocess), tokenizer, device)


def _load(spec: ModelSpec, device: str, stand_in: Path | None = None) -> ClipModel:
    """Load `spec` once: its tag or file, or (`stand_in`) a random-weights file of the same
    architecture preprocessing exactly as the pretrained model it replaces."""
    import open_clip

    if spec.is_hub:
        return _load_hub(spec, device)
    tag = None if spec.is_file else spec.pretrained
    arch, tag_cfg = _resolve_arch(spec.arch, tag)
    if tag and not tag_cfg:
        raise ValueError(
            f"{spec.name}: {tag!r} is neither a pretrained tag of {spec.arch} "
            f"({open_clip.list_pretrained_tags_by_model(spec.arch)}) nor a weights file"
        )
    with hub.offline_unless_reachable():
        try:
            tokenizer = open_clip.get_tokenizer(arch)
        except Exception as err:  # noqa: BLE001
            raise ArchitectureUnavailable(
                f"{spec.name}: the tokenizer of {arch} lives on the Hugging Face hub and is not "
                f"cached here ({type(err).__name__})"
            ) from err
    options = _image_options(tag_cfg)
    path = stand_in or (Path(spec.pretrained) if spec.is_file else None)
    if path is not None:
        if not path.is_file():
            raise WeightsUnavailable(
                f"{spec.name}: weights file {path} does not exist. " + _supply_hint(arch, tag_cfg)
            )
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=str(path), device=device, **options
        )
        metadata = _file_metadata(path)
        random = metadata.get(RANDOM_WEIGHTS_METADATA) == "random"
        identity = ModelIdentity(
            spec.name,
            arch,
            "random" if random else "pretrained",
            f"sha256:{_weights_sha256(path)}",
            weights_file=path,
            seed=int(metadata["seed"]) if random and "seed" in metadata else None,
            substitute=stand_in is not None,
        )
    else:
        with hub.offline_unless_reachable():
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    arch, pretrained=tag, device=device, **options
                )
            except Exception as err:  # noqa: BLE001 - download failures come in many types
                raise WeightsUnavailable(
                    f"{spec.name}: pretrained weights '{tag}' cannot be downloaded or found in "
                    f"the cache ({type(err).__name__}: {str(err)[:200]}). "
                    + _supply_hint(arch, tag_cfg)
                ) from err
        identity = ModelIdentity(spec.name, arch, "pretrained", f"tag:{tag}")
    return ClipModel(identity, model.eval(), _hf_compatible(preprocess), tokenizer, device)


def load_model(name: str, *, device: str | None = None) -> ClipModel:
    """Load an open_clip model by name. Raises ArchitectureUnavailable / WeightsUnavailable."""
    return _load(parse_model_name(name), device or default_device())


def load_identity(identity: ModelIdentity, *, device: str | None = None) -> ClipModel:
    """The very model `identity` describes, loaded again (e.g. after a run released it)."""
    stand_in = identity.weights_file if identity.substitute else None
    loaded = _load(parse_model_name(identity.name), device or default_device(), stand_in)
    if loaded.identity != identity:
        raise WeightsUnavailable(
            f"{identity.label}: the weights changed since they were used "
            f"({identity.weights_id} then, {loaded.weights_id} now)"
        )
    return loaded


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
    metadata = {RANDOM_WEIGHTS_METADATA: "random", "seed": str(seed), "arch": arch}
    # written beside the target and renamed (as files.atomic_write_bytes does), streamed to
    # disk because a model's bytes need not fit in memory twice
    tmp = path.with_name(f".{path.name}.{os.getpid()}{files.PARTIAL_SUFFIX}")
    try:
        save_file(state, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_or_substitute(
    name: str,
    *,
    device: str | None = None,
    seed: int = 0,
    random_archs: Sequence[str] | None = None,
    record: provenance.Record | None = None,
) -> ClipModel:
    """`load_model`, or (non-strict only) the same architecture with random weights.

    `random_archs`: architectures allowed a random stand-in (None: all). A model outside it
    whose weights are missing is skipped (ArchitectureUnavailable, with the supply hint); under
    STRICT=1 every missing weight is an error. A stand-in is declared in `record` (the run's
    provenance record).
    """
    spec, device = parse_model_name(name), device or default_device()
    try:
        return _load(spec, device)
    except WeightsUnavailable as err:
        arch, _ = _resolve_arch(spec.arch, None if spec.is_file else spec.pretrained)
        base = arch.removesuffix("-quickgelu")
        if random_archs is not None and arch not in random_archs and base not in random_archs:
            if config.strict():
                raise
            raise ArchitectureUnavailable(
                f"{name}: no weights here, and this profile runs no random stand-in for {arch} "
                f"(too slow on CPU); {err}"
            ) from err
        provenance.substitute(
            STAGE,
            f"{name} -> same architecture {arch} with random weights (seed {seed})",
            str(err),
            record,
        )
        return _load(spec, device, stand_in=random_weights_file(arch, seed=seed))
