"""Fixtures of the pipeline tests: small real images as files, tar shards and Parquet tables."""

from __future__ import annotations

import os
import shutil
import uuid

import numpy as np
import pytest
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
