"""Why a codec server codes on one thread: CPU per image of a Ray actor coding on whichever of its
threads Ray picks, against the same actor handing every call to one coder thread, and a plain actor.

    .venv/bin/python bench/bench_actor_threads.py [--model tiny] [--size 512] [--images 32] [--rounds 2]

A codec server (``pipeline.codec_service.CodecServer``) is a threaded actor: it must answer
``pending`` while it codes. Ray runs a threaded actor's calls on any free thread of its pool, so
without care each batch is coded on another thread. Three arms, each a fresh actor with one torch
thread and the jobs' malloc settings, ``--images`` one-image ``compress`` calls with two in flight
(as a job keeps them), side information off, alternated ``--rounds`` times:

- plain actor: Ray's default, one thread;
- threaded, any thread: ``max_concurrency`` 4, coding under a lock on the calling thread;
- threaded, one coder thread: ``max_concurrency`` 4, each call handed to a one-thread executor
  (what ``CodecServer`` does).

Prints wall and thread CPU ms per image, the coding thread's minor page faults per image and how
many threads coded. ``--arena-max`` sets ``MALLOC_ARENA_MAX`` in the actors.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pipeline.ray_runner import MALLOC_ENV as JOB_MALLOC_ENV

# The jobs' malloc thresholds; the arena count is what this bench varies (--arena-max), glibc's by default.
MALLOC_ENV = {**{k: v for k, v in JOB_MALLOC_ENV.items() if k != "MALLOC_ARENA_MAX"}, "OMP_NUM_THREADS": "1"}


class Coder:
    def __init__(self, model: str, size: int):
        import torch

        from sprdiff import SPRDiff

        torch.set_num_threads(1)
        self.model = SPRDiff.from_pretrained(model)
        rng = np.random.default_rng(0)
        self.images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(8)]
        self.lock = threading.Lock()
        self.coder = ThreadPoolExecutor(max_workers=1)

    def _code(self, i: int) -> tuple[float, float, int, int]:
        wall, cpu = time.perf_counter(), time.thread_time()
        faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        self.model.compress([self.images[i % len(self.images)]], colour_correction=False)
        return (time.perf_counter() - wall, time.thread_time() - cpu, threading.get_ident(),
                resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults)

    def on_calling_thread(self, i: int) -> tuple[float, float, int, int]:
        with self.lock:
            return self._code(i)

    def on_coder_thread(self, i: int) -> tuple[float, float, int, int]:
        return self.coder.submit(self._code, i).result()


ARMS = (("plain actor", {}, "on_calling_thread"),
        ("threaded, any thread", {"max_concurrency": 4}, "on_calling_thread"),
        ("threaded, one coder thread", {"max_concurrency": 4}, "on_coder_thread"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--arena-max", type=int, help="MALLOC_ARENA_MAX in the actors (default: glibc's)")
    args = parser.parse_args()
    env = {**MALLOC_ENV, **({"MALLOC_ARENA_MAX": str(args.arena_max)} if args.arena_max else {})}
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="bench-threads-"),
             runtime_env={"env_vars": env})
    print(f"model {args.model}, {args.size}x{args.size}, {args.images} calls per arm and round, two in flight; "
          f"actors' malloc settings {env}")
    print(f"{'arm':28} {'round':>5} {'wall ms/img':>12} {'cpu ms/img':>11} {'page faults/img':>16} {'threads':>8}")
    for round_ in range(1, args.rounds + 1):
        for name, options, method in ARMS:
            actor = ray.remote(num_cpus=1, **options)(Coder).remote(args.model, args.size)
            call = getattr(actor, method)
            ray.get([call.remote(i) for i in range(4)])  # warm-up: model load, first calls on each thread
            results = []
            pending = [call.remote(0), call.remote(1)]
            for i in range(2, args.images + 2):
                done, pending = ray.wait(pending, num_returns=1)
                results.append(ray.get(done[0]))
                if i < args.images:
                    pending.append(call.remote(i))
            results += ray.get(pending)
            wall, cpu = (1000 * float(np.mean([r[k] for r in results])) for k in (0, 1))
            faults = float(np.mean([r[3] for r in results]))
            print(f"{name:28} {round_:>5} {wall:>12.0f} {cpu:>11.0f} {faults:>16.0f} {len({r[2] for r in results}):>8}",
                  flush=True)
            ray.kill(actor)
            time.sleep(2)  # its process gone before the next arm starts
    ray.shutdown()


if __name__ == "__main__":
    main()
