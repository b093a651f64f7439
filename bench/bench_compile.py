"""``--compile`` on this machine: images/s of a plain model against a ``torch.compile``d one, side by side.

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456 \\
        .venv/bin/python bench/bench_compile.py [--model demo] [--images 8] [--size 512] [--threads 2] [--repeats 2]
                                                [--inductor-cache DIR]

Both arms load the same weights; the compiled one goes through ``prepare_for_inference(
compile_modules=True)``, as a codec actor started with ``--compile`` does (the UNet and the VAE
decoder: the modules synthesis runs, so decode and an encode with side information, which
synthesises x̂ to fit them). The first call of each arm is timed apart: for the compiled arm it
holds the compilation for this input size, paid once per size per actor. Then the arms alternate
``--repeats`` times over the same crops (``bench_batching.crops``), best time kept, and the script
prints encode and decode images/s of both, their ratio, what compiling cost, after how many
images of one size it has paid for itself, and whether records and pixels are equal.

Compilation is cached on disk (``TORCHINDUCTOR_CACHE_DIR``, by default ``/tmp/torchinductor_$USER``),
so an actor that compiles a size this machine has compiled before pays far less. The bench compiles
into a fresh temporary cache (a new machine's first actor) unless ``--inductor-cache`` names one.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch
from bench_batching import crops, timed

from sprdiff import SPRDiff
from sprdiff.precision import prepare_for_inference

ARMS = ("plain", "compiled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--inductor-cache", help="compile into this cache (default: a fresh temporary one)")
    args = parser.parse_args()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = args.inductor_cache or tempfile.mkdtemp(prefix="bench-compile-")
    torch.set_num_threads(args.threads)
    images = crops(args.images, args.size)
    models = {arm: prepare_for_inference(SPRDiff.from_pretrained(args.model), compile_modules=arm == "compiled")
              for arm in ARMS}
    first: dict[str, float] = {}
    for arm, model in models.items():  # the first encode and decode of one image: compilation, if any
        seconds, [record] = timed(lambda m=model: m.compress(images[:1]))
        first[arm] = seconds + timed(lambda m=model, r=record: m.decompress([r]))[0]
    best: dict[tuple[str, str], float] = {}
    outputs: dict[tuple[str, str], list] = {}
    for _ in range(args.repeats):
        for arm, model in models.items():
            seconds, records = timed(lambda m=model: m.compress(images))
            best[(arm, "encode")] = min(seconds, best.get((arm, "encode"), float("inf")))
            seconds, pixels = timed(lambda m=model, r=records: m.decompress(r))
            best[(arm, "decode")] = min(seconds, best.get((arm, "decode"), float("inf")))
            outputs[(arm, "encode")], outputs[(arm, "decode")] = records, pixels
    print(f"model {args.model}, {args.images} images of {args.size}x{args.size}, torch threads {args.threads}, "
          f"side information on, best of {args.repeats}")
    print(f"{'stage':8} {'plain img/s':>12} {'compiled img/s':>15} {'ratio':>7}")
    saved_per_image = 0.0
    for stage in ("encode", "decode"):
        plain, compiled = (args.images / best[(arm, stage)] for arm in ARMS)
        saved_per_image += (best[("plain", stage)] - best[("compiled", stage)]) / args.images
        print(f"{stage:8} {plain:12.2f} {compiled:15.2f} {compiled / plain:7.2f}")
    steady = sum(best[("plain", stage)] for stage in ("encode", "decode")) / args.images
    compile_seconds = first["compiled"] - first["plain"]
    print(f"inductor cache: {os.environ['TORCHINDUCTOR_CACHE_DIR']}")
    print(f"first encode + decode of one image: plain {first['plain']:.1f} s, compiled {first['compiled']:.1f} s "
          f"(compiling this size: about {compile_seconds:.0f} s; a steady encode + decode takes {steady:.2f} s)")
    if saved_per_image > 0:
        print(f"compiling pays for itself after about {compile_seconds / saved_per_image:.0f} images of this size "
              f"(encoded and decoded), per actor")
    else:
        print("compiled calls are not faster here: compiling never pays for itself")
    same_bytes = outputs[("plain", "encode")] == outputs[("compiled", "encode")]
    diff = max(int(np.abs(a.astype(int) - b.astype(int)).max())
               for a, b in zip(outputs[("plain", "decode")], outputs[("compiled", "decode")]))
    print(f"records equal: {same_bytes}; decoded pixels differ by at most {diff} levels")


if __name__ == "__main__":
    main()
