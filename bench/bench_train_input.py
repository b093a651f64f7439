"""Does the input keep up? Samples/s of the training input alone against samples/s of a training step.

Input: ``crop_batches`` (the per-worker stream of ``sprdiff train``: tar streaming, PNG/JPEG decoding,
random 256x256 crops, batch 2) over shards that ``make-shards`` makes from the photo folder, read from
local disk and from S3 (a local ``moto_server``, when installed), in the training process (0 loader
processes) and in 2 DataLoader processes. Training: one stage-1 update (``StageTrainer.train_step``,
random VGG16 for the perceptual loss) of the ``tiny`` and ``demo-init`` presets on a fixed batch of
the same shape, so that only the step is timed. Each Ray worker runs one such input stream and one
such step; the ratio input/step says how many times over the input could feed the step.

    .venv/bin/python bench/bench_train_input.py [--photos /work/shared/data/photos] [--batches 40] [--steps 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from jobs.train_commands import DEFAULT_CONFIG
from pipeline.shards import make_shards
from pipeline.training.config import load_config
from pipeline.training.data import crop_batches, list_shards
from pipeline.training.stage import StageTrainer
from sprdiff import SPRDiff

PHOTOS = "/work/shared/data/photos"  # read in place (shards go to a temp dir); never copied into the repo
CROP, BATCH = 256, 2


def input_rate(shards: list[str], loader_workers: int, batches: int) -> float:
    """Samples/s of the input stream, from the first batch (loader start-up excluded) to the last."""
    stream = crop_batches(shards, CROP, BATCH, rank=0, world_size=1, seed=0, loader_workers=loader_workers,
                          shuffle_buffer=16)
    next(stream)
    started = time.perf_counter()
    for _ in range(batches):
        batch = next(stream)
    elapsed = time.perf_counter() - started
    assert batch.images.shape == (BATCH, 3, CROP, CROP)
    del stream  # stops the loader processes
    return batches * BATCH / elapsed


def step_rate(preset: str, images: torch.Tensor, steps: int, warmup: int = 2) -> float:
    config = load_config(DEFAULT_CONFIG).with_overrides({"vgg_weights": "random", "data.crop": CROP,
                                                         "data.batch_size": BATCH})
    trainer = StageTrainer(SPRDiff.from_pretrained(preset), config, 1)
    trainer.set_train_mode()
    for _ in range(warmup):
        trainer.train_step(images)
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(images)
    return steps * BATCH / (time.perf_counter() - started)


@contextlib.contextmanager
def moto_s3():
    """A moto_server on a free 127.0.0.1 port with the AWS variables pointing at it (None if moto is not
    installed); DataLoader processes inherit the variables."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if exe is None:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    saved = dict(os.environ)
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {endpoint}") from None
                time.sleep(0.1)
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        yield "s3://bench"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        os.environ.clear()
        os.environ.update(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", default=PHOTOS, help="image folder the shards are made from")
    parser.add_argument("--batches", type=int, default=40, help="input batches timed per arm")
    parser.add_argument("--steps", type=int, default=5, help="training steps timed per preset (after 2 warm-up)")
    args = parser.parse_args()
    if not Path(args.photos).is_dir():
        print(f"skipped: no photo folder at {args.photos} (pass --photos DIR)")
        return

    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-input-") as tmp, moto_s3() as bucket:
        stores = {"local": str(Path(tmp) / "shards")}
        if bucket is not None:
            stores["s3 (moto)"] = f"{bucket}/shards"
        for uri in stores.values():
            stats = make_shards(args.photos, uri, crop=CROP, per_shard=8, threads=2, log=lambda _: None)
        print(f"{stats.written} photos from {args.photos} in {len(stats.shards)} shards; "
              f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads", flush=True)
        for store, uri in stores.items():
            shards = list_shards(uri)
            for workers in (0, 2):
                name = f"input, {store}, {workers} loader processes"
                rates[name] = input_rate(shards, workers, args.batches)
                print(f"{name:42s} {rates[name]:8.2f} samples/s", flush=True)
        images = next(crop_batches(list_shards(stores["local"]), CROP, BATCH, 0, 1, seed=0)).images
    for preset in ("tiny", "demo-init"):
        name = f"train step, {preset}"
        rates[name] = step_rate(preset, images, args.steps)
        print(f"{name:42s} {rates[name]:8.2f} samples/s", flush=True)

    print(f"\n{CROP}x{CROP} crops, batch {BATCH}; input samples/s / training-step samples/s:")
    inputs = [k for k in rates if k.startswith("input")]
    print(f"{'':42s} {'samples/s':>9s}  {'/ tiny':>8s}  {'/ demo-init':>11s}")
    for name in inputs:
        print(f"{name:42s} {rates[name]:9.2f}  {rates[name] / rates['train step, tiny']:8.1f}  "
              f"{rates[name] / rates['train step, demo-init']:11.1f}")
    for preset in ("tiny", "demo-init"):
        print(f"{'train step, ' + preset:42s} {rates['train step, ' + preset]:9.2f}")


if __name__ == "__main__":
    main()
