"""Training throughput (samples/s) of both stages with the ``tiny`` preset on CPU.

Side by side, in one process and one Ray session:
* ``loop``: the per-step function in a plain Python loop (1 process, 1 torch thread), no Ray;
* ``ray-1``, ``ray-2``: ``sprdiff train``'s Ray Train path (TorchTrainer, DDP over gloo) with 1 and
  2 workers of 1 CPU each.
Samples/s counts every worker's samples, from the wall-clock time between the end of the
warm-up steps and the last step (data loading included, start-up and checkpoints not).

    .venv/bin/python bench/bench_training.py [--crop 128] [--steps 30] [--warmup 5]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch
from PIL import Image
from skimage import data

from jobs.train_commands import DEFAULT_CONFIG
from pipeline.shards import make_shards
from pipeline.training.config import load_config
from pipeline.training.data import crop_batches, list_shards
from pipeline.training.loop import RunSpec, run_training
from pipeline.training.stage import StageTrainer
from sprdiff import SPRDiff

MMAP_THRESHOLD, TRIM_THRESHOLD = 33554432, 268435456


def raise_malloc_thresholds() -> None:
    """RAY_NOTES: glibc's default malloc thresholds cost torch on CPU ~40% in page faults. Raised here
    with mallopt and, through the environment ray.init passes on, in every Ray worker: both arms alike."""
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(TRIM_THRESHOLD))
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, TRIM_THRESHOLD)  # M_TRIM_THRESHOLD


def make_corpus(root: Path, crop: int) -> str:
    images = root / "images"
    images.mkdir(parents=True)
    for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry"):
        Image.fromarray(getattr(data, name)()).save(images / f"{name}.png")
    make_shards(str(images), str(root / "shards"), crop=crop, per_shard=3, log=lambda _: None)
    return str(root / "shards")


def throughput(times: list[float], samples_per_step: int) -> float:
    return samples_per_step * (len(times) - 1) / (times[-1] - times[0])


def loop_arm(config, stage: int, shards: str, steps: int, warmup: int) -> float:
    torch.set_num_threads(1)
    trainer = StageTrainer(SPRDiff.from_pretrained("tiny"), config, stage)
    trainer.set_train_mode()
    batches = crop_batches(list_shards(shards), config.data.crop, config.data.batch_size, 0, 1, config.seed)
    times = []
    for _ in range(steps):
        trainer.train_step(next(batches).images)
        times.append(time.perf_counter())
    return throughput(times[warmup - 1:], config.data.batch_size)


def ray_arm(config, stage: int, shards: str, steps: int, warmup: int, workers: int, output: Path) -> float:
    spec = RunSpec(stage=stage, data_uri=shards, output_uri=str(output), model="tiny",
                   lambda_rate=config.stage(stage).lambda_rate, steps=steps, config=config.to_dict())
    run_training(spec, workers=workers)
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] for r in records[warmup - 1:-1]]  # the last step also wrote the final checkpoint
    return throughput(times, workers * config.data.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1, help="runs per arm; the median is printed")
    args = parser.parse_args()

    raise_malloc_thresholds()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    config = load_config(DEFAULT_CONFIG).with_overrides({
        "vgg_weights": "random", "data.crop": args.crop, "data.loader_workers": 0, "checkpoint_every": 10_000,
        "progress_every": 10_000})
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp)
        shards = make_corpus(root, args.crop)
        ray_tmp = tempfile.mkdtemp(prefix="rb-", dir="/tmp")  # short: Ray's socket paths have a length limit
        ray.init(num_cpus=2, _temp_dir=ray_tmp, include_dashboard=False, log_to_driver=False)
        results = {}
        for stage in (1, 2):
            arms = {}
            for workers in (1, 2):
                arms[f"ray-{workers}"] = (lambda run, w=workers, s=stage: ray_arm(
                    config, s, shards, args.steps, args.warmup, w, root / f"stage{s}-workers{w}-run{run}"))
            arms["loop"] = lambda run, s=stage: loop_arm(config, s, shards, args.steps, args.warmup)
            for name, arm in arms.items():
                values = [arm(run) for run in range(args.repeats)]
                results[(stage, name)] = statistics.median(values)
                print(f"stage {stage}  {name:6s}  {results[(stage, name)]:.2f} samples/s  "
                      f"(runs: {', '.join(f'{v:.2f}' for v in values)})", flush=True)
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    print(f"\ntiny, {args.crop}x{args.crop} crops, batch 1 per worker, {args.steps} steps "
          f"({args.warmup} warm-up), {os.cpu_count()} CPUs, samples/s:")
    print("stage  loop (no Ray)  Ray 1 worker  Ray 2 workers")
    for stage in (1, 2):
        print(f"{stage:5d}  {results[(stage, 'loop')]:13.2f}  {results[(stage, 'ray-1')]:12.2f}  "
              f"{results[(stage, 'ray-2')]:13.2f}")


if __name__ == "__main__":
    main()
