#!/usr/bin/env bash
# Wheels for the lent GPU machine (the `device` tool's nvidia-h100-x1 / nvidia-h200 image), fetched
# here into .whl/ (git-ignored) so the GPU checks run there with nothing to download.
#
# That image's python3 (3.12) already holds torch with CUDA, transformers, peft, timm, safetensors,
# scipy, torch-geometric, pyarrow, scikit-image and pytest, but not CompressAI, diffusers or piq, and
# nothing can be fetched there. bench/gpu_preflight.sh installs these wheels into a folder of its own
# (--no-deps: the image's own torch and numpy stay) and puts it and the repository on PYTHONPATH.
# Only what the GPU checks import is carried (the codec, training's losses): not Ray, s3fs or moto.
# The versions are pyproject.toml's pins. Run it here, then hand the folder to the device:
#   bash scripts/device_wheels.sh
#   device run: command "bash bench/device_checks.sh", carry [".whl"], timeout_s 600
# DEVICE_PYTHON (default 3.12) names that image's Python; WHEELS (default .whl) the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE_PYTHON=${DEVICE_PYTHON:-3.12}
WHEELS=${WHEELS:-.whl}
pin() {  # NAME -> NAME==VERSION as pyproject.toml pins it
  local line
  line=$(grep -oE "\"$1==[^\"]+\"" pyproject.toml | tr -d '"') || { echo "device_wheels: $1 is not pinned in pyproject.toml" >&2; exit 1; }
  echo "$line"
}
mkdir -p "$WHEELS"
rm -f "$WHEELS"/*.whl  # one version of each: two would stop the install there
# the CompressAI wheel has a compiled extension: fetched for the device's Python and platform
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$DEVICE_PYTHON" \
  --implementation cp --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" \
  "$(pin compressai)" "$(pin diffusers)" "$(pin pytorch-msssim)" "$(pin piq)" 2>&1 \
  | { grep -v "^WARNING: Location" || true; }
ls -l "$WHEELS"
du -sh "$WHEELS"
