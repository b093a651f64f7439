#!/usr/bin/env bash
# The README's main command: write a folder of sample photos, archive it with the Ray Data encode
# job into local Parquet, decode the archive back into PNG files, print both job summaries and
# the bits per pixel written and PSNR of each image.
# A local Ray starts inside each command and stops after it. Outputs go to out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_AUTH_MODE=disabled
MODEL=${MODEL:-demo}   # the shipped model trained on 2 CPU cores (jobs/configs/demo.sh); `tiny` is random
DEMO=out/demo

rm -rf "$DEMO/archive" "$DEMO/decoded"   # a fresh run each time (a rerun would otherwise resume)
.venv/bin/python scripts/sample_photos.py "$DEMO/photos"

.venv/bin/sprdiff encode-job --input "$DEMO/photos" --output "$DEMO/archive" --model "$MODEL" --shard-size 4
.venv/bin/sprdiff decode-job --input "$DEMO/archive" --output "$DEMO/decoded"
.venv/bin/python scripts/demo_summary.py "$DEMO/photos" "$DEMO/archive" "$DEMO/decoded"
echo "archive: $DEMO/archive/part-*.parquet   decoded images: $DEMO/decoded/*.png"
