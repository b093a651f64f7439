#!/usr/bin/env bash
# Both GPU checks in one call of the `device` tool: bench/gpu_check.sh (codec timings, then the GPU
# tests) and bench/gpu_train_check.sh (training steps), with time limits that fit the tool's
# 10 minutes per command (and a session's 15 minutes of device time with the machine's start):
# codec bench 240 s, GPU tests 60 s, training bench 200 s, about 30 s of set-up each (the limits
# can be set through CODEC_SECONDS, TESTS_SECONDS, TRAIN_SECONDS). The benches print row by row,
# so a bench stopped at its limit still gives the rows it measured.
# First, on this machine: bash scripts/device_wheels.sh (the wheels that machine lacks, in .whl/).
# Then one device call: command "bash bench/device_checks.sh", carry [".whl"], timeout_s 600.
# Each check's output also goes to $OUT (the folder the tool brings back) or out/device-checks/.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${OUT:-out/device-checks}
mkdir -p "$LOGS"
export CODEC_SECONDS=${CODEC_SECONDS:-240} TESTS_SECONDS=${TESTS_SECONDS:-60} TRAIN_SECONDS=${TRAIN_SECONDS:-200}
status=0
for check in gpu_check gpu_train_check; do
  echo "== $check ($(date -u +%H:%M:%S))"
  bash "bench/$check.sh" 2>&1 | tee "$LOGS/$check.log"
  rc=${PIPESTATUS[0]}
  echo "== $check: exit $rc"
  [ "$rc" -eq 0 ] || status=$rc
done
exit "$status"
