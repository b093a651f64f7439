"""The plan of an encode job, shared by every input kind: which items make up which part.

A plan is written once, streaming, under ``OUTPUT/_plan/`` and read by every later run, which
therefore never lists the input again::

    _plan/items-00000.parquet ...   every item in part order (ITEM_SCHEMA), at most ITEMS_PER_FILE each
    _plan/shards.parquet            one row per part (SHARD_SCHEMA): where its items are, how many rows
                                    its part must hold (-1: known only once read, for tar shards), key range
    _plan/plan.json                 kind, counts, settings and the digest; written last, so a plan
                                    without it is incomplete and is written again

An *item* is one thing a reading task opens: an image file (one row), a tar shard (one row per
sample) or a row range of a Parquet table. Items that are bad before anything is read (an
unusable inventory entry, a repeated key, an unreadable table) carry their status and message.
Nothing here holds more than one batch of items in memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import Location

PLAN_DIR = "_plan"
PLAN_FILE = "plan.json"
SHARDS_FILE = "shards.parquet"
ITEMS_PER_FILE = 1_000_000
ITEMS_ROW_GROUP = 16_384  # a reading task reads its part's items, never a whole items file
KINDS = ("images", "wds", "parquet")

ITEM_SCHEMA = pa.schema([
    ("shard", pa.int64()), ("item", pa.int64()), ("key", pa.string()), ("uri", pa.string()),
    ("size", pa.int64()),  # bytes in the listing or inventory, -1 when unknown
    ("row_start", pa.int64()), ("row_stop", pa.int64()),  # Parquet input: the rows of the table
    ("image_column", pa.string()), ("key_column", pa.string()),  # Parquet input (wds: the member suffix)
    ("status", pa.string()), ("error", pa.string()),
])
SHARD_SCHEMA = pa.schema([
    ("shard", pa.int64()), ("file", pa.int32()), ("offset", pa.int64()), ("items", pa.int64()),
    ("expected_rows", pa.int64()), ("first_key", pa.string()), ("last_key", pa.string()),
])


def part_name(index: int) -> str:
    return f"part-{index:05d}"


@dataclass(frozen=True)
class PlanItem:
    key: str
    uri: str
    size: int = -1
    row_start: int = 0
    row_stop: int = 0
    image_column: str | None = None
    key_column: str | None = None
    status: str = "ok"
    error: str | None = None


@dataclass(frozen=True)
class ShardSpec:
    """One part to write: the items of shard ``index`` sit at ``offset`` in ``items-<file>.parquet``."""

    index: int
    file: int
    offset: int
    items: int
    expected_rows: int  # -1: known only once read (tar shards)
    first_key: str
    last_key: str

    @property
    def name(self) -> str:
        return part_name(self.index)


@dataclass(frozen=True)
class PlanInfo:
    kind: str
    items: int
    shards: int
    digest: str  # sha256 over every item and the settings that shaped the plan
    settings: dict
    item_files: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def expected_rows(kind: str, item: dict) -> int:
    if kind == "images":
        return 1
    if kind == "wds":
        return -1
    if item["status"] != "ok" and item["row_stop"] <= item["row_start"]:
        return 1  # an unreadable table: one row keyed by the file
    return item["row_stop"] - item["row_start"]


class PlanWriter:
    """Streams items (already in part order, ``shard``/``item`` assigned) into a stored plan."""

    def __init__(self, location: Location, kind: str, settings: dict):
        if kind not in KINDS:
            raise ValueError(f"plan kind must be one of {KINDS}, got {kind!r}")
        self.location, self.kind, self.settings = location, kind, settings
        self._digest = hashlib.sha256(json.dumps({"kind": kind, **settings}, sort_keys=True).encode())
        self._file_index, self._in_file, self._items = -1, 0, 0
        self._writer: pq.ParquetWriter | None = None
        self._sink = None
        location.fs.makedirs(location.root, exist_ok=True)
        self._shards_sink = location.fs.open(location.path(SHARDS_FILE), "wb")
        self._shards = pq.ParquetWriter(self._shards_sink, SHARD_SCHEMA)
        self._shard_rows: list[dict] = []
        self._current: dict | None = None
        self._num_shards = 0

    def write(self, batch: pa.RecordBatch) -> None:
        batch = pa.Table.from_batches([batch]).select(ITEM_SCHEMA.names).cast(ITEM_SCHEMA)
        start = 0
        shards = batch.column("shard").to_numpy()
        while start < batch.num_rows:
            current = self._current["shard"] if self._current is not None else None
            if self._writer is None or (self._in_file >= ITEMS_PER_FILE and shards[start] != current):
                self._next_file()  # a new items file only where a part starts: a part's items stay in one file
            if self._in_file < ITEMS_PER_FILE:
                take = min(batch.num_rows - start, ITEMS_PER_FILE - self._in_file)
            else:  # the file is full: finish the part it is in
                rest = np.flatnonzero(shards[start:] != current)
                take = int(rest[0]) if len(rest) else batch.num_rows - start
            chunk = batch.slice(start, take)
            self._account(chunk)
            self._writer.write_table(chunk, row_group_size=ITEMS_ROW_GROUP)
            self._update_digest(chunk)
            self._in_file += take
            self._items += take
            start += take

    def _next_file(self) -> None:
        self._close_items()
        self._file_index += 1
        self._in_file = 0
        self._sink = self.location.fs.open(self.location.path(f"items-{self._file_index:05d}.parquet"), "wb")
        self._writer = pq.ParquetWriter(self._sink, ITEM_SCHEMA, compression="zstd")

    def _account(self, chunk: pa.Table) -> None:
        """Per-shard bookkeeping: one Python step per shard boundary, not per item."""
        shards = chunk.column("shard").to_numpy()
        keys = chunk.column("key")
        boundaries = [0, *(np.flatnonzero(shards[1:] != shards[:-1]) + 1).tolist()] if len(shards) else []
        for n, b in enumerate(boundaries):
            end = boundaries[n + 1] if n + 1 < len(boundaries) else len(shards)
            shard = int(shards[b])
            rows = self._rows(chunk.slice(b, end - b))
            if self._current is not None and self._current["shard"] == shard and self._current["file"] == \
                    self._file_index:
                cur = self._current
                cur["items"] += end - b
                cur["expected_rows"] = -1 if rows < 0 or cur["expected_rows"] < 0 else cur["expected_rows"] + rows
                cur["last_key"] = keys[end - 1].as_py()
                continue
            if self._current is not None and self._current["shard"] == shard:
                raise ValueError(f"shard {shard} spans two plan files: shards must be smaller than {ITEMS_PER_FILE}")
            self._flush_shard()
            self._current = {"shard": shard, "file": self._file_index, "offset": self._in_file + b,
                             "items": end - b, "expected_rows": rows, "first_key": keys[b].as_py(),
                             "last_key": keys[end - 1].as_py()}

    def _rows(self, items: pa.Table) -> int:
        if self.kind == "images":
            return items.num_rows
        if self.kind == "wds":
            return -1
        return sum(expected_rows("parquet", row) for row in
                   items.select(["status", "row_start", "row_stop"]).to_pylist())

    def _flush_shard(self) -> None:
        if self._current is None:
            return
        if self._num_shards != self._current["shard"]:
            raise ValueError(f"shard {self._current['shard']} follows {self._num_shards - 1}: items must come "
                             f"in shard order")
        self._shard_rows.append(self._current)
        self._num_shards += 1
        self._current = None
        if len(self._shard_rows) >= 8192:
            self._write_shard_rows()

    def _write_shard_rows(self) -> None:
        if self._shard_rows:
            self._shards.write_table(pa.Table.from_pylist(self._shard_rows, SHARD_SCHEMA))
            self._shard_rows = []

    def _update_digest(self, chunk: pa.Table) -> None:
        # Arrow IPC bytes of the planned columns: exact, and the same for the same items in the same batches
        sink = pa.BufferOutputStream()
        columns = chunk.select(["key", "uri", "size", "row_start", "row_stop", "status"])
        with pa.ipc.new_stream(sink, columns.schema) as stream:
            stream.write_table(columns)
        self._digest.update(sink.getvalue())

    def _close_items(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = None

    def close(self) -> PlanInfo:
        """Finish the files and commit the plan by writing ``plan.json``."""
        self._flush_shard()
        self._write_shard_rows()
        self._shards.close()
        self._shards_sink.close()
        if self._writer is None:
            self._next_file()  # an empty plan still has one (empty) items file
        self._close_items()
        info = PlanInfo(self.kind, self._items, self._num_shards, self._digest.hexdigest(), self.settings,
                        self._file_index + 1)
        self.location.write_bytes(self.location.path(PLAN_FILE), info.to_json().encode())
        return info


class StoredPlan:
    """A committed plan, read in bounded pieces."""

    def __init__(self, location: Location, info: PlanInfo):
        self.location, self.info = location, info

    @classmethod
    def open(cls, location: Location) -> StoredPlan | None:
        """The plan under ``location``, or None when there is none (or only an incomplete one)."""
        path = location.path(PLAN_FILE)
        if not location.exists(path):
            return None
        info = PlanInfo(**json.loads(location.read_bytes(path)))
        return cls(location, info)

    @property
    def kind(self) -> str:
        return self.info.kind

    def shards(self, batch_rows: int = 8192) -> Iterator[ShardSpec]:
        with self.location.fs.open(self.location.path(SHARDS_FILE), "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows):
                for row in batch.to_pylist():
                    yield ShardSpec(index=row["shard"], file=row["file"], offset=row["offset"], items=row["items"],
                                    expected_rows=row["expected_rows"], first_key=row["first_key"] or "",
                                    last_key=row["last_key"] or "")

    def items(self, shard: ShardSpec) -> list[PlanItem]:
        return read_items_of(self.location, shard.file, shard.offset, shard.items)

    def item_batches(self, batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        for i in range(self.info.item_files):
            with self.location.fs.open(self.location.path(f"items-{i:05d}.parquet"), "rb") as f:
                yield from pq.ParquetFile(f).iter_batches(batch_size=batch_rows)


def read_items_of(location: Location, file: int, offset: int, count: int) -> list[PlanItem]:
    """The ``count`` items at ``offset`` of ``items-<file>.parquet``: what one reading task reads of the plan."""
    with location.fs.open(location.path(f"items-{file:05d}.parquet"), "rb") as f:
        table = read_row_range(pq.ParquetFile(f), ITEM_SCHEMA.names, offset, offset + count)
    return [PlanItem(**{k: v for k, v in row.items() if k not in ("shard", "item")}) for row in table.to_pylist()]


def read_row_range(pf: pq.ParquetFile, columns: list[str], start: int, stop: int) -> pa.Table:
    """Rows [start, stop) of a Parquet file, reading only the row groups that hold them."""
    groups, first_row, offset = [], None, 0
    for i in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(i).num_rows
        if offset + n > start and offset < stop:
            groups.append(i)
            first_row = offset if first_row is None else first_row
        offset += n
    if not groups:
        return pa.table({c: pa.array([], pf.schema_arrow.field(c).type) for c in columns})
    table = pf.read_row_groups(groups, columns=columns)
    return table.slice(start - first_row, stop - start)


def items_table(rows: Iterable[dict]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), ITEM_SCHEMA)
