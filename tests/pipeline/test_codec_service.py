"""Codec services (pipeline.codec_service): warm codec servers that jobs share, on a real local Ray.

The first test runs the whole thing as users do (``-m slow``, run by ``.ci/run``): a cluster that
outlives the commands (a separate process holding a Ray head on loopback), and `sprdiff` commands in
their own processes, each job a new Ray driver. The others use the module's in-process Ray.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from golden_pixels import assert_same_pixels
from PIL import Image

from jobs.cli import main as sprdiff_cli
from pipeline import codec_service, ray_runner
from pipeline.config import ComputeConfig, DecodeJobConfig, EncodeJobConfig
from pipeline.decode_job import run_decode_job
from pipeline.encode_job import run_encode_job

ROOT = Path(__file__).resolve().parents[2]
SPRDIFF = [sys.executable, "-m", "jobs.cli"]
PHOTOS = 8
HEAD = """
import os, sys, time, ray
ray.init(num_cpus=2, _temp_dir=sys.argv[1], include_dashboard=False)
print(ray.get_runtime_context().gcs_address, flush=True)
while True:
    time.sleep(1)
"""


@pytest.fixture(scope="module")
def photos(tmp_path_factory, small_images) -> Path:
    folder = tmp_path_factory.mktemp("service-photos")
    for key, pixels in list(small_images.items())[:PHOTOS]:
        Image.fromarray(pixels).save(folder / f"{key}.png")
    return folder


def _records(archive: Path) -> dict[str, bytes]:
    table = pq.read_table(archive, columns=["key", "status", "record"])
    keys = table.column("key").to_pylist()
    assert len(keys) == len(set(keys)), "a key appears twice"
    return dict(zip(keys, table.column("record").to_pylist(), strict=True))


def _expected(tiny_model, small_images) -> dict[str, bytes]:
    """The records of the photos as ``tiny.compress`` writes them in this process (what every job on them
    writes: tests/pipeline/test_pipeline_resume.py checks jobs with their own actors the same way)."""
    return {key: tiny_model.compress([pixels])[0] for key, pixels in list(small_images.items())[:PHOTOS]}


def _run(*args: str, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run([*SPRDIFF, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture
def cluster(tmp_path):
    """A Ray head in its own process (loopback), alive until the test ends, as a long-running cluster is."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    temp = f"/tmp/sprdiff-test-head-{os.getpid()}-{time.monotonic_ns() % 10**8}"
    head = subprocess.Popen([sys.executable, "-c", HEAD, temp], env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        address = head.stdout.readline().strip()
        assert address, "the Ray head did not start"
        yield address, env
    finally:
        head.send_signal(signal.SIGTERM)  # ray.shutdown() at exit ends the cluster and its detached actors
        head.wait(timeout=60)
        subprocess.run(["rm", "-rf", temp])


@pytest.mark.slow
def test_jobs_in_new_processes_share_one_warm_server_and_write_the_usual_bytes(
        cluster, photos, tmp_path, tiny_model, small_images):
    address, env = cluster
    expected = _expected(tiny_model, small_images)
    started = _run("codec-service", "start", "--name", "nightly", "--model", "tiny", "--address", address, env=env)
    assert "1 servers ready" in started.stdout
    _run("encode-job", "--input", str(photos), "--output", str(tmp_path / "day1"), "--model", "tiny",
         "--rows-per-part", "3", "--address", address, "--codec-service", "nightly", env=env)
    assert _records(tmp_path / "day1") == expected  # the bytes an undisturbed encode (and own actors) write
    _run("decode-job", "--input", str(tmp_path / "day1"), "--output", str(tmp_path / "decoded"), "--address", address,
         "--codec-service", "nightly", env=env)
    for key, record in expected.items():
        [pixels] = tiny_model.decompress([record])  # this process's thread count: last-bit float differences
        assert_same_pixels(key, np.asarray(Image.open(tmp_path / "decoded" / f"{key}.png")), pixels)

    status = _run("codec-service", "status", "--name", "nightly", "--address", address, env=env).stdout
    # one server, one process, its one model load, for two jobs: 3 encode calls (one per part) and the decode
    assert re.search(r"3 encode and [1-3] decode calls, 0 pending, 0 models loaded", status), status
    assert "stopped 1 servers" in _run("codec-service", "stop", "--name", "nightly", "--address", address,
                                       env=env).stdout
    gone = subprocess.run([*SPRDIFF, "codec-service", "status", "--address", address], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert gone.stdout.strip() == "no codec service runs on this cluster"


@pytest.fixture(scope="module")
def service(ray_two_cpus):
    """A one-server service of ``tiny`` on the module's Ray (it holds 1 of its 2 CPUs)."""
    codec_service.start_service("tests", "tiny", 1, ComputeConfig(threads_per_actor=1), env=ray_runner.MALLOC_ENV)
    yield ComputeConfig(service="tests")
    codec_service.stop_service("tests")


def test_a_job_the_service_cannot_serve_is_refused_before_any_part(service, photos, tmp_path, rate_points_model_dir):
    other = EncodeJobConfig(input=str(photos), output=str(tmp_path / "other"), model=str(rate_points_model_dir),
                            compute=service)
    with pytest.raises(ValueError, match=r"codec service 'tests' holds model .* but this job's --model is"):
        run_encode_job(other, ray_runner.stream_encode, log=lambda _: None)
    run_encode_job(EncodeJobConfig(input=str(photos), output=str(tmp_path / "archive"), model="tiny",
                                   compute=service), ray_runner.stream_encode, log=lambda _: None)
    absent = DecodeJobConfig(input=str(tmp_path / "archive"), output=str(tmp_path / "absent"),
                             model=str(tmp_path / "no-such-model"), compute=service)
    with pytest.raises(Exception, match="no-such-model"):  # each server builds the job's stage first (through Ray)
        run_decode_job(absent, ray_runner.stream_decode, log=lambda _: None)
    missing = EncodeJobConfig(input=str(photos), output=str(tmp_path / "missing"), model="tiny",
                              compute=ComputeConfig(service="nobody"))
    with pytest.raises(ValueError, match="no codec service 'nobody' runs on this cluster"):
        run_encode_job(missing, ray_runner.stream_encode, log=lambda _: None)
    with pytest.raises(ValueError, match="codec service 'tests' is running already"):
        codec_service.start_service("tests", "tiny", 1, ComputeConfig())
    assert codec_service.list_services() == {"tests": 1}
    for out in ("other", "missing"):
        assert not list((tmp_path / out).glob("part-*"))
    assert not list((tmp_path / "absent").glob("*.png")) and not list((tmp_path / "absent").glob("_manifest/*"))


def test_a_server_killed_mid_job_is_restarted_and_no_row_is_lost_or_doubled(service, photos, tmp_path, tiny_model,
                                                                            small_images):
    [before] = codec_service.describe_service("tests")
    killed = threading.Event()

    def kill_after_first_part(tasks, config, shared):
        for summary in ray_runner.stream_encode(tasks, config, shared):
            if not killed.is_set():
                os.kill(before["pid"], signal.SIGKILL)  # a real process death, mid-job
                killed.set()
            yield summary

    config = EncodeJobConfig(input=str(photos), output=str(tmp_path / "killed"), model="tiny", rows_per_part=1,
                             compute=service)
    stats = run_encode_job(config, kill_after_first_part, log=lambda _: None)
    assert killed.is_set() and stats["counts"] == {"ok": 8}
    [after] = codec_service.describe_service("tests")
    assert after["pid"] != before["pid"]  # Ray restarted it
    assert after["calls"]["encode"] >= 1  # and the job went on there (the call the kill cut short retried)
    assert _records(tmp_path / "killed") == _expected(tiny_model, small_images)


def test_decode_job_on_a_service_finds_other_weights_by_fingerprint(service, photos, tmp_path,
                                                                     rate_points_model_dir):
    """The server's own model is not the archive's: it loads the archive's by fingerprint, once."""
    from sprdiff import SPRDiff

    archive = tmp_path / "archive"
    run_encode_job(EncodeJobConfig(input=str(photos), output=str(archive), model=str(rate_points_model_dir),
                                   compute=ComputeConfig(actors=1, threads_per_actor=1, cpus_per_actor=0.5)),
                   ray_runner.stream_encode, log=lambda _: None)
    loads = codec_service.describe_service("tests")[0]["models_loaded"]
    for run in ("first", "second"):
        stats = run_decode_job(DecodeJobConfig(input=str(archive), output=str(tmp_path / run), compute=service),
                               ray_runner.stream_decode, log=lambda _: None)
        assert stats["counts"] == {"ok": 8}
    assert codec_service.describe_service("tests")[0]["models_loaded"] == loads + 1  # kept for the second job
    model = SPRDiff.from_pretrained(str(rate_points_model_dir))
    for key, record in _records(archive).items():
        [pixels] = model.decompress([record])
        assert_same_pixels(key, np.asarray(Image.open(tmp_path / "second" / f"{key}.png")), pixels)


@pytest.mark.parametrize("extra, message", [
    ([], "--codec-service needs --address"),
    (["--address", "127.0.0.1:1", "--actors", "2", "--compile"], "--actors, --compile do not apply"),
])
def test_service_options_that_cannot_apply_are_refused_before_ray(extra, message, tmp_path, capsys):
    code = sprdiff_cli(["encode-job", "--input", str(tmp_path), "--output", str(tmp_path / "a"),
                        "--codec-service", "nightly", *extra])
    assert code == 1 and message in capsys.readouterr().err


@pytest.mark.parametrize("api", [ray_runner.encode_dataset, ray_runner.decode_dataset])
def test_the_dataset_api_refuses_a_service_instead_of_ignoring_it(api):
    with pytest.raises(ValueError, match="run codec actors of their own"):
        api(None, model="tiny", compute=ComputeConfig(service="nightly"))
