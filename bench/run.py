"""Run every benchmark script bench/bench_*.py in turn (`make bench`); exit non-zero if any fails.

Each script prints its own figures and its targets; run one alone with
`.venv/bin/python bench/bench_clip.py --help`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    scripts = sorted(Path(__file__).parent.glob("bench_*.py"))
    if not scripts:
        print("no benchmarks found in bench/", file=sys.stderr)
        return 1
    failed = []
    for script in scripts:
        print(f"\n=== {script.name} ===", flush=True)
        if subprocess.run([sys.executable, str(script), *sys.argv[1:]]).returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"\nbenchmarks failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
