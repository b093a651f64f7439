#!/usr/bin/env bash
# The training GPU check, ready to run on one CUDA GPU (under 6 minutes on an H100/H200-class card):
# the full-size sd-turbo preset with random weights (nothing downloaded), 20 steps of stage 1 and
# of stage 2 at 512x512 crops in bf16, activation checkpointing off and on: seconds per step,
# samples/s, peak GPU memory; then a stage-2 checkpoint written, loaded and stepped on
# (bench/bench_gpu_train.py). docs/training.md turns s/step into the recipe's GPU-hours.
# Usage: bash bench/gpu_train_check.sh      (from the repository root; .venv, or on the lent
#        GPU machine the wheels of scripts/device_wheels.sh carried as .whl/: bench/device_python.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
CHECK=gpu_train_check source bench/gpu_preflight.sh
timeout "${TRAIN_SECONDS:-330}" "$PY" bench/bench_gpu_train.py --model sd-turbo --device cuda --crop 512 --batch 1 \
  --steps 20 --warmup 2 --stages 1,2
