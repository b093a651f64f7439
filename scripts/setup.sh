#!/usr/bin/env bash
# Create (or refresh) the virtual environment at .venv with sprdiff and its test tools.
# Idempotent: reinstalls only when pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ -f "$stamp" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# -c constraints.txt pins torch (pip could otherwise swap it) and keeps numpy<2, pyarrow<26.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]' 2>&1 \
  | { grep -v "^WARNING: Location" || true; }
rm -f .venv/.installed-*
touch "$stamp"
