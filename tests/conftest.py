"""Shared fixtures: the tiny model, sample images, a real S3 endpoint (moto_server on loopback)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PHOTOS = SHARED / "data" / "photos"


@pytest.fixture(scope="session")
def tiny_model():
    from sprdiff import SPRDiff

    return SPRDiff.from_pretrained("tiny")


@pytest.fixture(scope="session")
def rate_points_model_dir(tmp_path_factory) -> Path:
    """``tiny`` with three rate points (gains 0.5, 1, 2, then moved apart per channel so every gain
    differs), saved: load it by this path, through the same code as any stored model."""
    import torch

    from sprdiff import SPRDiff
    from sprdiff.rates import add_rate_points

    model = SPRDiff.from_pretrained("tiny")
    add_rate_points(model, [0.5, 1.0, 2.0], default_rate=1)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(29)
        model.rate_gains.log_gain.add_(0.1 * torch.randn_like(model.rate_gains.log_gain))
        model.rate_gains.log_inverse_gain.add_(0.1 * torch.randn_like(model.rate_gains.log_inverse_gain))
        model.entropy.rate_side.add_(0.1 * torch.randn_like(model.entropy.rate_side))
    directory = tmp_path_factory.mktemp("rate-points") / "model"
    model.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def sample_images() -> dict[str, np.ndarray]:
    """A few real photos of different sizes from skimage.data (shipped with the package)."""
    from skimage import data

    return {
        "astronaut": data.astronaut(),  # 512x512 RGB
        "coffee": data.coffee(),  # 400x600 RGB
        "chelsea": data.chelsea(),  # 300x451 RGB
    }


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    if not PHOTOS.is_dir():
        pytest.skip(f"{PHOTOS} is absent: the shared photo set is not beside this checkout")
    return PHOTOS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_server_command() -> list[str]:
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if exe is None:
        raise RuntimeError("moto_server not found: install the test extras (bash scripts/setup.sh)")
    return [exe]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint: moto_server on a free 127.0.0.1 port, for the whole session.

    Sets the standard AWS variables (endpoint, dummy credentials, region) in this process,
    so fsspec/s3fs, pyarrow and Ray workers started afterwards all see the same store.
    """
    port = _free_port()
    proc = subprocess.Popen([*_moto_server_command(), "-H", "127.0.0.1", "-p", str(port)],
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
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION", "AWS_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing-key-id",
                      AWS_SECRET_ACCESS_KEY="testing-secret-key", AWS_DEFAULT_REGION="us-east-1",
                      AWS_REGION="us-east-1")
    try:
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A fresh, empty bucket on the moto endpoint; returns ``s3://<name>``."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"
