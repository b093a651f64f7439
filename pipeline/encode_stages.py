"""The encode job's stages as plain callables (no Ray here; ``pipeline.ray_runner`` places them).

1. :func:`read_and_decode` (CPU task): one part task in (its items are read from the stored
   plan), batches of image rows out — bytes read, hashed, decoded and validated into pixels, or a
   status row saying why not. Its last batch ends with a *marker row* (``_item == -1``) carrying
   the part's row count, so the part writer knows when a part is complete.
2. :class:`EncodeImages` (actor; one model load per actor): pixels in, SPRDiff records out.
3. :class:`pipeline.part_writer.PartWriter` (one actor): complete parts written, summaries out.

Batches are dicts of numpy arrays (Ray Data's ``numpy`` batch format). Columns starting with
``_`` are bookkeeping and never reach the archive. Missing values travel as ``""``, ``b""`` or
``-1`` (so every block has the same Arrow types) and become nulls when the archive is written.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import numpy as np

from pipeline.inputs import SourceItem, max_file_bytes, read_items
from pipeline.inputs.plan import PlanItem, read_items_of
from pipeline.parts import PartTask
from pipeline.storage import Location
from sprdiff import FORMAT_VERSION, SPRDiffError, load_image
from sprdiff.bitstream import read_header
from sprdiff.errors import ImageError

MARKER_ITEM = -1
EMPTY_PIXELS = np.zeros((0, 0, 3), np.uint8)


def decode_item(item: SourceItem, *, max_pixels: int) -> dict:
    """One source item -> one row: pixels if the image is good, else a status and a message."""
    row = {"key": item.key, "source_uri": item.source_uri, "status": item.status, "error": item.error or "",
           "width": -1, "height": -1, "pixels": EMPTY_PIXELS, "source_sha256": "", "source_bytes": -1,
           "read_s": item.read_s, "decode_s": 0.0}
    if item.data is None:
        return row
    row["source_sha256"] = hashlib.sha256(item.data).hexdigest()
    row["source_bytes"] = len(item.data)
    t0 = time.perf_counter()
    try:
        pixels = load_image(item.data, max_pixels=max_pixels)
    except ImageError as e:
        row.update(status=e.status, error=str(e))
    else:
        row.update(pixels=pixels, height=pixels.shape[0], width=pixels.shape[1])
    row["decode_s"] = time.perf_counter() - t0
    return row


def _marker(shard: PartTask, count: int) -> dict:
    return {"key": "", "source_uri": "", "status": "marker", "error": "", "width": -1, "height": -1,
            "pixels": EMPTY_PIXELS, "source_sha256": "", "source_bytes": -1, "read_s": 0.0, "decode_s": 0.0,
            "_shard": shard.index, "_item": MARKER_ITEM, "_shard_rows": count}


def rows_to_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Rows (dicts with the same keys) -> a dict of numpy arrays; ragged values become object arrays."""
    batch = {}
    for name in rows[0]:
        values = [r[name] for r in rows]
        if name == "pixels" or any(isinstance(v, str | bytes) for v in values):
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
            batch[name] = arr
        else:
            batch[name] = np.asarray(values)
    return batch


def task_items(task: PartTask) -> list[PlanItem]:
    """The plan items of an encode task (only those named in ``only_keys`` for a healing task)."""
    p = task.payload
    items = read_items_of(Location.of(p["plan"]), p["file"], p["offset"], p["items"])
    if p.get("only_keys") is not None and p["kind"] == "images":
        wanted = set(p["only_keys"])
        items = [i for i in items if i.key in wanted]
    return items


def read_and_decode(batch: dict[str, np.ndarray], *, max_pixels: int,
                    rows_per_batch: int = 16) -> Iterator[dict[str, np.ndarray]]:
    """CPU stage: ``{"task": [PartTask JSON, ...]}`` -> image rows, ``rows_per_batch`` at a time."""
    for spec in batch["task"]:
        shard = PartTask.from_json(spec)
        rows: list[dict] = []
        count = 0
        items = task_items(shard)
        for item in read_items(shard.payload["kind"], items, max_bytes=max_file_bytes(max_pixels)):
            rows.append({**decode_item(item, max_pixels=max_pixels), "_shard": shard.index, "_item": count,
                         "_shard_rows": 0})
            count += 1
            if len(rows) == rows_per_batch:
                yield rows_to_batch(rows)
                rows = []
        yield rows_to_batch([*rows, _marker(shard, count)])


class EncodeImages:
    """Actor stage: loads the model once, then compresses every ``ok`` row of each batch.

    A codec error on one image (``SPRDiffError``) becomes that row's status; anything else is a
    bug and raises.
    """

    def __init__(self, model, *, device: str = "cpu", threads: int | None = None, colour_correction: bool = True):
        """``model``: a preset name, directory or URI to load, or an already loaded ``SPRDiff``;
        ``colour_correction``: see ``SPRDiff.compress``."""
        import torch

        from sprdiff import SPRDiff

        if threads and threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        self.model = SPRDiff.from_pretrained(model, device=device) if isinstance(model, str) else model
        self.model_id = self.model.model_id
        self.fingerprint = self.model.fingerprint
        self.colour_correction = colour_correction

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["key"])
        records = np.full(n, b"", dtype=object)
        num_bytes = np.full(n, -1, dtype=np.int64)
        encode_s = np.zeros(n, dtype=np.float64)
        status = batch["status"].copy()
        error = batch["error"].copy()
        format_version = np.full(n, FORMAT_VERSION, dtype=np.int32)  # rows without a record: today's version
        for i in range(n):
            if status[i] != "ok":
                continue
            t0 = time.perf_counter()
            try:
                pixels = np.require(batch["pixels"][i], requirements=["W"])  # Ray hands out read-only arrays
                [record] = self.model.compress([pixels], colour_correction=self.colour_correction)
            except SPRDiffError as e:
                status[i], error[i] = e.status, str(e)
            else:
                records[i], num_bytes[i] = record, len(record)
                format_version[i] = read_header(record)[0].version
            encode_s[i] = time.perf_counter() - t0
        out = {k: v for k, v in batch.items() if k != "pixels"}
        out.update(status=status, error=error, record=records, num_bytes=num_bytes, encode_s=encode_s,
                   model_id=np.full(n, self.model_id, dtype=object),
                   model_fingerprint=np.full(n, self.fingerprint, dtype=object),
                   format_version=format_version)
        return out
