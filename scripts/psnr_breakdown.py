"""PSNR after each decoding stage (sprdiff/evaluation/breakdown.py), per image and mean: where a
model loses quality. Usage: psnr_breakdown.py MODEL IMAGE [IMAGE ...]  (MODEL: preset, directory or URI)"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from sprdiff import SPRDiff, load_image
from sprdiff.evaluation.breakdown import STAGES, reconstruction_breakdown


def main(model_ref: str, paths: list[Path]) -> None:
    model = SPRDiff.from_pretrained(model_ref).eval()
    for name, meaning in STAGES.items():
        print(f"# {name}: {meaning}")
    columns = ["bpp", *STAGES]
    print(f"{'image':<24}" + "".join(f"{c:>22}" for c in columns))

    def print_row(label: str, values) -> None:
        print(f"{label:<24}" + "".join(f"{v:>22.4f}" if c == "bpp" else f"{v:>22.2f}"
                                       for c, v in zip(columns, values, strict=True)), flush=True)

    rows = []
    for path in paths:
        result = reconstruction_breakdown(model, load_image(path.read_bytes()))
        rows.append([result[c] for c in columns])
        print_row(path.name, rows[-1])
    print_row("mean", np.mean(rows, axis=0))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], [Path(p) for p in sys.argv[2:]])
