"""An external sort of listing rows by ``(key, seq)``: sorted runs spilled to Parquet, then merged.

Planning sorts every input by key, so parts hold disjoint key ranges whatever order the storage
lists objects in (S3 Inventory data files come in no fixed order), and repeated keys end up side
by side where one pass can find them. A listing of 10^8 objects does not fit in a driver, so rows
are buffered up to ``run_rows``, sorted by Arrow and written as a run; the merge reads every run
one batch at a time. pyarrow has no streaming merge of sorted files and DuckDB/Polars are not
dependencies of the jobs, hence this small merge: each step emits every buffered row up to the
smallest "last row" among the runs' current batches (no row after it can be smaller), counted
and sorted by Arrow, so no key becomes a Python object.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SORT_KEYS = [("key", "ascending"), ("seq", "ascending")]
RUN_ROWS = 300_000  # about 50 MB of listing rows in Arrow while a run is sorted
RUN_ROW_GROUP = 4096  # a run is read back one row group at a time: this bounds each run's share of the merge
MERGE_BUFFER_ROWS = 200_000  # rows held by the merge, shared out among the runs
MIN_MERGE_BATCH = 1024


class ExternalSorter:
    """``add`` batches with a string ``key`` and a unique int64 ``seq`` column, then ``sorted_batches``."""

    def __init__(self, schema: pa.Schema, *, run_rows: int | None = None, workdir: str | None = None):
        self.schema, self.run_rows = schema, run_rows or RUN_ROWS
        self._own_dir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="sprdiff-plan-", dir=os.environ.get("TMPDIR", "/tmp"))
        self._buffer: list[pa.RecordBatch] = []
        self._buffered = 0
        self._runs: list[str] = []
        self.rows = 0

    @property
    def runs(self) -> int:
        """Sorted runs spilled so far."""
        return len(self._runs)

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        if table.num_rows == 0:
            return
        self._buffer.extend(table.cast(self.schema).to_batches())
        self._buffered += table.num_rows
        self.rows += table.num_rows
        if self._buffered >= self.run_rows:
            self._spill()

    def _sorted_buffer(self) -> pa.Table:
        table = pa.Table.from_batches(self._buffer, self.schema) if self._buffer else self.schema.empty_table()
        self._buffer, self._buffered = [], 0
        return table.sort_by(SORT_KEYS)

    def _spill(self) -> None:
        path = os.path.join(self.workdir, f"run-{len(self._runs):05d}-{uuid.uuid4().hex[:6]}.parquet")
        pq.write_table(self._sorted_buffer(), path, compression="lz4", row_group_size=RUN_ROW_GROUP)
        self._runs.append(path)
        pa.default_memory_pool().release_unused()  # hand the sort's buffers back before the next run fills

    def sorted_batches(self, batch_rows: int = 65_536) -> Iterator[pa.Table]:
        """Every row added, in ``(key, seq)`` order, as tables of at most ``batch_rows`` rows."""
        try:
            if not self._runs:
                table = self._sorted_buffer()
                for start in range(0, table.num_rows, batch_rows):
                    yield table.slice(start, batch_rows)
                return
            if self._buffer:
                self._spill()
            yield from _rechunk(self._merge(), batch_rows)
        finally:
            self.close()

    def _merge(self) -> Iterator[pa.Table]:
        per_run = max(MIN_MERGE_BATCH, MERGE_BUFFER_ROWS // len(self._runs))
        runs = [_Run(path, per_run) for path in self._runs]
        live = [r for r in runs if r.load()]
        while live:
            bound = min(r.last for r in live)  # no row still unread in any run is below this one
            pieces = [r.take_through(bound) for r in live]
            merged = pa.concat_tables([p for p in pieces if p.num_rows])
            yield merged.sort_by(SORT_KEYS)
            live = [r for r in live if r.remaining or r.load()]

    def close(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


class _Run:
    """One sorted run, read a batch at a time; the rows not yet merged are ``table``."""

    def __init__(self, path: str, batch_rows: int):
        self._batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows, use_threads=False)
        self.table: pa.Table = pa.table({})

    def load(self) -> bool:
        batch = next(self._batches, None)
        if batch is None:
            return False
        self.table = pa.Table.from_batches([batch])
        return True

    @property
    def remaining(self) -> int:
        return self.table.num_rows

    @property
    def last(self) -> tuple[str, int]:
        return self.table.column("key")[-1].as_py(), self.table.column("seq")[-1].as_py()

    def take_through(self, bound: tuple[str, int]) -> pa.Table:
        """The leading rows up to and including ``bound`` in (key, seq) order (counted by Arrow: the
        rows at or below a bound of a sorted batch are a prefix of it)."""
        key, seq = bound
        keys, seqs = self.table.column("key"), self.table.column("seq")
        below = pc.or_(pc.less(keys, key), pc.and_(pc.equal(keys, key), pc.less_equal(seqs, seq)))
        n = pc.sum(below).as_py() or 0
        piece, self.table = self.table.slice(0, n), self.table.slice(n)
        return piece


def _rechunk(tables: Iterator[pa.Table], batch_rows: int) -> Iterator[pa.Table]:
    """The same rows in tables of exactly ``batch_rows`` rows (the last one shorter)."""
    pending: list[pa.Table] = []
    have = 0
    for table in tables:
        pending.append(table)
        have += table.num_rows
        while have >= batch_rows:
            joined = pa.concat_tables(pending)
            yield joined.slice(0, batch_rows)
            rest = joined.slice(batch_rows)
            pending, have = ([rest] if rest.num_rows else []), rest.num_rows
    if have:
        yield pa.concat_tables(pending)
