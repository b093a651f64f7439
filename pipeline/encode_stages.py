"""The encode job's stages as plain callables (no Ray here; ``pipeline.ray_runner`` places them).

1. :func:`read_and_decode` (CPU task): one part task in (its items are read from the stored
   plan), batches of image rows out — bytes read, hashed, decoded and validated into pixels, or a
   status row saying why not. Its last batch ends with a *marker row* (``_item == -1``) carrying
   the part's row count, so the part writer knows when a part is complete.
2. :class:`EncodeImages` (actor; one model load per actor): pixels in, SPRDiff records out (with
   their rate ids), one ``encode`` call per codec group (``pipeline.codec_groups``).
3. :class:`pipeline.part_writer.PartWriter` (one actor): complete parts written, summaries out.

Batches are dicts of numpy arrays (Ray Data's ``numpy`` batch format). Columns starting with
``_`` are bookkeeping and never reach the archive. Missing values travel as ``""``, ``b""`` or
``-1`` (so every block has the same Arrow types) and become nulls when the archive is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterator

import numpy as np

from pipeline import codec_groups
from pipeline.codec_groups import NO_GROUP, CodecGroups, group_indexes
from pipeline.codec_runtime import CodecRuntime, each_result
from pipeline.inputs import SourceItem, max_file_bytes, read_items
from pipeline.inputs.plan import PlanItem, read_items_of
from pipeline.parts import PartTask
from pipeline.storage import Location
from sprdiff import FORMAT_VERSION, load_image
from sprdiff.errors import ImageError

MARKER_ITEM = -1
FILLER_ITEM = -2
READ_BATCH_ROWS = 16  # rows per batch from the read stage to the codec stage (at least the codec batch)
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


def _filler(shard: PartTask) -> dict:
    """A row that only pads a batch to its fixed size; the codec stage drops it."""
    return {**_marker(shard, 0), "status": "filler", "_item": FILLER_ITEM}


def _marker(shard: PartTask, count: int) -> dict:
    return {"key": "", "source_uri": "", "status": "marker", "error": "", "width": -1, "height": -1,
            "pixels": EMPTY_PIXELS, "source_sha256": "", "source_bytes": -1, "read_s": 0.0, "decode_s": 0.0,
            "_shard": shard.index, "_item": MARKER_ITEM, "_shard_rows": count, "_group": NO_GROUP}


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


def read_and_decode(batch: dict[str, np.ndarray], *, max_pixels: int, batch_size: int = 1,
                    budgets: dict[str, int] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """CPU stage: ``{"task": [PartTask JSON, ...]}`` -> image rows in batches of exactly
    :func:`read_batch_rows` rows, each holding whole codec groups (``pipeline.codec_groups``: up to
    ``batch_size`` images of one padded size) and padded with filler rows. The codec stage takes
    batches of that many rows, so however Ray combines blocks, each of its batches is one of these
    and no group is ever split."""
    budgets = budgets or codec_groups.budgets()
    for spec in batch["task"]:
        shard = PartTask.from_json(spec)
        groups = CodecGroups(batch_size, group_bytes=budgets["group_bytes"], held_bytes=budgets["held_bytes"])
        out = _WholeGroups(shard, read_batch_rows(batch_size), budgets["batch_bytes"])
        count = 0
        for item in read_items(shard.payload["kind"], task_items(shard), max_bytes=max_file_bytes(max_pixels)):
            row = {**decode_item(item, max_pixels=max_pixels), "_shard": shard.index, "_item": count,
                   "_shard_rows": 0, "_group": NO_GROUP}
            count += 1
            yield from out.take(groups.add(row) if row["status"] == "ok" else [[row]])
        yield from out.take(groups.finish())
        yield from out.take([[_marker(shard, count)]])
        yield from out.flush()


def read_batch_rows(batch_size: int) -> int:
    """Rows per batch between the read stage and the codec stage (filler rows included)."""
    return max(READ_BATCH_ROWS, batch_size)


class _WholeGroups:
    """Collects closed groups into batches of exactly ``rows`` rows (filler rows pad a batch that its
    next group would overflow, or that holds ``nbytes`` of pixels)."""

    def __init__(self, shard: PartTask, rows: int, nbytes: int):
        self.shard, self.size, self.enough_bytes = shard, rows, nbytes
        self.rows: list[dict] = []
        self.nbytes = 0

    def take(self, groups: list[list[dict]]) -> Iterator[dict[str, np.ndarray]]:
        for group in groups:
            if len(self.rows) + len(group) > self.size:
                yield from self.flush()
            self.rows.extend(group)
            self.nbytes += sum(r["pixels"].nbytes for r in group)
            if len(self.rows) == self.size or self.nbytes >= self.enough_bytes:
                yield from self.flush()

    def flush(self) -> Iterator[dict[str, np.ndarray]]:
        if self.rows:
            filler = _filler(self.shard)
            yield rows_to_batch([*self.rows, *[filler] * (self.size - len(self.rows))])
        self.rows, self.nbytes = [], 0


class EncodeImages:
    """Actor stage: loads the model once, then encodes the ``ok`` rows of each batch, one ``encode``
    call per codec group (``_group``, formed by the read stage).

    A codec error (``SPRDiffError``) becomes the row's status: a group whose call fails is encoded
    again image by image, so one bad image never costs its neighbours their records. Anything else
    is a bug and raises. Each row gets its record's rate id and, when ``target_bpp`` could not be met,
    a warning saying so.
    """

    def __init__(self, model, *, device: str = "cpu", threads: int | None = None, colour_correction: bool = True,
                 rate: int | None = None, target_bpp: float | None = None, codec: CodecRuntime | None = None):
        """``model``: a preset name, directory or URI to load, or an already loaded ``SPRDiff``;
        ``colour_correction``: see ``SPRDiff.compress``; ``rate`` or ``target_bpp``: the model's rate
        point, or a budget in bits per pixel that picks one per image (``sprdiff.rates``); ``codec``:
        precision, tiling, compile."""
        from sprdiff import rate_choice
        from sprdiff.encoder import EncodeSettings

        self.codec = codec or CodecRuntime()
        self.model = self.codec.load(model, device=device, threads=threads)
        rate_choice.check_rate(self.model.config, rate)  # the job's driver checked these already (check_rate_choice)
        rate_choice.check_target_bpp(self.model.config, target_bpp)
        self.model_id = self.model.model_id
        self.fingerprint = self.model.fingerprint
        self.settings = EncodeSettings(side_information=colour_correction,
                                       precision=self.codec.precision_on(self.model.device),
                                       tile_size=self.codec.tile_size, rate=rate, target_bpp=target_bpp)

    def _encode(self, images: list[np.ndarray]) -> list:
        """Images -> ``sprdiff.bitstream.Record``s (bytes and header)."""
        return self.model.encode(images, dataclasses.replace(self.settings, batch_size=len(images)))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from sprdiff.rate_choice import budget_warning

        n = len(batch["key"])
        records = np.full(n, b"", dtype=object)
        num_bytes = np.full(n, -1, dtype=np.int64)
        encode_s = np.zeros(n, dtype=np.float64)
        status = batch["status"].copy()
        error = batch["error"].copy()
        format_version = np.full(n, FORMAT_VERSION, dtype=np.int32)  # rows without a record: today's version
        rate_id = np.full(n, -1, dtype=np.int16)  # -1: no record (null in the archive)
        warning = np.full(n, "", dtype=object)
        ok = status == "ok"
        grouped = np.where(ok, batch.get("_group", np.full(n, NO_GROUP)), NO_GROUP)
        lone = [int(i) for i in np.flatnonzero(ok & (grouped == NO_GROUP))]  # rows that came without a group
        for indexes in [*group_indexes(batch["_shard"], grouped), *self._groups_of(batch["pixels"], lone)]:
            t0 = time.perf_counter()
            # Ray hands out read-only arrays; torch wants writable ones
            images = [np.require(batch["pixels"][i], requirements=["W"]) for i in indexes]
            coded = each_result(self._encode, images)
            seconds = (time.perf_counter() - t0) / len(indexes)
            for i, (record, problem) in zip(indexes, coded, strict=True):
                encode_s[i] = seconds
                if problem is not None:
                    status[i], error[i] = problem.status, str(problem)
                    continue
                header = record.header
                records[i], num_bytes[i] = record.data, record.num_bytes
                format_version[i], rate_id[i] = header.version, header.rate_id
                warning[i] = budget_warning(record.num_bytes, header.width, header.height, header.rate_id,
                                            self.settings.target_bpp) or ""
        out = {k: v for k, v in batch.items() if k != "pixels"}
        out.update(status=status, error=error, record=records, num_bytes=num_bytes, encode_s=encode_s,
                   model_id=np.full(n, self.model_id, dtype=object),
                   model_fingerprint=np.full(n, self.fingerprint, dtype=object),
                   format_version=format_version, rate_id=rate_id, warning=warning)
        kept = batch["_item"] != FILLER_ITEM
        return out if kept.all() else {k: v[kept] for k, v in out.items()}

    def _groups_of(self, pixels: np.ndarray, indexes: list[int]) -> list[list[int]]:
        """Groups for rows that came without one (a user's own dataset): formed within this batch."""
        former = CodecGroups(self.codec.batch_size)
        closed = [g for i in indexes for g in former.add({"pixels": pixels[i], "_i": i})] + former.finish()
        return [[row["_i"] for row in group] for group in closed]
