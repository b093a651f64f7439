#!/usr/bin/env bash
# The README's main command: write a folder of sample photos, archive it with the Ray Data encode
# job into local Parquet, decode the archive back into PNG files, and print both summaries.
# A local Ray starts inside each command and stops after it. Outputs go to out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_AUTH_MODE=disabled
MODEL=${MODEL:-tiny}   # the trained `demo` preset replaces this once it exists
DEMO=out/demo

rm -rf "$DEMO/archive" "$DEMO/decoded"   # a fresh run each time (a rerun would otherwise resume)
.venv/bin/python - "$DEMO/photos" <<'PY'
import sys
from pathlib import Path

from PIL import Image
from skimage import data

folder = Path(sys.argv[1])
folder.mkdir(parents=True, exist_ok=True)
photos = {name: getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket",
                                                   "immunohistochemistry", "logo")}
photos["motorcycle"] = data.stereo_motorcycle()[0]
for name, pixels in photos.items():
    Image.fromarray(pixels).save(folder / f"{name}.png")
print(f"wrote {len(photos)} sample photos to {folder}/")
PY

.venv/bin/sprdiff encode-job --input "$DEMO/photos" --output "$DEMO/archive" --model "$MODEL" --shard-size 4
.venv/bin/sprdiff decode-job --input "$DEMO/archive" --output "$DEMO/decoded"
echo "archive: $DEMO/archive/part-*.parquet   decoded images: $DEMO/decoded/*.png"
