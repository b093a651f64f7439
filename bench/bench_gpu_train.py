"""Training speed and memory on one device: seconds per step and peak memory of stages 1 and 2,
with activation checkpointing off and on, and a checkpoint written and resumed.

    .venv/bin/python bench/bench_gpu_train.py --model sd-turbo --device cuda     # bench/gpu_train_check.sh
    .venv/bin/python bench/bench_gpu_train.py --model tiny --device cpu --crop 64 --steps 3   # the path, on CPU

The model is built at full size from its preset's config with random weights (the FLOPs and memory
of the trained model; nothing is downloaded), the perceptual loss uses a random VGG16 of the same
architecture. On CUDA the forward runs under bf16 autocast and the frozen weights are held in bf16
(``bf16_on_gpu``). Each figure: the median step time after ``--warmup`` steps; peak memory is the
allocator's peak over the arm (CUDA) or the process's peak RSS so far (CPU, only ever grows).
The last part writes a checkpoint of stage 2, loads it into a fresh trainer and takes one more
step: the step count, optimizer state and schedule must carry over.
"""

from __future__ import annotations

import argparse
import copy
import gc
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from jobs.train_commands import DEFAULT_CONFIG
from pipeline.training.checkpoint import read_checkpoint, write_checkpoint
from pipeline.training.config import load_config
from pipeline.training.stage import StageTrainer
from sprdiff import SPRDiff
from sprdiff.presets import PRESETS


def build_model(name: str) -> SPRDiff:
    """Built once on the CPU (random init of 1.3 B parameters takes a while); each arm trains a copy."""
    torch.manual_seed(0)
    return SPRDiff.from_config(PRESETS[name]()) if name in PRESETS else SPRDiff.from_pretrained(name)


def peak_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_trainer(args, stage: int, checkpointing: bool) -> StageTrainer:
    config = load_config(DEFAULT_CONFIG).with_overrides({
        "vgg_weights": "random", "data.crop": args.crop, "data.batch_size": args.batch,
        "activation_checkpointing": checkpointing, "bf16_on_gpu": True})
    trainer = StageTrainer(copy.deepcopy(args.base_model), config, stage=stage, device=args.device)
    trainer.set_train_mode()
    return trainer


def run_arm(args, stage: int, checkpointing: bool) -> dict:
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)  # the same training noise in every arm: losses comparable on and off
    trainer = make_trainer(args, stage, checkpointing)
    batch = torch.rand(args.batch, 3, args.crop, args.crop, generator=torch.Generator().manual_seed(1))
    times, losses = [], []
    for step in range(args.warmup + args.steps):
        sync(args.device)
        t0 = time.perf_counter()
        metrics = trainer.train_step(batch)
        sync(args.device)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(metrics["loss"])
    result = {"stage": stage, "checkpointing": checkpointing, "s_per_step": statistics.median(times),
              "peak_mib": peak_mib(args.device), "last_loss": losses[-1],
              "trainable_m": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad) / 1e6}
    del trainer
    return result


def checkpoint_round_trip(args) -> str:
    trainer = make_trainer(args, stage=2, checkpointing=True)
    batch = torch.rand(args.batch, 3, args.crop, args.crop, generator=torch.Generator().manual_seed(2))
    for _ in range(2):
        trainer.train_step(batch)
    with tempfile.TemporaryDirectory(prefix="sprdiff-gpu-ckpt-") as tmp:
        t0 = time.perf_counter()
        write_checkpoint(Path(tmp), {"trainer": trainer.state_dict()})
        written_s = time.perf_counter() - t0
        size_mib = sum(f.stat().st_size for f in Path(tmp).iterdir()) / 2**20
        del trainer
        gc.collect()
        resumed = make_trainer(args, stage=2, checkpointing=True)
        t0 = time.perf_counter()
        resumed.load_state_dict(read_checkpoint(Path(tmp), device=args.device)["trainer"])
        loaded_s = time.perf_counter() - t0
    resumed.train_step(batch)
    ok = resumed.step == 3 and resumed.scheduler.last_epoch == 3
    return (f"checkpoint: {size_mib:,.0f} MiB written in {written_s:.1f} s, loaded in {loaded_s:.1f} s; "
            f"resumed at step 2 and stepped to {resumed.step}: {'ok' if ok else 'WRONG'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sd-turbo", help=f"a preset built from its config ({sorted(PRESETS)}) "
                        f"or a saved model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per arm (default: 20)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--stages", default="1,2")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        print(f"{name}, bf16 autocast, frozen weights in bf16")
    t0 = time.perf_counter()
    args.base_model = build_model(args.model)
    params = sum(p.numel() for p in args.base_model.parameters()) / 1e6
    print(f"{args.model} ({params:,.0f} M parameters, built in {time.perf_counter() - t0:.0f} s), crop {args.crop}, "
          f"batch {args.batch}, {args.steps} timed steps after {args.warmup}")
    print(f"{'stage':>5} {'ckpt':>5} {'s/step':>8} {'samples/s':>9} {'peak MiB':>9} {'trainable M':>11} {'loss':>8}")
    for stage in (int(s) for s in args.stages.split(",")):
        for checkpointing in (False, True):
            try:
                r = run_arm(args, stage, checkpointing)
            except torch.OutOfMemoryError as e:
                print(f"{stage:>5} {'on' if checkpointing else 'off':>5} out of memory: {str(e).splitlines()[0]}")
                continue
            print(f"{stage:>5} {'on' if checkpointing else 'off':>5} {r['s_per_step']:>8.3f} "
                  f"{args.batch / r['s_per_step']:>9.2f} {r['peak_mib']:>9,.0f} {r['trainable_m']:>11.1f} "
                  f"{r['last_loss']:>8.4f}", flush=True)
    print(checkpoint_round_trip(args))


if __name__ == "__main__":
    main()
