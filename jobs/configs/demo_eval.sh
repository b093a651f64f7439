#!/usr/bin/env bash
# The evaluation report of the shipped `demo` model (docs/demo-model.md): `sprdiff eval` at each of
# its rate points (--rates all: RD curves, BD-rates) on the 5 photos held out of its training
# (jobs/configs/demo.sh) and on the README's skimage photos, with the matched-bytes classical
# baselines. Writes out/demo-eval/{held-out,skimage}/.
set -euo pipefail
cd "$(dirname "$0")/../.."
PHOTOS=${PHOTOS:-../shared/data/photos}
OUT=${OUT:-out/demo-eval}
MODEL=${MODEL:-demo}

bash scripts/setup.sh
.venv/bin/python scripts/sample_photos.py "$OUT/skimage-photos"
.venv/bin/sprdiff eval --model "$MODEL" --rates all --input "$PHOTOS/04[5-9].png" --output "$OUT/held-out"
.venv/bin/sprdiff eval --model "$MODEL" --rates all --input "$OUT/skimage-photos" --output "$OUT/skimage"
