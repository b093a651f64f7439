"""Peak memory of stage-1 training steps with and without activation checkpointing, on CPU.

Each arm runs in its own process (this script with ``--arm off|on``) so its peak RSS
(``ru_maxrss``) is its own. Both build the same model and train the same steps from the same
seed on the same crops of skimage's photos; the table shows the peak RSS, the part of it the
training steps added above the RSS after the trainer was built, s/step and the losses.

About 1 GiB of the RSS is the imported libraries (torch alone ~500 MiB), the same in both arms;
the default 512x512 crops (the paper's) make the steps' part the larger one, as it is on a GPU.
The arms run with glibc's mmap threshold fixed at its initial 128 KiB, so tensors of that size and
up are mapped and unmapped as they come and go and the RSS peak follows the live tensors. With
glibc's default (a threshold that grows up to 32 MiB after each large free, ``--glibc-default``)
the peak also holds heap the allocator kept after frees, more so with the recomputation's
interleaved allocations.

    .venv/bin/python bench/bench_train_memory.py [--preset demo-init] [--crop 512] [--batch 2] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage import data

from jobs.train_commands import DEFAULT_CONFIG
from pipeline.training.config import load_config
from pipeline.training.stage import StageTrainer
from sprdiff import SPRDiff

DEMO_CONFIG = Path(DEFAULT_CONFIG).parent / "demo.json"  # no VGG, UNet base trains (no pretrained prior)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
MMAP_THRESHOLD = 131072  # glibc's initial M_MMAP_THRESHOLD, kept fixed (see the module docstring)


def rss_mib() -> float:
    """Current resident set size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def crops(steps: int, batch: int, size: int, seed: int) -> list[torch.Tensor]:
    """``steps`` batches of (batch, 3, size, size) random crops of skimage's photos, in [0, 1]."""
    rng = np.random.default_rng(seed)
    photos = [getattr(data, name)() for name in PHOTOS]
    photos = [p for p in photos if min(p.shape[:2]) >= size]
    if not photos:
        raise SystemExit(f"--crop {size} is larger than every photo ({', '.join(PHOTOS)})")
    batches = []
    for _ in range(steps):
        items = []
        for _ in range(batch):
            photo = photos[rng.integers(len(photos))]
            top, left = (rng.integers(photo.shape[i] - size + 1) for i in (0, 1))
            items.append(torch.from_numpy(np.ascontiguousarray(photo[top:top + size, left:left + size])))
        batches.append(torch.stack(items).permute(0, 3, 1, 2).float() / 255)
    return batches


def run_arm(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    config = load_config(DEFAULT_CONFIG, DEMO_CONFIG).with_overrides({
        "vgg_weights": "random", "data.crop": args.crop, "data.batch_size": args.batch,
        "activation_checkpointing": args.arm == "on"})
    batches = crops(args.steps, args.batch, args.crop, config.seed)
    torch.manual_seed(config.seed)
    trainer = StageTrainer(SPRDiff.from_pretrained(args.preset), config, stage=1)
    trainer.set_train_mode()
    baseline = rss_mib()
    losses, seconds = [], []
    for batch in batches:
        started = time.perf_counter()
        losses.append(trainer.train_step(batch)["loss"])
        seconds.append(time.perf_counter() - started)
    peak = peak_rss_mib()
    return {"arm": args.arm, "peak_mib": peak, "baseline_mib": baseline, "step_peak_mib": peak - baseline,
            "s_per_step": statistics.median(seconds), "losses": losses,
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "trainable": sum(p.numel() for p in trainer.model.trainable_parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="demo-init")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--glibc-default", action="store_true", help="leave glibc's malloc thresholds as they are")
    parser.add_argument("--arm", choices=("off", "on"), help="run one arm here and print its JSON (internal)")
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args)))
        return

    env = dict(os.environ)
    if not args.glibc_default:
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)  # read by glibc when the arm's process starts
    results = {}
    for arm in ("off", "on"):
        command = [sys.executable, __file__, "--arm", arm, "--preset", args.preset, "--crop", str(args.crop),
                   "--batch", str(args.batch), "--steps", str(args.steps), "--threads", str(args.threads)]
        done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
        results[arm] = json.loads(done.stdout.strip().splitlines()[-1])
    off, on = results["off"], results["on"]
    print(f"{args.preset}, stage 1 (jobs/configs/demo.json over the defaults), {args.crop}x{args.crop} crops, "
          f"batch {args.batch}, {args.steps} steps, {args.threads} torch threads, "
          f"{off['parameters'] / 1e6:.2f}M parameters ({off['trainable'] / 1e6:.2f}M trained), malloc: "
          f"{'glibc default' if args.glibc_default else f'mmap threshold fixed at {MMAP_THRESHOLD}'}")
    print("checkpointing  peak RSS MiB  steps above baseline MiB  baseline MiB  s/step  losses")
    for r in (off, on):
        print(f"{r['arm']:13s}  {r['peak_mib']:12.0f}  {r['step_peak_mib']:24.0f}  {r['baseline_mib']:12.0f}  "
              f"{r['s_per_step']:6.2f}  {' '.join(f'{v:.6f}' for v in r['losses'])}")
    difference = max(abs(a - b) / abs(a) for a, b in zip(off["losses"], on["losses"], strict=True))
    print(f"peak RSS {100 * (1 - on['peak_mib'] / off['peak_mib']):.1f} % lower with checkpointing; "
          f"the steps' part {100 * (1 - on['step_peak_mib'] / off['step_peak_mib']):.1f} % lower; "
          f"max relative loss difference {difference:.2e}")


if __name__ == "__main__":
    main()
