# Sourced by bench/gpu_preflight.sh from the repository root: sets PY, the Python the GPU checks run.
# - .venv (scripts/setup.sh) when there is one: a GPU machine of your own;
# - else, with .whl/ carried (scripts/device_wheels.sh): the lent GPU machine, whose python3 holds torch
#   with CUDA but nothing can be fetched there; the wheels go into a folder of their own (--no-deps:
#   the image's torch and numpy stay) put on PYTHONPATH with the repository;
# - else scripts/setup.sh makes .venv (needs a package index).
if [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
elif [ -d .whl ]; then
  SITE=${TMPDIR:-/tmp}/sprdiff-site
  python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  PY=python3
else
  bash scripts/setup.sh
  PY=.venv/bin/python
fi
"$PY" -c "import sprdiff.model" || { echo "${CHECK:-gpu}: the codec does not import with $PY (see above)" >&2; exit 2; }
