"""Kill a running ``sprdiff encode-job`` (SIGKILL to the whole process group), rerun it, check exactly-once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import boto3
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from pipeline_testing import png_bytes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _images(sample_images) -> dict[str, np.ndarray]:
    """12 photos of 0.1-0.25 MP: each takes the tiny model long enough to kill the job part-way."""
    out = {}
    for i, (name, img) in enumerate(sample_images.items()):
        for j, view in enumerate((img, img[::-1], img[:, ::-1], img[::-1, ::-1])):
            out[f"{name}-{j}"] = np.ascontiguousarray(view[: 320 + 32 * i, : 400])
    return out


def _parts(s3: s3fs.S3FileSystem, prefix: str) -> list[str]:
    s3.invalidate_cache()
    return sorted(s3.glob(f"{prefix}/part-*.parquet"))


def _kill_tree(proc: subprocess.Popen, family: list[psutil.Process]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group has already exited
    proc.wait(timeout=30)
    for p in family:  # Ray processes that left the group: end them by pid
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)


@pytest.fixture
def ray_dir():
    """A temp dir for the local Ray of the commands under test, removed afterwards."""
    path = f"/tmp/sprdiff-resume-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def corpus(s3_endpoint, sample_images) -> tuple[str, dict[str, np.ndarray]]:
    """12 photos and one broken PNG in a fresh bucket: ``(s3://bucket/in, images)``."""
    bucket = f"resume-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    s3 = s3fs.S3FileSystem(skip_instance_cache=True)
    images = _images(sample_images)
    for key, pixels in images.items():
        s3.pipe_file(f"{bucket}/in/{key}.png", png_bytes(pixels))
    s3.pipe_file(f"{bucket}/in/zz-broken.png", b"\x89PNG\r\n\x1a\n broken")
    return f"s3://{bucket}/in", images


def _command(source: str, archive: str, ray_dir: str) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", "encode-job", "--input", source, "--output", archive,
            "--shard-size", "2", "--num-cpus", "2", "--actors", "1", "--ray-temp-dir", ray_dir]


def _start_and_wait_for_a_part(command: list[str], log_path, archive: str) -> tuple[subprocess.Popen, list]:
    """Start the CLI in its own process group; return once its first part file exists."""
    s3 = s3fs.S3FileSystem(skip_instance_cache=True)
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(command, cwd=REPO, env={**os.environ, "RAY_AUTH_MODE": "disabled"}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    family: list[psutil.Process] = []
    deadline = time.monotonic() + 300
    try:
        while not _parts(s3, archive):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("no part was written: " + open(log_path).read()[-3000:])
            family = psutil.Process(proc.pid).children(recursive=True)
            time.sleep(0.05)
        family = psutil.Process(proc.pid).children(recursive=True)
    except BaseException:
        _kill_tree(proc, family)
        raise
    return proc, family


def _check_exactly_once(archive: str, images: dict[str, np.ndarray], tiny_model, total_shards: int) -> dict:
    s3 = s3fs.S3FileSystem(skip_instance_cache=True)
    parts = _parts(s3, archive.removeprefix("s3://"))
    assert len(parts) == total_shards
    table = pa.concat_tables([pq.read_table(p, filesystem=s3) for p in parts])
    assert sorted(table.column("key").to_pylist()) == sorted([*images, "zz-broken"])  # every key, exactly once
    rows = {r["key"]: r for r in table.to_pylist()}
    assert rows["zz-broken"]["status"] in ("truncated", "unreadable", "not_image")
    for key, pixels in images.items():  # identical to an undisturbed encode
        assert rows[key]["bitstream"] == tiny_model.compress([pixels])[0], key
    stats = json.loads(s3.cat_file(archive.removeprefix("s3://") + "/_stats.json"))
    assert stats["rows"] == len(images) + 1
    return stats


def test_a_killed_encode_job_resumes_exactly_once(corpus, tiny_model, tmp_path, ray_dir):
    source, images = corpus
    archive = source.replace("/in", "/killed-driver")
    total_shards = (len(images) + 1 + 1) // 2
    command = _command(source, archive, ray_dir)
    proc, family = _start_and_wait_for_a_part(command, tmp_path / "killed.log", archive.removeprefix("s3://"))
    _kill_tree(proc, family)  # SIGKILL to the driver's group, then to every Ray process it had started
    s3 = s3fs.S3FileSystem(skip_instance_cache=True)
    killed_parts = _parts(s3, archive.removeprefix("s3://"))
    assert 0 < len(killed_parts) < total_shards, f"the kill came too late: {len(killed_parts)} parts"
    assert not [p for p in s3.find(archive.removeprefix("s3://")) if "tmp" in p.rsplit("/", 1)[1]]
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family)

    done = subprocess.run(command, cwd=REPO, env={**os.environ, "RAY_AUTH_MODE": "disabled"}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "already done" in done.stdout
    stats = _check_exactly_once(archive, images, tiny_model, total_shards)
    assert stats["run"]["shards_done_before"] == len(killed_parts)
    assert stats["run"]["shards_written"] == total_shards - len(killed_parts)


@pytest.mark.slow
def test_killing_the_codec_actor_loses_and_duplicates_nothing(corpus, tiny_model, tmp_path, ray_dir):
    source, images = corpus
    archive = source.replace("/in", "/killed-actor")
    total_shards = (len(images) + 1 + 1) // 2
    command = _command(source, archive, ray_dir)
    proc, family = _start_and_wait_for_a_part(command, tmp_path / "actor.log", archive.removeprefix("s3://"))
    try:
        actors = [p for p in family if "EncodeImages" in " ".join(p.cmdline())]
        assert actors, [p.cmdline() for p in family]
        for p in actors:
            p.kill()
        rc = proc.wait(timeout=600)  # Ray restarts the actor and retries the lost work, or the run fails
    finally:
        _kill_tree(proc, family)
    if rc != 0:
        done = subprocess.run(command, cwd=REPO, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _check_exactly_once(archive, images, tiny_model, total_shards)
