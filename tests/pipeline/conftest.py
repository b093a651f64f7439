"""Fixtures of the pipeline tests: small real images as files, tar shards and Parquet tables."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import s3fs
from pipeline_testing import png_bytes


@pytest.fixture(scope="session")
def small_images(sample_images) -> dict[str, np.ndarray]:
    """20 crops (64x64 to 256x192) of the skimage photos, keyed img-00 .. img-19."""
    rng = np.random.default_rng(7)
    sources = list(sample_images.values())
    sizes = [(64, 64), (96, 128), (128, 128), (192, 256), (256, 160)]
    out = {}
    for i in range(20):
        src = sources[i % len(sources)]
        h, w = sizes[i % len(sizes)]
        y = int(rng.integers(0, src.shape[0] - h))
        x = int(rng.integers(0, src.shape[1] - w))
        out[f"img-{i:02d}"] = np.ascontiguousarray(src[y:y + h, x:x + w])
    return out


@pytest.fixture(scope="session")
def bad_files(small_images) -> dict[str, tuple[bytes, str]]:
    """Bad inputs by name -> (bytes, the status the job must give them). 'big' is bad only with max_pixels."""
    good = png_bytes(small_images["img-03"])
    return {
        "zero.png": (b"", "empty"),
        "cut.png": (good[: len(good) // 2], "truncated"),
        "text.png": (b"this is not an image\n" * 10, "not_image"),
        "big.png": (png_bytes(np.zeros((300, 300, 3), np.uint8)), "too_large"),  # with MAX_PIXELS
    }


@pytest.fixture(scope="module")
def ray_two_cpus(s3_endpoint):
    """One local Ray (2 CPUs) per test module, started after the S3 variables are set so workers inherit them."""
    import ray

    from pipeline import ray_runner

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    temp_dir = f"/tmp/sprdiff-test-ray-{uuid.uuid4().hex[:8]}"
    with ray_runner.ray_session(num_cpus=2, temp_dir=temp_dir):
        yield
    assert not ray.is_initialized()
    shutil.rmtree(temp_dir, ignore_errors=True)


class RecordingS3:
    """A second moto_server whose recorder logs every request it serves (moto's own request log), so a
    test can count what a job read: ``with s3.recording() as log: ...; log.requests``."""

    def __init__(self, endpoint: str, log_path: Path):
        self.endpoint, self.log_path = endpoint, log_path
        self.requests: list[dict] = []

    def _call(self, action: str) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/recorder/{action}", method="POST"),
                               timeout=30).read()

    @contextlib.contextmanager
    def recording(self):
        self._call("reset-recording")
        self._call("start-recording")
        try:
            yield self
        finally:
            self._call("stop-recording")
            self.requests = [_request(e) for e in _entries(self.log_path.read_text())] \
                if self.log_path.exists() else []


def _entries(text: str):
    """The recorder's JSON objects in order. moto writes each entry and its newline in two calls from
    concurrent server threads, so two entries can share a line (seen with a 10 MB weights upload)."""
    decoder, at = json.JSONDecoder(), 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return
        entry, at = decoder.raw_decode(text, at)
        yield entry


def _request(entry: dict) -> dict:
    url = urllib.parse.urlsplit(entry["url"])
    headers = {k.lower(): v for k, v in entry.get("headers", {}).items()}
    return {"method": entry["method"], "path": urllib.parse.unquote(url.path),
            "query": dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True)), "range": headers.get("range")}


@pytest.fixture(scope="module")
def recording_s3(s3_endpoint, tmp_path_factory):
    """A moto_server of its own (with its recorder's log in a temp dir) that this module's S3 traffic goes
    to: AWS_ENDPOINT_URL points at it until the module ends (subprocesses started meanwhile inherit it)."""
    log = tmp_path_factory.mktemp("moto") / "requests.jsonl"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], cwd=log.parent,
                            env={**os.environ, "MOTO_RECORDER_FILEPATH": str(log)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not start on {endpoint}") from None
            time.sleep(0.1)
    saved = os.environ["AWS_ENDPOINT_URL"]
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield RecordingS3(endpoint, log)
    finally:
        os.environ["AWS_ENDPOINT_URL"] = saved
        s3fs.S3FileSystem.clear_instance_cache()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
