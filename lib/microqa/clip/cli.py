"""`python -m microqa embed`: embed a dataset's images with CLIP models, into the cache.

Sharded (`--shard K/N`, or torchrun / Slurm array variables: `clip.shards`), each process embeds
its part into the one cache; its `--out` holds its part only (`NAME.shard-K-of-N.npz`) and the
failures are printed, not written (build/clip/failures.csv describes a whole set). Once every
shard has finished, a run without a shard reads everything back from the cache and writes the
whole `--out` and failures.csv: it equals a single-process run bit for bit.

Exit status: 0 every image embedded; 1 some images (listed in the stage's failures.csv) or
models (skipped, with the reason) failed while the rest finished; 2 bad input or another
expected error, printed as one line `error: ...` (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import io
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from microqa import files, provenance
from microqa.clip import embed, outputs, shards
from microqa.clip.models import (
    ArchitectureUnavailable,
    WeightsUnavailable,
    load_or_substitute,
    slug,
)
from microqa.data import dataset, variants

# Failures a user can act on from the message alone (microqa.cli prints them as one line);
# anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (
    dataset.DatasetError,
    ValueError,
    WeightsUnavailable,
    provenance.StrictModeError,
    FileNotFoundError,
    sqlite3.OperationalError,
)


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
    parser.add_argument(
        "--variant",
        default=variants.ORIGINAL,
        choices=variants.VARIANTS,
        help="embed this variant of every image (cached under its own key)",
    )
    parser.add_argument(
        "--shard",
        default=None,
        help="K/N: embed only part K of N (by content hash); none: all. Default: from "
        "torchrun (RANK/WORLD_SIZE) or a Slurm array (SLURM_ARRAY_TASK_ID/COUNT), else all",
    )
    parser.add_argument(
        "--no-decoded-cache",
        dest="decoded_cache",
        action="store_false",
        help="do not keep the resized images in data/cache/clip_decoded",
    )


def _shard_out(out: Path, shard: shards.Shard) -> Path:
    if shard.whole:
        return out
    return out.with_name(f"{out.stem}.shard-{shard.index}-of-{shard.count}{out.suffix}")


def run_cli(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, not {args.batch_size}")
    shard = shards.resolve(args.shard)
    if not shard.whole:
        print(f"shard {shard.label} (from {shard.source}): embedding this part of the images")
    device = args.device or shards.local_device()
    df = dataset.load_records(args.dataset)
    status, failures, named = 0, [], set()
    for name in args.model:
        try:
            loaded = load_or_substitute(name, device=device)
        except ArchitectureUnavailable as err:
            print(f"skipped: {err}", file=sys.stderr)
            status = 1
            continue
        result = embed.embed_images(
            loaded,
            df["image_path"],
            batch_size=args.batch_size,
            num_workers=args.workers,
            variant=args.variant,
            shard=shard,
            decoded_cache=args.decoded_cache,
        )
        failed = outputs.failure_rows(df["image_path"], df["micrograph_no"], result.failures)
        outputs.announce_failures(failed, named)
        failures.append(failed)
        part = "" if shard.whole else f" in shard {shard.label}"
        print(
            f"{loaded.label}: {len(df) - len(result.other_shards)} images{part}, "
            f"{result.n_computed} embedded, "
            f"{result.n_cached} from cache, {len(result.failures)} failed, "
            f"{result.seconds:.1f} s on {result.device}"
        )
        if args.out:
            out = _shard_out(Path(args.out), shard)
            if len(args.model) > 1:
                out = out.with_name(f"{out.stem}-{slug(name)}{out.suffix}")
            ok = result.ok
            buffer = io.BytesIO()
            np.savez(
                buffer,
                micrograph_no=df["micrograph_no"].to_numpy()[ok],
                embeddings=result.embeddings[ok],
            )
            files.atomic_write_bytes(out, buffer.getvalue())
    failed = pd.concat(failures).drop_duplicates("micrograph_no") if failures else pd.DataFrame()
    if not shard.whole:
        if len(failed):
            print(f"{len(failed)} images of this shard failed (named above)", file=sys.stderr)
            status = 1
        return status
    where = outputs.write_failures(failed)
    if len(failed):
        print(f"{len(failed)} images failed; listed in {where}", file=sys.stderr)
        status = 1
    return status
