"""The resumable-part driver shared by the encode and the decode job.

A job is a sequence of :class:`PartTask` (one per output part, named ``part-NNNNN`` by its index).
The driver

1. finds the parts already done: a part counts only if its footer reads, names this job and plan,
   and holds the planned number of rows; its ``_parts/`` sidecar is used (or recomputed from the
   file when it is missing or stale);
2. streams the other tasks, a window at a time, to ``stream`` (``ray_runner.stream_parts`` or
   ``local_runner.stream_parts``), whose last stage writes each complete part and yields its summary;
3. adds every summary into :class:`Totals`, which make ``_stats.json``; no record is re-read.

Driver memory holds one window of tasks and the per-part totals, never the parts' rows.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.archive import INDEX_FILE, PARTS_DIR, footer, read_sidecar, sidecar_path, write_sidecar
from pipeline.inputs.plan import part_name
from pipeline.storage import Location

WINDOW = 4096  # tasks per Ray dataset: bounds the driver's task list whatever the number of parts
CHECK_THREADS = 16
INDEX_SCHEMA = pa.schema([("part", pa.string()), ("shard", pa.int64()), ("rows", pa.int64()), ("size", pa.int64()),
                          ("first_key", pa.string()), ("last_key", pa.string()), ("sha256", pa.string())])


@dataclass(frozen=True)
class PartTask:
    """One part to write. ``payload`` is what the reading stage needs (JSON-able, small)."""

    index: int
    expected_rows: int  # -1: known only once read
    payload: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return part_name(self.index)

    def to_json(self) -> str:
        return json.dumps({"index": self.index, "expected_rows": self.expected_rows, **self.payload})

    @classmethod
    def from_json(cls, text: str) -> PartTask:
        d = json.loads(text)
        return cls(d.pop("index"), d.pop("expected_rows"), d)


@dataclass(frozen=True)
class PartOutput:
    """Where a job's parts go: ``<location>/<part_dir>/part-NNNNN.parquet``, sidecars in ``<location>/_parts/``."""

    location: Location
    job_id: str
    plan_digest: str
    part_dir: str = ""

    def part_path(self, name: str) -> str:
        return self.location.path(self.part_dir, f"{name}.parquet") if self.part_dir else \
            self.location.path(f"{name}.parquet")

    def existing(self) -> dict[str, int]:
        """``{part name: size}`` of the part files present (one listing of the part folder)."""
        self.location.refresh()
        folder = self.location.path(self.part_dir) if self.part_dir else self.location.root
        try:
            entries = self.location.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return {}
        found = {}
        for info in entries:
            base = info["name"].rstrip("/").rsplit("/", 1)[-1]
            if base.startswith("part-") and base.endswith(".parquet") and info.get("type", "file") == "file":
                found[base.removesuffix(".parquet")] = int(info.get("size") or 0)
        return found


@dataclass
class Totals:
    """Sums of the part summaries: the whole output's figures, this run's and earlier runs' parts."""

    parts: int = 0
    parts_before: int = 0
    rows: int = 0
    rows_run: int = 0
    counts: Counter = field(default_factory=Counter)
    sums: Counter = field(default_factory=Counter)
    fingerprints: set = field(default_factory=set)
    rate_counts: Counter = field(default_factory=Counter)  # rows by rate id: one entry per rate of the model

    def add(self, summary: dict, *, before: bool) -> None:
        self.parts += 1
        self.parts_before += before
        self.rows += summary["rows"]
        self.rows_run += 0 if before else summary["rows"]
        self.counts.update(summary.get("counts", {}))
        for k, v in summary.items():
            if k in ("record_bytes", "pixels_ok", "source_bytes", "image_bytes", "bpp_sum", "budget_warnings") \
                    and v is not None:
                self.sums[k] += v
        self.fingerprints.update(summary.get("fingerprints", ()))
        self.rate_counts.update({int(rate): n for rate, n in summary.get("rate_counts", {}).items()})


class Progress:
    """The per-part progress line, at most one every ``interval_s`` (a million parts must not mean a
    million lines), plus the last one."""

    def __init__(self, job: str, total: int, log: Callable[[str], None], interval_s: float = 10.0):
        self.job, self.total, self.log, self.interval_s = job, total, log, interval_s
        self.start = time.monotonic()
        self.last = 0.0
        self.parts = self.rows = self.ok = 0

    def add(self, summary: dict) -> None:
        self.parts += 1
        self.rows += summary["rows"]
        self.ok += summary.get("counts", {}).get("ok", 0)
        now = time.monotonic()
        if now - self.last >= self.interval_s or self.parts == self.total:
            self.last = now
            elapsed = max(now - self.start, 1e-9)
            self.log(f"{self.job}: {summary['part']} | {self.parts}/{self.total} parts this run, {self.rows} rows "
                     f"({self.ok} ok), {self.rows / elapsed:.2f} images/s")


SummariseFile = Callable[[PartOutput, PartTask, bytes], dict]
Stream = Callable[[list[PartTask]], Iterable[dict]]


def check_done(output: PartOutput, tasks: Iterable[PartTask], summarise_file: SummariseFile
               ) -> Iterator[tuple[PartTask, dict | None]]:
    """Each task with the summary of its finished part, or None when the part must be (re)written."""
    existing = output.existing()

    def check(task: PartTask) -> tuple[PartTask, dict | None]:
        size = existing.get(task.name)
        if size is None:
            return task, None
        return task, _done_summary(output, task, size, summarise_file)

    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        window: list = []
        for task in tasks:
            if task.name not in existing:
                yield from (f.result() for f in window)
                window = []
                yield task, None
                continue
            window.append(pool.submit(check, task))
            if len(window) >= 4 * CHECK_THREADS:
                yield from (f.result() for f in window)
                window = []
        yield from (f.result() for f in window)


def _done_summary(output: PartOutput, task: PartTask, size: int, summarise_file: SummariseFile) -> dict | None:
    path = output.part_path(task.name)
    found = footer(output.location, path)
    if found is None:
        return None
    rows, meta = found
    if meta.get("job_id") != output.job_id or meta.get("plan_digest") != output.plan_digest:
        return None
    if meta.get("shard") != str(task.index) or meta.get("rows") != str(rows):
        return None
    if task.expected_rows >= 0 and rows != task.expected_rows:
        return None
    summary = read_sidecar(output.location, task.name)
    if summary is None or summary.get("size") != size or summary.get("job_id") != output.job_id:
        summary = summarise_file(output, task, output.location.read_bytes(path))
        write_sidecar(output.location, summary)
    return summary


def run_parts(job: str, output: PartOutput, tasks: Callable[[], Iterable[PartTask]], total: int, stream: Stream,
              summarise_file: SummariseFile, *, log: Callable[[str], None], describe: str,
              redo: Callable[[PartTask, dict], PartTask | None] | None = None,
              on_done: Callable[[dict], None] | None = None) -> Totals:
    """Write every part not yet done; return the totals of all of them.

    ``tasks()`` is called twice (the check, then the run), so it must give the same tasks each time
    (it reads them from the stored plan). ``redo`` may turn a finished part into a task again
    (``--retry-errors``); ``on_done`` sees every part's summary (the archive's index).
    """
    totals = Totals()
    pending = array("q")
    redone: dict[int, PartTask] = {}
    for task, summary in check_done(output, tasks(), summarise_file):
        again = redo(task, summary) if (summary is not None and redo is not None) else None
        if summary is not None and again is None:
            totals.add(summary, before=True)
            if on_done:
                on_done(summary)
            continue
        pending.append(task.index)
        if again is not None:
            redone[task.index] = again
    log(f"{job}: {describe}: {total} parts, {totals.parts_before} already done, {len(pending)} to do"
        + (f" ({len(redone)} of them to heal)" if redone else ""))
    progress = Progress(job, len(pending), log)
    written = 0
    if pending:
        wanted = set(pending) if len(pending) < total else None
        window: list[PartTask] = []
        for task in tasks():
            if wanted is not None and task.index not in wanted:
                continue
            window.append(redone.get(task.index, task))
            if len(window) >= WINDOW:
                written += _run_window(window, stream, totals, progress, on_done)
                window = []
        if window:
            written += _run_window(window, stream, totals, progress, on_done)
    if written != len(pending):
        raise RuntimeError(f"the pipeline ended with {len(pending) - written} of {len(pending)} parts unwritten: "
                           f"rerun the same command to finish them")
    return totals


def _run_window(window: list[PartTask], stream: Stream, totals: Totals, progress: Progress,
                on_done: Callable[[dict], None] | None) -> int:
    names = {t.name for t in window}
    written = 0
    for summary in stream(window):
        if summary["part"] not in names:
            raise RuntimeError(f"the pipeline wrote {summary['part']}, which this window did not ask for: a bug")
        names.discard(summary["part"])
        totals.add(summary, before=False)
        progress.add(summary)
        if on_done:
            on_done(summary)
        written += 1
    return written


class IndexWriter:
    """Collects one row per part (streamed to a local temporary file), then writes ``_index/parts.parquet``
    sorted by first key: what lookups read instead of every part's footer."""

    def __init__(self) -> None:
        fd, self._path = tempfile.mkstemp(prefix="sprdiff-index-", suffix=".parquet")
        os.close(fd)
        self._writer = pq.ParquetWriter(self._path, INDEX_SCHEMA)
        self._rows: list[dict] = []

    def add(self, summary: dict) -> None:
        self._rows.append({k: summary.get(k) for k in INDEX_SCHEMA.names})
        if len(self._rows) >= 8192:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, INDEX_SCHEMA))
            self._rows = []

    def write(self, location: Location) -> None:
        self._flush()
        self._writer.close()
        try:
            table = pq.read_table(self._path).sort_by([("first_key", "ascending"), ("shard", "ascending")])
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, compression="zstd")
            location.write_bytes(location.path(INDEX_FILE), sink.getvalue().to_pybytes())
        finally:
            os.remove(self._path)


__all__ = ["PARTS_DIR", "IndexWriter", "PartOutput", "PartTask", "Progress", "Totals", "check_done", "run_parts",
           "sidecar_path"]
