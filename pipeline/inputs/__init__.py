"""Inputs of the encode job, by kind: planning (``planner``: listing or a manifest -> a stored plan,
``plan``: the plan's types and files) and reading one part's items (``images``, ``wds``, ``tables``).

Reading never raises for bad data: an item that cannot be read becomes a :class:`SourceItem` with
a status and a message. Files and tar members larger than the read limit are never read.
"""

from __future__ import annotations

from collections.abc import Iterator

from pipeline.inputs.images import read_files
from pipeline.inputs.items import SourceItem, max_file_bytes
from pipeline.inputs.plan import PlanItem, ShardSpec, StoredPlan, part_name
from pipeline.inputs.planner import INPUT_FORMATS, PlanRequest, build_plan
from pipeline.inputs.tables import read_tables
from pipeline.inputs.wds import read_tars

__all__ = ["INPUT_FORMATS", "PlanItem", "PlanRequest", "ShardSpec", "SourceItem", "StoredPlan", "build_plan",
           "max_file_bytes", "part_name", "read_items"]


def read_items(kind: str, items: list[PlanItem], *, max_bytes: int | None = None) -> Iterator[SourceItem]:
    """Every row of a part's items, in a fixed order, bad ones included."""
    if kind == "images":
        return read_files(items, max_bytes)
    if kind == "wds":
        return read_tars(items, max_bytes)
    if kind == "parquet":
        return read_tables(items)
    raise ValueError(f"unknown input kind {kind!r}")
