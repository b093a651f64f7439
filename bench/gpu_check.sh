#!/usr/bin/env bash
# The codec's GPU check, ready to run on one CUDA GPU (under 8 minutes on an H100/H200-class card):
#   1. sd-turbo at full size with random weights (the trained model's FLOPs; nothing downloaded):
#      encode and decode ms per image at 512x512 and 768x512, batch 1 and 8, fp32 and bf16,
#      images/s and peak GPU memory (bench/bench_gpu_codec.py);
#   2. the GPU tests (pytest -m gpu): latents decoded on the GPU are identical to the CPU's.
# Usage: bash bench/gpu_check.sh            (from the repository root; .venv, or on the lent
#        GPU machine the wheels of scripts/device_wheels.sh carried as .whl/: bench/device_python.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
CHECK=gpu_check source bench/gpu_preflight.sh
status=0  # the tests run even when the bench stops at its limit
timeout "${CODEC_SECONDS:-420}" "$PY" bench/bench_gpu_codec.py --model sd-turbo --device cuda --sizes 512x512,768x512 \
  --batches 1,8 --precisions fp32,bf16 --repeats 3 || status=$?
# only the files with GPU tests: the others import what the lent machine does not hold (Ray, moto)
timeout "${TESTS_SECONDS:-120}" "$PY" -m pytest -q -p no:cacheprovider -m gpu $(grep -rl "mark.gpu" tests) || status=$?
exit "$status"
