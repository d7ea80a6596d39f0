#!/usr/bin/env bash
# GPU check of the transformers VLM backend (for a lent GPU machine; needs no hub access).
# Builds the tiny Qwen3-VL and LLaVA-NeXT models, checks on CUDA in bf16 that the shared image
# prefix answers as the plain per-question pass does (bf16: loose tolerance) on real
# micrographs, then runs the VLM benchmark (earlier loop / plain batched / shared prefix) on
# CUDA for both families; with real weights cached, pass MODEL=<hub id or dir> to bench that.
#   bench/gpu_check.sh            (uses .venv/bin/python; override with PY=...)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONPATH="$PWD/lib:$PWD"
WORK=${OUT:-build}/gpu_check
N=${N:-32}
mkdir -p "$WORK"

"$PY" - "$WORK" <<'PYEOF'
import sys, time
from pathlib import Path
import torch
from microqa import config, images
from microqa.vlm import tiny
from microqa.vlm.hf import HFBackend
sys.path.insert(0, "bench")
from bench_vlm import find_images, study_questions

assert torch.cuda.is_available(), "no CUDA device visible"
print(torch.cuda.get_device_name(0), "torch", torch.__version__)
work = Path(sys.argv[1])
qs = study_questions()
prompts, letters = [q.prompt for q in qs], [list(q.letters) for q in qs]
decoded = [images.open_rgb(p) for p in find_images(8, None)]
for family in tiny.FAMILIES:
    backend = HFBackend(tiny.build_tiny_vlm(family, work / family))
    assert backend.device == "cuda" and backend.dtype == torch.bfloat16, (backend.device, backend.dtype)
    drift = mass = 0.0
    start = time.perf_counter()
    for image in decoded:
        backend.shared_prefix = True
        shared = backend.score_image(image, prompts, letters)
        backend.shared_prefix = False
        plain = backend.score_image(image, prompts, letters)
        for s, p, x in zip(shared, plain, letters):
            assert abs(sum(s.probabilities.values()) - 1) < 1e-3
            drift = max(drift, max(abs(s.probabilities[k] - p.probabilities[k]) for k in x))
            mass = max(mass, abs(s.letter_mass - p.letter_mass))
    print(f"{family}: {len(decoded)} images x {len(prompts)} questions in "
          f"{time.perf_counter() - start:.1f}s; shared-vs-plain max prob diff {drift:.2e}, "
          f"letter mass diff {mass:.2e} (bf16)")
    assert drift < 2e-2, drift
print("GPU CHECK OK")
PYEOF

for family in qwen3_vl llava_next; do
  "$PY" bench/bench_vlm.py --family "$family" --device cuda -n "$N" --batch-size 16
done
if [ -n "${MODEL:-}" ]; then
  "$PY" bench/bench_vlm.py --model "$MODEL" --device cuda -n "$N" --batch-size 16 --earlier-images 8
fi
