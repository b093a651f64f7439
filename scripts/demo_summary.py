"""Per image: the rate point it was coded at, the bytes and bits per pixel actually written (from
the archive's records) and PSNR of the decoded image against the original.
Usage: demo_summary.py PHOTOS_DIR ARCHIVE_DIR DECODED_DIR"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq

from sprdiff import bitstream, load_image
from sprdiff.evaluation import psnr


def main(photos: Path, archive: Path, decoded: Path) -> None:
    rows = pq.read_table(archive, columns=["key", "status", "record", "num_bytes", "width", "height"]).to_pylist()
    total_bits = total_pixels = 0
    print(f"{'image':<22}{'size':>11}{'rate':>5}{'bytes':>8}{'bpp':>9}{'PSNR dB':>9}")
    for row in sorted(rows, key=lambda r: r["key"]):
        if row["status"] != "ok":
            print(f"{row['key']:<22}{row['status']}")
            continue
        original = load_image((photos / f"{row['key']}.png").read_bytes())
        restored = load_image((decoded / f"{row['key']}.png").read_bytes())
        pixels = row["width"] * row["height"]
        bpp = 8 * row["num_bytes"] / pixels
        total_bits, total_pixels = total_bits + 8 * row["num_bytes"], total_pixels + pixels
        size = f"{row['width']}x{row['height']}"
        rate = bitstream.read_header(row["record"])[0].rate_id  # the record says its rate, in any archive
        print(f"{row['key']:<22}{size:>11}{rate:>5}{row['num_bytes']:>8}{bpp:>9.4f}"
              f"{psnr(original, restored):>9.2f}")
    if total_pixels:
        print(f"{'all':<22}{'':>11}{'':>5}{total_bits // 8:>8}{total_bits / total_pixels:>9.4f}")


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:4]))
