"""Tiling benchmark: peak RSS and seconds to encode and decode one large photo with ``demo``, with
tiling on (at 1, 4 and 16 MP) and off (at 1 and 4 MP), and the RSS slope per megapixel.

    .venv/bin/python bench/bench_tiling.py [--sizes 1 4 16] [--untiled-up-to 4] [--tile-size 1024]

Each case runs in a fresh subprocess (peak RSS = that process's ``ru_maxrss``: model load, encode
with side information as ``compress`` does by default, then decode of the record it wrote). The
photo is a real one (skimage's astronaut) resized to the size, so the codec sees photo statistics.
Timings on a shared machine are noisy; the RSS figures are not.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import numpy as np


def photo(megapixels: float) -> np.ndarray:
    from PIL import Image
    from skimage import data

    width = int(math.sqrt(megapixels * 1e6 * 4 / 3)) // 8 * 8  # 4:3, like a camera
    height = int(megapixels * 1e6 / width) // 8 * 8
    return np.asarray(Image.fromarray(data.astronaut()).resize((width, height), Image.BICUBIC))


def worker(model_name: str, megapixels: float, tile_size: int | None) -> dict:
    import torch

    from sprdiff import SPRDiff
    from sprdiff.evaluation import psnr

    model = SPRDiff.from_pretrained(model_name)
    image = photo(megapixels)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    start = time.perf_counter()
    [record] = model.compress([image], tile_size=tile_size)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    [decoded] = model.decompress([record], tile_size=tile_size)
    decode_s = time.perf_counter() - start
    return {"mp": image.shape[0] * image.shape[1] / 1e6, "size": f"{image.shape[1]}x{image.shape[0]}",
            "tile": tile_size, "rss_loaded_gib": rss_loaded,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "encode_s": encode_s, "decode_s": decode_s, "bytes": len(record), "psnr": psnr(image, decoded),
            "threads": torch.get_num_threads()}


def run_case(model_name: str, megapixels: float, tile_size: int | None) -> dict:
    command = [sys.executable, __file__, "--worker", str(megapixels), str(tile_size or 0), "--model", model_name]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        return {"mp": megapixels, "tile": tile_size, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 4, 16], help="megapixels, tiling on")
    parser.add_argument("--untiled-up-to", type=float, default=4, help="also run untiled at sizes up to this")
    parser.add_argument("--tile-size", type=int, default=None, help="px (default: sprdiff.tiling.DEFAULT_TILE_SIZE)")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.model, float(args.worker[0]), int(args.worker[1]) or None)))
        return
    from sprdiff.tiling import DEFAULT_TILE_SIZE

    tile = args.tile_size or DEFAULT_TILE_SIZE
    print(f"== {args.model}: encode (side information on) + decode, one process per case, tile {tile} px")
    print(f"{'MP':>6} {'size':>11} {'tiling':>7} {'peak RSS GiB':>12} {'after load':>10} {'encode s':>9} "
          f"{'decode s':>9} {'bytes':>7} {'PSNR dB':>8}", flush=True)
    results: dict[tuple[float, bool], dict] = {}
    for mp in args.sizes:
        for tiled in ([True, False] if mp <= args.untiled_up_to else [True]):
            r = run_case(args.model, mp, tile if tiled else None)
            results[(mp, tiled)] = r
            if "error" in r:
                print(f"{mp:>6} {'':>11} {'on' if tiled else 'off':>7}  failed: {r['error']}", flush=True)
                continue
            print(f"{r['mp']:>6.2f} {r['size']:>11} {'on' if tiled else 'off':>7} {r['peak_rss_gib']:>12.2f} "
                  f"{r['rss_loaded_gib']:>10.2f} {r['encode_s']:>9.1f} {r['decode_s']:>9.1f} {r['bytes']:>7} "
                  f"{r['psnr']:>8.2f}", flush=True)
    for tiled in (True, False):
        done = sorted((r["mp"], r["peak_rss_gib"]) for (_, t), r in results.items() if t == tiled and "error" not in r)
        if len(done) >= 2:
            (mp0, rss0), (mp1, rss1) = done[0], done[-1]
            print(f"slope, tiling {'on' if tiled else 'off'}: {(rss1 - rss0) / (mp1 - mp0) * 1024:.0f} MiB per MP "
                  f"({mp0:.1f} -> {mp1:.1f} MP)")


if __name__ == "__main__":
    main()
