"""Batched codec calls: images/s at batch 1 against a larger batch, side by side in one run.

    .venv/bin/python bench/bench_batching.py [--model demo] [--images 16] [--size 512] [--batch 8]
                                             [--threads 2] [--repeats 2] [--no-side-information]

The images are crops of ``../shared/data/photos`` (synthetic noise if that folder is absent),
all one size, so every batch is full. Each arm compresses and decompresses the same images
through ``SPRDiff.compress/decompress(batch_size=...)``, exactly as a codec actor's call for one
codec group does; the arms alternate ``--repeats`` times and the best time of each is kept.
Prints images/s for encode and decode at both batch sizes, their ratios, and whether the
records and pixels of the two arms are equal (on CPU they usually are: batching changes how the
kernels are scheduled, not what they compute).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sprdiff import SPRDiff  # noqa: E402
from sprdiff.images import load_image  # noqa: E402

PHOTOS = REPO.parent / "shared" / "data" / "photos"


def crops(count: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    files = sorted(p for p in PHOTOS.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")) \
        if PHOTOS.is_dir() else []
    out = []
    for i in range(count):
        if files:
            image = load_image(files[i % len(files)].read_bytes())
            if min(image.shape[:2]) >= size:
                y = int(rng.integers(0, image.shape[0] - size + 1))
                x = int(rng.integers(0, image.shape[1] - size + 1))
                out.append(np.ascontiguousarray(image[y:y + size, x:x + size]))
                continue
        out.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return out


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-side-information", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = SPRDiff.from_pretrained(args.model)
    images = crops(args.images, args.size)
    side = not args.no_side_information
    model.compress(images[:1], colour_correction=side)  # warm-up: first-call allocations and caches
    best: dict[tuple[str, int], float] = {}
    outputs: dict[tuple[str, int], list] = {}
    for _ in range(args.repeats):
        for batch in (1, args.batch):
            seconds, records = timed(lambda b=batch: model.compress(images, colour_correction=side, batch_size=b))
            best[("encode", batch)] = min(seconds, best.get(("encode", batch), float("inf")))
            outputs[("encode", batch)] = records
            seconds, pixels = timed(lambda b=batch, r=records: model.decompress(r, batch_size=b))
            best[("decode", batch)] = min(seconds, best.get(("decode", batch), float("inf")))
            outputs[("decode", batch)] = pixels
    print(f"model {args.model}, {args.images} images of {args.size}x{args.size}, torch threads {args.threads}, "
          f"side information {'on' if side else 'off'}, best of {args.repeats}")
    print(f"{'stage':8} {'batch 1 img/s':>14} {f'batch {args.batch} img/s':>14} {'ratio':>7}")
    for stage in ("encode", "decode"):
        one, many = (args.images / best[(stage, b)] for b in (1, args.batch))
        print(f"{stage:8} {one:14.2f} {many:14.2f} {many / one:7.2f}")
    same_bytes = outputs[("encode", 1)] == outputs[("encode", args.batch)]
    same_pixels = all(np.array_equal(a, b) for a, b in zip(outputs[("decode", 1)], outputs[("decode", args.batch)]))
    print(f"records equal across batch sizes: {same_bytes}; decoded pixels equal: {same_pixels}")


if __name__ == "__main__":
    main()
