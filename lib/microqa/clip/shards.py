"""Which part of an image set one process embeds, so N processes (GPUs, nodes) share the work.

A shard is `K/N` (0 <= K < N). An image belongs to shard `int(sha256[:16], 16) % N` of its
*content* hash: the assignment does not depend on the order of the records, on their paths or
on which other images are in the set, so adding an image never moves another, and two copies of
the same bytes go to the same shard (embedded once). The N processes fill the one embedding
cache (SQLite in WAL mode, `clip.cache`); a last run without a shard reads every embedding back.

Where the shard comes from, first match wins:

- `--shard K/N` (`--shard none` or `0/1`: the whole set);
- torchrun: `RANK` / `WORLD_SIZE` (and `LOCAL_RANK` picks the GPU, `local_device`);
- a Slurm job array: `SLURM_ARRAY_TASK_ID` - `SLURM_ARRAY_TASK_MIN` of `SLURM_ARRAY_TASK_COUNT`.

The shard a run uses is printed with where it came from, so an inherited environment variable
never narrows a run silently.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

_FORM = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int
    source: str = "--shard"  # where it was read from, for the line a run prints

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(
                f"shard {self.index}/{self.count} (from {self.source}) is not K/N with 0 <= K < N"
            )

    @property
    def whole(self) -> bool:
        return self.count == 1

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, sha256_hex: str) -> bool:
        """Whether the image with this content hash is this shard's to embed."""
        return int(sha256_hex[:16], 16) % self.count == self.index


WHOLE = Shard(0, 1, "default")


def parse(text: str) -> Shard:
    """`K/N` -> Shard; `none` -> the whole set. A one-line error for anything else."""
    if text.strip().lower() == "none":
        return WHOLE
    found = _FORM.match(text)
    if not found:
        raise ValueError(f"--shard {text!r}: write K/N (e.g. 0/4 for the first of four) or none")
    return Shard(int(found[1]), int(found[2]), "--shard")


def _int(environ: Mapping[str, str], name: str) -> int:
    value = environ[name].strip()
    if not value.lstrip("-").isdigit():
        raise ValueError(f"environment variable {name}={value!r} is not an integer")
    return int(value)


def from_env(environ: Mapping[str, str] | None = None) -> Shard | None:
    """The shard torchrun or a Slurm job array gives this process, or None outside them."""
    environ = os.environ if environ is None else environ
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return Shard(_int(environ, "RANK"), _int(environ, "WORLD_SIZE"), "RANK/WORLD_SIZE")
    if "SLURM_ARRAY_TASK_ID" in environ and "SLURM_ARRAY_TASK_COUNT" in environ:
        # array ids need not start at 0 (--array=1-4): count from the smallest
        first = _int(environ, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in environ else 0
        return Shard(
            _int(environ, "SLURM_ARRAY_TASK_ID") - first,
            _int(environ, "SLURM_ARRAY_TASK_COUNT"),
            "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT",
        )
    return None


def resolve(text: str | None, environ: Mapping[str, str] | None = None) -> Shard:
    """The shard of this run: `--shard` when given, else the environment's, else the whole set."""
    if text is not None:
        return parse(text)
    return from_env(environ) or WHOLE


def local_device(environ: Mapping[str, str] | None = None) -> str | None:
    """`cuda:<LOCAL_RANK>` under torchrun on a GPU machine (one GPU per process), else None."""
    environ = os.environ if environ is None else environ
    if "LOCAL_RANK" not in environ:
        return None
    import torch

    return f"cuda:{_int(environ, 'LOCAL_RANK')}" if torch.cuda.is_available() else None
