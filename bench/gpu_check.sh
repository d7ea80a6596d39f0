#!/usr/bin/env bash
# GPU smoke check of the transformers VLM backend (for a lent GPU machine; needs no hub access).
# Builds the tiny Qwen3-VL and LLaVA-NeXT models, runs both answer modes on CUDA in bf16 on a
# few real micrographs, then the VLM benchmark on CUDA. About a minute on an H200.
#   bench/gpu_check.sh            (uses .venv/bin/python; override with PY=...)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONPATH="$PWD/lib:$PWD"
WORK=${OUT:-build}/gpu_check
mkdir -p "$WORK"

"$PY" - "$WORK" <<'EOF'
import sys, time
from pathlib import Path
import torch
from PIL import Image
from microqa import config, tiny
from microqa.vlm.base import VLMRequest
from microqa.vlm.hf import HFBackend

assert torch.cuda.is_available(), "no CUDA device visible"
print(torch.cuda.get_device_name(0), "torch", torch.__version__)
work = Path(sys.argv[1])
folder = next(
    f for f in (config.shared_dir() / "doitpoms" / "images", config.sample_dir() / "images")
    if f.is_dir()
)
images = [Image.open(p) for p in sorted(folder.iterdir())[:12]]
prompt = ("What imaging technique was used to capture this image? A) SEM B) TEM C) AFM "
          "D) Optical microscopy. Answer with the letter only.")
requests = [VLMRequest(image, prompt) for image in images]
for family in tiny.FAMILIES:
    backend = HFBackend(tiny.build_tiny_vlm(family, work / family), batch_size=6)
    assert backend.device == "cuda" and backend.dtype == torch.bfloat16, (backend.device, backend.dtype)
    start = time.perf_counter()
    scores = backend.score(requests, list("ABCD"))
    elapsed = time.perf_counter() - start
    assert all(abs(sum(s.probabilities.values()) - 1) < 1e-4 for s in scores)
    backend.batch_size = 1
    single = backend.score(requests, list("ABCD"))
    drift = max(abs(a.probabilities[k] - b.probabilities[k])
                for a, b in zip(scores, single) for k in "ABCD")
    texts1 = [r.text for r in backend.generate(requests, max_new_tokens=5)]
    backend.batch_size = 6
    texts6 = [r.text for r in backend.generate(requests, max_new_tokens=5)]
    same = sum(a == b for a, b in zip(texts1, texts6))
    print(f"{family}: score {len(scores)} q in {elapsed:.3f}s; batched-vs-single max prob diff "
          f"{drift:.2e} (bf16); greedy texts identical batched/single: {same}/{len(texts1)}; "
          f"visual tokens {[s.visual_tokens for s in scores[:4]]}")
print("GPU CHECK OK")
EOF

for family in qwen3_vl llava_next; do
  "$PY" bench/bench_vlm.py --family "$family" --device cuda -n 64 --batch-size 16
done
