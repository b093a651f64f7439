"""Kill a running ``sprdiff encode-job`` (SIGKILL to the whole process group, or to its codec actors
several times and then to the driver), rerun it, check exactly-once and byte-identical bitstreams,
and, from the S3 server's own request log, that the rerun read the stored plan instead of listing
the input again.

The actor-kill test is marked ``slow``: ``.ci/run`` runs it as a second pytest call."""

from __future__ import annotations

import json
import os
import re
import shutil
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
from process_tree import descendants, kill_tree

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


@pytest.fixture
def ray_dir():
    """A temp dir for the local Ray of the commands under test, removed afterwards."""
    path = f"/tmp/sprdiff-resume-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _upload(prefix: str, images: dict[str, np.ndarray]) -> str:
    s3 = s3fs.S3FileSystem(skip_instance_cache=True)
    for key, pixels in images.items():
        s3.pipe_file(f"{prefix}/{key}.png", png_bytes(pixels))
    s3.pipe_file(f"{prefix}/zz-broken.png", b"\x89PNG\r\n\x1a\n broken")
    return f"s3://{prefix}"


@pytest.fixture(scope="module")
def bucket(recording_s3) -> str:
    """A bucket on the recording moto_server (the commands under test inherit its endpoint)."""
    name = f"resume-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=recording_s3.endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def corpus(bucket, sample_images) -> tuple[str, dict[str, np.ndarray]]:
    """12 photos and one broken PNG in a fresh bucket: ``(s3://bucket/in, images)``."""
    images = _images(sample_images)
    return _upload(f"{bucket}/in", images), images


def _command(source: str, archive: str, ray_dir: str, shard_size: int = 2) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", "encode-job", "--input", source, "--output", archive,
            "--model", "tiny", "--shard-size", str(shard_size), "--num-cpus", "2", "--actors", "1",
            "--ray-temp-dir", ray_dir]


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
            family = descendants(proc)
            time.sleep(0.05)
        family = descendants(proc)
    except BaseException:
        kill_tree(proc, family)
        raise
    return proc, family


ARCHIVE_FILE = re.compile(r"^(part-\d{5}\.parquet|_parts/part-\d{5}\.json|_plan/(plan\.json|shards\.parquet|"
                          r"items-\d{5}\.parquet)|_index/parts\.parquet|_job\.json|_stats\.json|"
                          r"_models/[0-9a-f]{64}/(config\.json|model\.safetensors|README\.md))$")


def _check_only_whole_files(s3: s3fs.S3FileSystem, archive: str) -> None:
    """After a kill: nothing but the archive's own files, and every part present whole (its footer reads
    and holds the rows it says)."""
    root = archive.removeprefix("s3://")
    s3.invalidate_cache()
    names = [p[len(root) + 1:] for p in s3.find(root)]
    assert names and all(ARCHIVE_FILE.match(n) for n in names), names
    for name in names:
        if name.startswith("part-"):
            meta = pq.ParquetFile(s3.open(f"{root}/{name}")).metadata
            assert meta.num_rows == int(meta.metadata[b"sprdiff.rows"]), name


def _listings_of(requests: list[dict], bucket: str, prefix: str) -> list[dict]:
    return [r for r in requests if r["method"] == "GET" and r["path"].strip("/") == bucket
            and "list-type" in r["query"] and r["query"].get("prefix", "").startswith(prefix)]


def _check_exactly_once(archive: str, images: dict[str, np.ndarray], tiny_model, total_shards: int) -> dict:
    s3 = s3fs.S3FileSystem(skip_instance_cache=True)
    parts = _parts(s3, archive.removeprefix("s3://"))
    assert len(parts) == total_shards
    table = pa.concat_tables([pq.read_table(p, filesystem=s3) for p in parts])
    assert sorted(table.column("key").to_pylist()) == sorted([*images, "zz-broken"])  # every key, exactly once
    rows = {r["key"]: r for r in table.to_pylist()}
    assert rows["zz-broken"]["status"] in ("truncated", "unreadable", "not_image")
    for key, pixels in images.items():  # identical to an undisturbed encode
        assert rows[key]["record"] == tiny_model.compress([pixels])[0], key
    stats = json.loads(s3.cat_file(archive.removeprefix("s3://") + "/_stats.json"))
    assert stats["rows"] == len(images) + 1
    return stats


def test_a_killed_encode_job_resumes_exactly_once(corpus, bucket, recording_s3, tiny_model, tmp_path, ray_dir):
    source, images = corpus
    archive = source.replace("/in", "/killed-driver")
    total_shards = (len(images) + 1 + 1) // 2
    command = _command(source, archive, ray_dir)
    with recording_s3.recording() as first:
        proc, family = _start_and_wait_for_a_part(command, tmp_path / "killed.log", archive.removeprefix("s3://"))
    kill_tree(proc, family)  # SIGKILL to the driver's group, then to every Ray process it had started
    assert _listings_of(first.requests, bucket, "in/"), "the first run's listing is not in the log"
    s3 = s3fs.S3FileSystem(skip_instance_cache=True)
    killed_parts = _parts(s3, archive.removeprefix("s3://"))
    assert 0 < len(killed_parts) < total_shards, f"the kill came too late: {len(killed_parts)} parts"
    _check_only_whole_files(s3, archive)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family)

    with recording_s3.recording() as log:
        done = subprocess.run(command, cwd=REPO, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
                              capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    said = re.findall(r"(\d+) already done", done.stdout)  # the start line and the summary
    assert said and {int(n) for n in said} == {len(killed_parts)}, done.stdout[-2000:]
    assert _listings_of(log.requests, bucket, "in/") == [], "the rerun listed the input again"
    assert [r for r in log.requests if r["path"].endswith("/_plan/plan.json")], "the rerun did not read the plan"
    stats = _check_exactly_once(archive, images, tiny_model, total_shards)
    assert stats["run"]["shards_done_before"] == len(killed_parts)
    assert stats["run"]["shards_written"] == total_shards - len(killed_parts)


def _wait(condition, what: str, proc: subprocess.Popen, log_path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what} (job exit code {proc.poll()}): " + open(log_path).read()[-3000:])
        time.sleep(0.05)


def _codec_actors(proc: subprocess.Popen, family: dict[int, psutil.Process]) -> list[psutil.Process]:
    """The live codec actor processes of the job (adding every process seen to ``family``)."""
    found = []
    for p in descendants(proc):
        family.setdefault(p.pid, p)
        try:
            if "EncodeImages" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            pass  # gone meanwhile
    return found


ACTOR_KILLS = 3


@pytest.mark.slow
def test_killing_codec_actors_then_the_driver_loses_and_duplicates_nothing(bucket, sample_images, tiny_model,
                                                                          tmp_path, ray_dir):
    """SIGKILL the codec actor three times, each time once its replacement has written a part, then
    SIGKILL the driver; the rerun finishes with every key once and the bitstreams of an undisturbed encode."""
    images = {f"{key}-{copy}": pixels for key, pixels in _images(sample_images).items() for copy in "ab"}
    source = _upload(f"{bucket}/many", images)  # 25 one-image shards: room for three actor restarts
    archive = f"s3://{bucket}/killed-actors"
    bucket_path = archive.removeprefix("s3://")
    total_shards = len(images) + 1  # one input per shard: a part after each image
    command = _command(source, archive, ray_dir, shard_size=1)
    log_path = tmp_path / "actors.log"
    proc, started = _start_and_wait_for_a_part(command, log_path, bucket_path)
    s3 = s3fs.S3FileSystem(skip_instance_cache=True)
    family = {p.pid: p for p in started}
    killed: list[int] = []
    parts_at_kills: list[int] = []
    try:
        for _ in range(ACTOR_KILLS):
            _wait(lambda: any(p.pid not in killed for p in _codec_actors(proc, family)), "no live codec actor",
                  proc, log_path)
            parts_before = len(_parts(s3, bucket_path))
            parts_at_kills.append(parts_before)
            for actor in _codec_actors(proc, family):
                actor.kill()
                killed.append(actor.pid)
            # Ray starts a new actor and retries the lost batch: wait until the job makes progress again
            _wait(lambda n=parts_before: len(_parts(s3, bucket_path)) > n, "no progress after an actor kill",
                  proc, log_path)
        parts_at_driver_kill = len(_parts(s3, bucket_path))
        assert proc.poll() is None and parts_at_driver_kill < total_shards, "the job finished before the driver kill"
        _codec_actors(proc, family)
    finally:
        kill_tree(proc, list(family.values()))  # the driver kill (SIGKILL to its group), and every Ray process
    assert len(set(killed)) >= ACTOR_KILLS
    _check_only_whole_files(s3, archive)

    done = subprocess.run(command, cwd=REPO, env={**os.environ, "RAY_AUTH_MODE": "disabled"}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stats = _check_exactly_once(archive, images, tiny_model, total_shards)
    assert stats["run"]["shards_done_before"] >= parts_at_driver_kill
    assert stats["run"]["shards_done_before"] + stats["run"]["shards_written"] == total_shards
    print(f"actor kills with {parts_at_kills} of {total_shards} parts written, driver kill with "
          f"{stats['run']['shards_done_before']}; the rerun wrote {stats['run']['shards_written']}")
