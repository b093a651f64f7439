"""Write the 7 skimage.data sample photos the README's main command archives, as PNG files."""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image
from skimage import data

NAMES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "logo")


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    photos = {name: getattr(data, name)() for name in NAMES}
    photos["motorcycle"] = data.stereo_motorcycle()[0]
    for name, pixels in photos.items():
        Image.fromarray(pixels).convert("RGB").save(folder / f"{name}.png")
    print(f"wrote {len(photos)} sample photos to {folder}/")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
