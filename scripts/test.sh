#!/usr/bin/env bash
# Set up .venv and run the default test suite (CPU only; slow benchmarks are opt-in with -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_AUTH_MODE=disabled
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
