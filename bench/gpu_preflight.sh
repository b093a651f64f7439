# Sourced by the GPU checks (bench/gpu_check.sh, bench/gpu_train_check.sh) from the repository root,
# with CHECK set to the check's name: stops with exit 2 unless a CUDA GPU is here and torch sees it,
# sets PY to the Python to run (bench/device_python.sh: .venv, or the lent machine's python3 with the
# carried .whl/), prints the GPU and the versions, and sets the container image's malloc thresholds.
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "$CHECK: no CUDA GPU here (nvidia-smi finds none); run this on a GPU machine" >&2
  exit 2
fi
source bench/device_python.sh
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else '$CHECK: torch sees no CUDA device (a CPU-only torch build?)')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import sys; from importlib.metadata import version; print('python', sys.version.split()[0], *(f'{n} {version(n)}' for n in ('torch', 'numpy', 'compressai', 'diffusers', 'transformers', 'peft', 'timm')))"
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456
export PYTHONUNBUFFERED=1  # every row printed before a timeout ends a bench still comes back
