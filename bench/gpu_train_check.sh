#!/usr/bin/env bash
# The training GPU check, ready to run on one CUDA GPU (under 6 minutes on an H100/H200-class card):
# the full-size sd-turbo preset with random weights (nothing downloaded), 20 steps of stage 1 and
# of stage 2 at 512x512 crops in bf16, activation checkpointing off and on: seconds per step,
# samples/s, peak GPU memory; then a stage-2 checkpoint written, loaded and stepped on
# (bench/bench_gpu_train.py). docs/training.md turns s/step into the recipe's GPU-hours.
# Usage: bash bench/gpu_train_check.sh      (from the repository root; sets up .venv if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_train_check: no CUDA GPU here (nvidia-smi finds none); run this on a GPU machine" >&2
  exit 2
fi
[ -x .venv/bin/python ] || bash scripts/setup.sh
.venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_train_check: torch sees no CUDA device (a CPU-only torch build?)')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456
timeout 330 .venv/bin/python bench/bench_gpu_train.py --model sd-turbo --device cuda --crop 512 --batch 1 \
  --steps 20 --warmup 2 --stages 1,2
