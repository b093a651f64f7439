"""Helpers of the pipeline tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import s3fs
from PIL import Image
from webdataset import TarWriter

from pipeline.config import ComputeConfig

MAX_PIXELS = 256 * 256  # the test crops fit; the 300x300 'big.png' does not
COMPUTE = ComputeConfig(actors=1, cpus_per_actor=1, threads_per_actor=1)  # one codec actor on the 2-CPU local Ray


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def make_tar(samples: list[dict]) -> bytes:
    buf = io.BytesIO()
    with TarWriter(buf, mtime=0) as w:
        for s in samples:
            w.write(s)
    return buf.getvalue()


def fs() -> s3fs.S3FileSystem:
    """A fresh S3 filesystem (no cached listings) on the moto endpoint of the ``s3_endpoint`` fixture."""
    return s3fs.S3FileSystem(skip_instance_cache=True)


def read_archive(uri: str) -> dict[str, dict]:
    """The rows of an archive on S3 by key; fails if a key appears twice."""
    s3 = fs()
    paths = sorted(s3.glob(uri.removeprefix("s3://") + "/part-*.parquet"))
    table = pa.concat_tables([pq.read_table(p, filesystem=s3) for p in paths])
    keys = table.column("key").to_pylist()
    assert len(keys) == len(set(keys)), "a key appears twice"
    return {r["key"]: r for r in table.to_pylist()}
