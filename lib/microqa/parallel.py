"""Independent CPU-bound pieces of work (the probes' fits, the bootstrap of each table row)
spread over `config.parallel_jobs()` processes.

Processes, not threads: each piece is small and bound by Python, so threads would queue on one
GIL. Every piece is a deterministic function of its arguments (its seed among them), and the
results come back in the order the pieces were given, so a parallel run's tables equal a
serial run's exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from microqa import config

T = TypeVar("T")


def run(pieces: Sequence[Callable[[], T]]) -> list[T]:
    """Each piece called once (e.g. `functools.partial(fn, *args)` of a module-level `fn`),
    results in the pieces' order; serially when one process is allowed or one piece given."""
    n_jobs = min(len(pieces), config.parallel_jobs())
    if n_jobs <= 1:
        return [piece() for piece in pieces]
    from joblib import Parallel, delayed  # only a parallel run pays for the process pool

    return Parallel(n_jobs=n_jobs)(delayed(piece)() for piece in pieces)
