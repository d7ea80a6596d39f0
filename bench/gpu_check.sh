#!/usr/bin/env bash
# GPU checks for a lent GPU machine (no hub access needed), each step timed out and logged so
# one failure does not lose the others' results:
#   1. the CLIP embedding benchmark on CUDA (first: the one step that reads the whole library);
#   2. the tiny Qwen3-VL and LLaVA-NeXT models on CUDA in bf16: the shared prefix answers as the
#      plain per-question pass does (bf16: loose tolerance) on real micrographs;
#   3. the VLM benchmark (earlier loop / plain batched / shared prefix) on CUDA, both families,
#      tiny and larger random models;
#   4. the probe table recomputed on this machine's CPU against tables/clip_probe.csv
#      (bench/probe_portability.py; inputs exported beforehand to .device_inputs/);
#   5. the VLM benchmark on a random-weight Qwen3-VL with the 8B model's dimensions.
# With real weights cached, MODEL=<hub id or dir> benches that model too. IMAGES=<folder> points
# the benches at a copy of the library (default: the mirror beside the checkout, else the
# sample), CLIP_N=<count> sets how many of its micrographs the CLIP benchmark embeds (the whole
# library: 870).
#   bench/gpu_check.sh            (uses .venv/bin/python; override with PY=...)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/lib:$PWD"
WORK=${OUT:-build}/gpu_check
N=${N:-16}
CLIP_N=${CLIP_N:-60}
IMAGES_ARG=(${IMAGES:+--images "$IMAGES"})
mkdir -p "$WORK"
status=0
step() {  # step SECONDS NAME COMMAND...: run, log, remember a failure, go on
  local seconds=$1 name=$2
  shift 2
  echo "=== $name ($(date +%T))"
  timeout "$seconds" "$@" || { echo "=== $name FAILED (exit $?)"; status=1; }
}

cat > /tmp/gpu_agreement.py <<'PYEOF'
import sys, time
from pathlib import Path
import torch
from microqa import config
from microqa.data import images
from microqa.vlm import tiny
from microqa.vlm.hf import HFBackend
sys.path.insert(0, "bench")
from bench_vlm import find_images, study_questions

assert torch.cuda.is_available(), "no CUDA device visible"
print(torch.cuda.get_device_name(0), "torch", torch.__version__)
work = config.models_dir() / "gpu_check"
qs = study_questions()
prompts, letters = [q.prompt for q in qs], [list(q.letters) for q in qs]
decoded = [images.open_rgb(p) for p in find_images(8, Path(sys.argv[1]) if len(sys.argv) > 1 else None)]
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
step 300 "1. CLIP bench" "$PY" bench/bench_clip.py --device cuda --n "$CLIP_N" \
  --n-earlier 200 "${IMAGES_ARG[@]}" --json "$WORK/clip.json"
step 120 "2. shared prefix = plain pass on CUDA (tiny models)" "$PY" /tmp/gpu_agreement.py ${IMAGES:+"$IMAGES"}
for family in qwen3_vl llava_next; do
  step 150 "3. VLM bench $family" "$PY" bench/bench_vlm.py --family "$family" --device cuda \
    -n "$N" --earlier-images 4 --batch-size 16 "${IMAGES_ARG[@]}"
done
if [ -f .device_inputs/probe_inputs.npz ]; then
  step 120 "4. probe table on this CPU" "$PY" bench/probe_portability.py check .device_inputs
fi
step 300 "5. VLM bench, Qwen3-VL 8B dimensions" "$PY" bench/bench_vlm.py --sizes 8b \
  --device cuda -n 8 --earlier-images 2 --batch-size 36 "${IMAGES_ARG[@]}"
if [ -n "${MODEL:-}" ]; then
  step 300 "real model" "$PY" bench/bench_vlm.py --model "$MODEL" --device cuda -n "$N" \
    --batch-size 16 --earlier-images 8
fi
cp build/bench/*.json "$WORK"/ 2>/dev/null
echo "=== done; failures: $status"
exit $status
