"""A run killed (SIGKILL of its whole process group) after a checkpoint continues from that checkpoint:
the same weights, optimizer and schedule state, and the same samples in the same order as a run
that was never killed.

One killed-and-resumed run serves the module's tests (each CLI run starts a local Ray, the slow part)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from process_tree import descendants, kill_tree

from pipeline.shards import make_shards
from pipeline.training.checkpoint import read_checkpoint
from sprdiff.model_pointer import read_pointer

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train lists a checkpoint here once it is complete
KEYS = [f"img{i}" for i in range(6)]  # the corpus: 2 shards of 3, so each of the 2 readers has 3 samples an epoch
STEPS_PER_EPOCH = 3  # 2 workers x 1 loader process, batch 1: checkpoints every 2 steps fall inside epochs


@pytest.fixture(scope="module")
def ray_env():
    temp_dir = tempfile.mkdtemp(prefix="rr-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a private local Ray per run
    yield {**env, "RAY_TMPDIR": temp_dir, "RAY_AUTH_MODE": "disabled"}
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Shards of KEYS and a config with one DataLoader process per worker and the sample log on."""
    root = tmp_path_factory.mktemp("resume")
    images = root / "images"
    images.mkdir()
    for i, key in enumerate(KEYS):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (72, 80, 3), dtype=np.uint8)).save(
            images / f"{key}.png")
    make_shards(str(images), str(root / "shards"), crop=64, per_shard=3, threads=2, log=lambda _: None)
    (root / "config.json").write_text(json.dumps({
        "vgg_weights": "random", "discriminator": {"channels": 16}, "progress_every": 1,
        # keep every checkpoint: the tests read the one the run resumed from, which the default (keep
        # the last 3) deletes when the kill landed while a second one was being written (total = 8)
        "checkpoints_to_keep": 100,
        "data": {"crop": 64, "batch_size": 1, "loader_workers": 1, "shuffle_buffer": 4, "sample_log": True}}))
    return root


def train_command(work: Path, output: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", "train", "--stage", "1", "--data", str(work / "shards"), "--output",
            str(output), "--model", "tiny", "--config", str(work / "config.json"), "--workers", "2", "--steps",
            str(steps), "--checkpoint-every", "2", *extra]


@pytest.fixture(scope="module")
def resumed(work, ray_env) -> dict:
    """Start a run, SIGKILL it with every Ray process once its first checkpoint is listed, resume it for
    4 more steps than its last checkpoint. Returns the output, the checkpoints the killed run wrote,
    the step total and the resumed run's output text."""
    output = work / "run"
    log_path = work / "killed.log"
    log = log_path.open("w")
    run = subprocess.Popen(train_command(work, output, 10_000), cwd=REPO, env=ray_env, stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    family = []
    try:
        deadline = time.monotonic() + 400
        while not (output / "checkpoints" / SNAPSHOT).exists():
            assert run.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 400 s"
            family = descendants(run)
            time.sleep(0.2)
        family = descendants(run)
    finally:
        # the driver's group and every Ray process it started, no clean-up: a Ray Train controller left
        # alive would otherwise go on writing checkpoints after the kill
        kill_tree(run, family)
        log.close()
    written = sorted(int(p.name.split("-")[1]) for p in (output / "checkpoints").glob("step-*"))
    assert written and max(written) < 10_000
    total = max(written) + 4

    done = subprocess.run(train_command(work, output, total, "--resume"), cwd=REPO, env=ray_env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"output": output, "written": written, "total": total, "text": done.stdout + done.stderr}


def sample_keys(output: Path, rank: int) -> list[list[str]]:
    """The keys each step of ``rank`` trained on, checking that every step is there once, in order."""
    lines = [json.loads(line) for line in (output / "samples" / f"rank-{rank:03d}.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, len(lines) + 1))
    return [line["keys"] for line in lines]


def test_killed_run_resumes_from_its_last_checkpoint(resumed):
    output, written, total, text = resumed["output"], resumed["written"], resumed["total"], resumed["text"]
    match = re.search(r"resumed from step (\d+)", text)
    assert match, text[-3000:]
    start = int(match.group(1))
    assert start >= 2 and start % 2 == 0 and start in written
    assert "Failed to query Ray Train Controller" not in text  # start_ray's quiet hook

    steps = [json.loads(line)["step"] for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, total + 1))  # the killed run's steps after the checkpoint were dropped
    final = read_checkpoint(output / "checkpoints" / f"step-{total:06d}")["trainer"]
    assert final["step"] == total
    assert final["scheduler"]["last_epoch"] == total  # scheduler state carried over, not restarted
    assert int(final["optimizer"]["state"][0]["step"]) == total  # so was Adam's step count
    pointer = read_pointer(str(output / "model"))
    assert pointer is not None and (Path(pointer.target) / "model.safetensors").is_file()


def test_resumed_run_trains_on_the_samples_of_an_uninterrupted_one(resumed, work, ray_env):
    output, total = resumed["output"], resumed["total"]
    start = int(re.search(r"resumed from step (\d+)", resumed["text"]).group(1))
    assert start % STEPS_PER_EPOCH, "the kill should land inside an epoch"  # 2 or 4, never 6, with a first snapshot

    # the checkpoint holds both workers' reader positions (rank 1's gathered into rank 0's file)
    position = read_checkpoint(output / "checkpoints" / f"step-{start:06d}")["data"]
    assert (position["world_size"], position["loader_workers"], position["batches"]) == (2, 1, start)
    assert [(r["epoch"], r["next_index"]) for r in position["readers"]] == [divmod(start, STEPS_PER_EPOCH)] * 2

    straight = work / "uninterrupted"
    done = subprocess.run(train_command(work, straight, total), cwd=REPO, env=ray_env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    per_rank = {rank: sample_keys(output, rank) for rank in (0, 1)}
    for rank, steps in per_rank.items():
        assert len(steps) == total
        assert steps == sample_keys(straight, rank), f"rank {rank}: the resumed run saw other samples"
    for first in range(0, total - STEPS_PER_EPOCH + 1, STEPS_PER_EPOCH):  # every epoch: each sample once
        epoch = [key for rank in (0, 1) for keys in per_rank[rank][first:first + STEPS_PER_EPOCH] for key in keys]
        assert sorted(epoch) == KEYS, f"steps {first + 1}..{first + STEPS_PER_EPOCH}"
    skipped = [json.loads(line)["skipped_samples"] for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert skipped == [0] * total
