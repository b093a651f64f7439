"""Codec benchmark: speed, container overhead and rate accuracy of ``tiny``; size and CPU
latency of the full-size ``sd-turbo`` architecture built from its configs with random weights.

    .venv/bin/python bench/bench_codec.py [--skip-sd-turbo] [--repeats 3]

Nothing is downloaded: sd-turbo's pretrained parts are built from the architecture configs
in ``sprdiff/preset_configs/sd_turbo.json`` (same FLOPs as the trained model).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from skimage import data

from sprdiff import SPRDiff, bitstream
from sprdiff.presets import sd_turbo_config

PAPER_PARAMS_M = 1344


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_tiny(repeats: int) -> None:
    model = SPRDiff.from_pretrained("tiny")
    images = {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}
    print(f"== tiny ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params), "
          f"torch threads={torch.get_num_threads()}")
    print(f"{'image':<10} {'size':>9} {'enc ms/MP':>10} {'no-map x':>9} {'dec ms/MP':>10} {'bytes':>7} {'bpp':>7} "
          f"{'container B':>11} {'written/est %':>13}")  # no-map x: encode time with / without colour correction
    for name, img in images.items():
        mp = img.shape[0] * img.shape[1] / 1e6
        [rec] = model.compress([img])
        enc = timed(lambda img=img: model.compress([img]), repeats)
        enc_no_map = timed(lambda img=img: model.compress([img], colour_correction=False), repeats)
        dec = timed(lambda rec=rec: model.decompress([rec]), repeats)
        # Rate estimate from the likelihoods of the same quantized latents, on the padded image.
        with torch.no_grad():
            y = model.analysis(model._pad(img))
            lik = model.entropy(y)["likelihoods"]
        est_bits = sum(float((-torch.log2(v)).sum()) for v in lik.values())
        header, _ = bitstream.read_header(rec)
        written_bits = 8 * sum(header.string_lengths)
        print(f"{name:<10} {img.shape[1]:>4}x{img.shape[0]:<4} {1000 * enc / mp:>10.0f} {enc / enc_no_map:>9.2f} "
              f"{1000 * dec / mp:>10.0f} "
              f"{len(rec):>7} {8 * len(rec) / (mp * 1e6):>7.4f} {bitstream.container_overhead(rec):>11} "
              f"{100 * written_bits / est_bits:>13.2f}")


def bench_exact_path(repeats: int) -> None:
    """Rate and speed cost of the exact integer entropy-parameter path vs the float path."""
    model = SPRDiff.from_pretrained("tiny")
    print("== exact integer entropy path vs float path (tiny; entropy coding + parameter networks only)")
    print(f"{'image':<10} {'exact bytes':>11} {'float bytes':>11} {'rate cost %':>11} {'exact ms':>9} "
          f"{'float ms':>9} {'exact dec ms':>12} {'float dec ms':>12}")
    for name, img in {"astronaut": data.astronaut(), "coffee": data.coffee()}.items():
        with torch.no_grad():
            y = model.analysis(model._pad(img))
        row = {}
        for exact in (True, False):
            model.entropy.exact = exact
            model.entropy.invalidate_tables()
            string, _ = model.entropy.compress(y)
            enc = timed(lambda y=y: model.entropy.compress(y), repeats)
            dec = timed(lambda string=string, y=y: model.entropy.decompress(string, tuple(y.shape[2:])), repeats)
            row[exact] = (len(string), enc, dec)
        (eb, ee, ed), (fb, fe, fd) = row[True], row[False]
        print(f"{name:<10} {eb:>11} {fb:>11} {100 * (eb - fb) / fb:>11.2f} {1000 * ee:>9.1f} {1000 * fe:>9.1f} "
              f"{1000 * ed:>12.1f} {1000 * fd:>12.1f}")
    model.entropy.exact = True


def bench_sd_turbo() -> None:
    t = time.perf_counter()
    model = SPRDiff.from_config(sd_turbo_config())
    built = time.perf_counter() - t
    parts = {name: sum(p.numel() for p in getattr(model, name).parameters()) / 1e6
             for name in ("vae", "unet", "dino", "distortion", "fusion", "latent_encoder", "entropy",
                          "latent_decoder", "transform", "projector", "semantic_projection")}
    total = sum(p.numel() for p in model.parameters()) / 1e6
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) / 1e6
    print(f"== sd-turbo architecture, random weights (built in {built:.1f} s)")
    print("params (M): " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))
    print(f"total {total:.1f} M (of which LoRA {lora:.1f} M); paper: {PAPER_PARAMS_M} M")
    img = np.ascontiguousarray(data.astronaut())  # 512x512
    with torch.no_grad():
        t = time.perf_counter()
        [rec] = model.compress([img])
        enc = time.perf_counter() - t
        t = time.perf_counter()
        model.decompress([rec])
        dec = time.perf_counter() - t
    print(f"CPU 512x512: encode {enc:.2f} s, decode {dec:.2f} s ({torch.get_num_threads()} threads); "
          f"record {len(rec)} bytes (random weights: the size means nothing)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-sd-turbo", action="store_true")
    args = parser.parse_args()
    bench_tiny(args.repeats)
    bench_exact_path(args.repeats)
    if not args.skip_sd_turbo:
        bench_sd_turbo()


if __name__ == "__main__":
    main()
