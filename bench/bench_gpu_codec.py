"""Codec speed on one device: encode and decode ms per image, images/s and peak memory, for each
size x batch size x precision, with a model built at full size from its config (random weights:
the FLOPs of the trained model, nothing downloaded).

    .venv/bin/python bench/bench_gpu_codec.py --model sd-turbo --device cuda      # bench/gpu_check.sh
    .venv/bin/python bench/bench_gpu_codec.py --model tiny --device cpu --sizes 128x128 --batches 1,2

Encode is timed without side information (the neural encoder and the entropy coder) and with it
(which adds the decode the side-channel fits need); decode is the whole decoder. Each figure is the
median of ``--repeats`` timed runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import numpy as np
import torch

from sprdiff import SPRDiff
from sprdiff.encoder import EncodeSettings
from sprdiff.precision import PRECISIONS, check_precision, prepare_for_inference
from sprdiff.presets import PRESETS


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, repeats: int) -> float:
    fn()  # warm-up: kernels, allocator, autotuning
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak_mib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sd-turbo", help=f"a preset built from its config ({sorted(PRESETS)}, "
                        f"random weights) or a saved model (demo, a directory)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="512x512,768x512", help="WxH,...")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet and VAE decoder")
    args = parser.parse_args()
    t0 = time.perf_counter()
    model = (SPRDiff.from_config(PRESETS[args.model]()) if args.model in PRESETS
             else SPRDiff.from_pretrained(args.model)).to(args.device)
    prepare_for_inference(model, compile_modules=args.compile)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{args.model} ({params:,.0f} M parameters) on {args.device}, {torch.get_num_threads()} threads: loaded in "
          f"{time.perf_counter() - t0:.1f} s")
    rng = np.random.default_rng(0)
    print(f"{'size':>9} {'batch':>5} {'prec':>5} {'enc ms/img':>10} {'enc+side ms':>11} {'dec ms/img':>10} "
          f"{'enc+dec img/s':>13} {'peak MiB':>9}")
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.split("x"))
        for batch in (int(b) for b in args.batches.split(",")):
            images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(batch)]
            for precision in args.precisions.split(","):
                try:
                    check_precision(precision, args.device)
                except ValueError as e:
                    print(f"{size:>9} {batch:>5} {precision:>5} skipped: {e}")
                    continue
                if args.device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                plain = EncodeSettings(side_information=False, batch_size=batch, precision=precision)
                full = EncodeSettings(side_information=True, batch_size=batch, precision=precision)
                records = [r.data for r in model.encode(images, plain)]
                enc = _timed(partial(model.encode, images, plain), args.device, args.repeats) / batch
                enc_side = _timed(partial(model.encode, images, full), args.device, args.repeats) / batch
                dec = _timed(partial(model.decompress, records, batch_size=batch, precision=precision), args.device,
                             args.repeats) / batch
                print(f"{size:>9} {batch:>5} {precision:>5} {1000 * enc:>10.1f} {1000 * enc_side:>11.1f} "
                      f"{1000 * dec:>10.1f} {1 / (enc + dec):>13.2f} {_peak_mib(args.device):>9.0f}")


if __name__ == "__main__":
    main()
