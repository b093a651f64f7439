"""Bitstream fuzzing at volume: random, truncated, bit-flipped and spliced records through the
tiny model's decoder. Prints the number of cases, how each was refused, and any failure
(a non-BitstreamError exception, or damaged bytes that decoded).

    .venv/bin/python bench/bench_fuzz.py [--cases 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections
import random
import time

import numpy as np
from skimage import data

from sprdiff import BitstreamError, SPRDiff


def mutate(rng: random.Random, records: list[bytes]) -> tuple[str, bytes]:
    rec = rng.choice(records)
    kind = rng.choice(["random", "flip", "truncate", "extend", "splice"])
    if kind == "random":
        return kind, rng.randbytes(rng.randint(0, 2 * len(rec)))
    if kind == "flip":
        b = bytearray(rec)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return kind, bytes(b)
    if kind == "truncate":
        return kind, rec[: rng.randrange(len(rec))]
    if kind == "extend":
        return kind, rec + rng.randbytes(rng.randint(1, 16))
    other = rng.choice(records)
    return kind, rec[: rng.randint(1, len(rec) - 1)] + other[rng.randint(1, len(other) - 1):]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = SPRDiff.from_pretrained("tiny")
    imgs = [np.ascontiguousarray(data.coffee()[:64, :96]), np.ascontiguousarray(data.astronaut()[:70, :64]),
            np.ascontiguousarray(data.chelsea()[:1, :40])]
    records = model.compress(imgs)
    rng = random.Random(args.seed)
    refused: collections.Counter = collections.Counter()
    failures = []
    slowest = 0.0
    start = time.perf_counter()
    i = 0
    while sum(refused.values()) + len(failures) < args.cases:
        i += 1
        kind, bad = mutate(rng, records)
        if bad in records:  # an undamaged record (e.g. a splice at matching offsets) is no test case
            continue
        t = time.perf_counter()
        try:
            model.decompress([bad])
            failures.append((i, kind, "decoded damaged bytes"))
        except BitstreamError as e:
            refused[e.status] += 1
        except Exception as e:  # noqa: BLE001 - any other exception is the failure we count
            failures.append((i, kind, f"{type(e).__name__}: {e}"))
        slowest = max(slowest, time.perf_counter() - t)
    wall = time.perf_counter() - start
    total = sum(refused.values()) + len(failures)
    print(f"cases: {total} in {wall:.1f} s (slowest {1000 * slowest:.2f} ms); refused by status: {dict(refused)}")
    print(f"failures: {len(failures)}")
    for f in failures[:20]:
        print("  ", f)


if __name__ == "__main__":
    main()
