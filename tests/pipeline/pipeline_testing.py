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
from pipeline.inputs import PlanItem, PlanRequest, StoredPlan, build_plan, read_items
from pipeline.storage import Location

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


def plan_of(uri: str, plan_dir, **kw) -> StoredPlan:
    """The stored plan of ``uri`` (a prefix) written under ``plan_dir``; ``kw`` as ``PlanRequest``."""
    request = PlanRequest(input_list=kw.pop("input_list")) if "input_list" in kw else PlanRequest(input=uri)
    request = PlanRequest(**{**request.settings(), **kw})
    return build_plan(request, Location.of(str(plan_dir)))


def plan_items(plan: StoredPlan) -> list[list[PlanItem]]:
    """Each part's items, in part order."""
    return [plan.items(shard) for shard in plan.shards()]


def read_plan(plan: StoredPlan, max_bytes: int | None = None):
    """Every source item of every part, in part order."""
    return [item for items in plan_items(plan) for item in read_items(plan.kind, items, max_bytes=max_bytes)]
