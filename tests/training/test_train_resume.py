"""A run killed (SIGKILL of its whole process group) after a checkpoint continues from that checkpoint."""

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

import pytest
from process_tree import descendants, kill_tree

from pipeline.training.checkpoint import read_checkpoint
from sprdiff.model_pointer import read_pointer

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train lists a checkpoint here once it is complete


@pytest.fixture
def ray_env():
    temp_dir = tempfile.mkdtemp(prefix="rr-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a private local Ray per run
    yield {**env, "RAY_TMPDIR": temp_dir, "RAY_AUTH_MODE": "disabled"}
    shutil.rmtree(temp_dir, ignore_errors=True)


def train_command(shards: str, output: Path, config: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", "train", "--stage", "1", "--data", shards, "--output", str(output),
            "--model", "tiny", "--config", str(config), "--workers", "2", "--steps", str(steps),
            "--checkpoint-every", "2", *extra]


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, local_shards, fast_config_file, ray_env):
    output = tmp_path / "run"
    log = (tmp_path / "killed.log").open("w")
    run = subprocess.Popen(train_command(local_shards, output, fast_config_file, 10_000), cwd=REPO, env=ray_env,
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    family = []
    try:
        deadline = time.monotonic() + 400
        while not (output / "checkpoints" / SNAPSHOT).exists():
            assert run.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
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

    resumed = subprocess.run(train_command(local_shards, output, fast_config_file, total, "--resume"), cwd=REPO,
                             env=ray_env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    match = re.search(r"resumed from step (\d+)", resumed.stdout + resumed.stderr)
    assert match, resumed.stdout[-3000:]
    start = int(match.group(1))
    assert start >= 2 and start % 2 == 0 and start in written
    assert "Failed to query Ray Train Controller" not in resumed.stdout + resumed.stderr  # start_ray's quiet hook

    steps = [json.loads(line)["step"] for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, total + 1))  # the killed run's steps after the checkpoint were dropped
    final = read_checkpoint(output / "checkpoints" / f"step-{total:06d}")["trainer"]
    assert final["step"] == total
    assert final["scheduler"]["last_epoch"] == total  # scheduler state carried over, not restarted
    assert int(final["optimizer"]["state"][0]["step"]) == total  # so was Adam's step count
    pointer = read_pointer(str(output / "model"))
    assert pointer is not None and (Path(pointer.target) / "model.safetensors").is_file()
