#!/usr/bin/env bash
# The codec's GPU check, ready to run on one CUDA GPU (under 8 minutes on an H100/H200-class card):
#   1. sd-turbo at full size with random weights (the trained model's FLOPs; nothing downloaded):
#      encode and decode ms per image at 512x512 and 768x512, batch 1 and 8, fp32 and bf16,
#      images/s and peak GPU memory (bench/bench_gpu_codec.py);
#   2. the GPU tests (pytest -m gpu): latents decoded on the GPU are identical to the CPU's.
# Usage: bash bench/gpu_check.sh            (from the repository root; sets up .venv if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no CUDA GPU here (nvidia-smi finds none); run this on a GPU machine" >&2
  exit 2
fi
[ -x .venv/bin/python ] || bash scripts/setup.sh
.venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: torch sees no CUDA device (a CPU-only torch build?)')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456
timeout 420 .venv/bin/python bench/bench_gpu_codec.py --model sd-turbo --device cuda --sizes 512x512,768x512 \
  --batches 1,8 --precisions fp32,bf16 --repeats 3
timeout 120 .venv/bin/python -m pytest -q -m gpu tests/
