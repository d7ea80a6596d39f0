"""`python -m microqa embed`: embed a dataset's images with CLIP models, into the cache.

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
from microqa.clip import embed, outputs
from microqa.clip.models import (
    ArchitectureUnavailable,
    WeightsUnavailable,
    load_or_substitute,
    slug,
)
from microqa.data import dataset

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


def run_cli(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, not {args.batch_size}")
    df = dataset.load_records(args.dataset)
    status, failures, named = 0, [], set()
    for name in args.model:
        try:
            loaded = load_or_substitute(name, device=args.device)
        except ArchitectureUnavailable as err:
            print(f"skipped: {err}", file=sys.stderr)
            status = 1
            continue
        result = embed.embed_images(
            loaded, df["image_path"], batch_size=args.batch_size, num_workers=args.workers
        )
        failed = outputs.failure_rows(df["image_path"], df["micrograph_no"], result.failures)
        outputs.announce_failures(failed, named)
        failures.append(failed)
        print(
            f"{loaded.label}: {len(df)} images, {result.n_computed} embedded, "
            f"{result.n_cached} from cache, {len(result.failures)} failed, "
            f"{result.seconds:.1f} s on {result.device}"
        )
        if args.out:
            out = Path(args.out)
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
    where = outputs.write_failures(failed)
    if len(failed):
        print(f"{len(failed)} images failed; listed in {where}", file=sys.stderr)
        status = 1
    return status
