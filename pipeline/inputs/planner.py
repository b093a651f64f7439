"""Planning: an input (a prefix to list, or a manifest) -> a stored plan, streaming all the way.

    listing pages / manifest batches ─► external sort by key ─► keys settled ─► items ─► PlanWriter

The driver holds one page or batch of the input, the sorter's current run, and the merge's
buffer: a bounded amount whatever the number of objects (``bench/bench_plan.py`` measures it).

Three input kinds, told apart by file names (``--input-format auto``) or chosen explicitly:

* ``images``  — image files (or manifest entries); one item and one archive row per file;
* ``wds``     — WebDataset ``.tar`` shards; one item per tar, one row per sample;
* ``parquet`` — Parquet tables with an image-bytes column; one item per row range.

Keys: a file's path relative to the input prefix without its extension. Where two files differ
only by extension (``a.png`` and ``a.jpg``) both keep their full relative path, so keys stay
unique and do not depend on listing order; a key a manifest gives twice becomes a
``duplicate_key`` row for every copy after the first (in manifest order).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.inputs import manifest, tables
from pipeline.inputs.listing import Page, list_pages
from pipeline.inputs.plan import ITEM_SCHEMA, PlanWriter, StoredPlan
from pipeline.inputs.sorting import ExternalSorter
from pipeline.inputs.wds import IMAGE_SUFFIXES
from pipeline.storage import Location, redact_uri

INPUT_FORMATS = ("auto", "images", "wds", "parquet")
PLAN_BATCH_ROWS = 65_536
LISTING_SCHEMA = pa.schema([("key", pa.string()), ("seq", pa.int64()), ("explicit", pa.bool_()), ("rel", pa.string()),
                            ("uri", pa.string()), ("size", pa.int64()), ("status", pa.string()),
                            ("error", pa.string())])
Lister = Callable[[Location], Iterable[Page]]


@dataclass(frozen=True)
class PlanRequest:
    """What to plan: ``input`` (a prefix or file) or ``input_list`` (a manifest), and how to cut it."""

    input: str | None = None
    input_list: str | None = None
    input_format: str = "auto"
    rows_per_part: int = 16_384
    limit: int | None = None
    image_column: str | None = None
    key_column: str | None = None

    def __post_init__(self) -> None:
        if (self.input is None) == (self.input_list is None):
            raise ValueError("give exactly one of an input prefix (--input) and an input list (--input-list)")
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(f"input format must be one of {INPUT_FORMATS}, got {self.input_format!r}")
        if self.rows_per_part < 1:
            raise ValueError(f"rows per part must be >= 1, got {self.rows_per_part}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")

    def settings(self) -> dict:
        """What shaped the plan (URIs normalised, credentials dropped): in its digest and ``plan.json``."""
        def place(uri: str | None) -> str | None:
            return None if uri is None else redact_uri(Location.of(uri).uri())

        return {"input": place(self.input), "input_list": place(self.input_list), "input_format": self.input_format,
                "rows_per_part": self.rows_per_part, "limit": self.limit, "image_column": self.image_column,
                "key_column": self.key_column}


def build_plan(request: PlanRequest, plan_dir: Location, *, lister: Lister | None = None) -> StoredPlan:
    """List (or read) the input once and write its plan under ``plan_dir``; return it."""
    sorter = ExternalSorter(LISTING_SCHEMA)
    try:
        if request.input_list is not None:
            if request.input_format not in ("auto", "images"):
                raise ValueError("an input list names image objects: use --input-format auto or images with it")
            kind, root_uri = "images", ""
            _sort_entries(sorter, manifest.entry_batches(request.input_list))
        else:
            location = Location.of(request.input)
            suffixes = _sort_listing(sorter, (lister or list_pages)(location))
            if sorter.rows == 0:
                raise FileNotFoundError(f"no input files under {location.uri()}")
            kind = detect_format(suffixes) if request.input_format == "auto" else request.input_format
            root_uri = location.uri().rstrip("/") + "/"
            if location.fs.isfile(location.root):
                root_uri = location.uri()[: -len(posixpath.basename(location.root))]
        settings = {**request.settings(), "kind": kind}
        writer = PlanWriter(plan_dir, kind, settings)
        rows = sorter.sorted_batches(PLAN_BATCH_ROWS)
        if kind == "images":
            items = _image_items(rows, root_uri, request)
        elif kind == "wds":
            items = _tar_items(_with_suffix(rows, ".tar"), root_uri, request)
        else:
            items = _table_items(_with_suffix(rows, ".parquet"), Location.of(request.input), request)
        wrote = 0
        for batch in _rechunk_items(items):
            writer.write(batch)
            wrote += batch.num_rows
        if wrote == 0:
            raise FileNotFoundError(f"no {kind} input under {request.input or request.input_list}")
        writer.close()
    finally:
        sorter.close()
    return StoredPlan.open(plan_dir)


def detect_format(suffixes: set[str]) -> str:
    """``wds`` for tar shards, ``parquet`` for tables (other files beside them, such as a
    ``manifest.json``, are ignored), ``images`` as soon as any image file is present."""
    if suffixes & IMAGE_SUFFIXES:
        return "images"
    if "tar" in suffixes and "parquet" not in suffixes:
        return "wds"
    if "parquet" in suffixes and "tar" not in suffixes:
        return "parquet"
    return "images"


# ---- into the sorter

def _sort_listing(sorter: ExternalSorter, pages: Iterable[Page]) -> set[str]:
    suffixes: set[str] = set()
    for page in pages:
        if not page:
            continue
        rel = pa.array([p for p, _ in page], pa.string())
        n = len(page)
        batch = pa.table({"key": manifest.derive_keys(rel), "seq": pa.array(range(sorter.rows, sorter.rows + n),
                                                                            pa.int64()),
                          "explicit": pa.array([False] * n), "rel": rel, "uri": pa.nulls(n, pa.string()),
                          "size": pa.array([s for _, s in page], pa.int64()), "status": pa.array(["ok"] * n),
                          "error": pa.nulls(n, pa.string())}, schema=LISTING_SCHEMA)
        ext = pc.utf8_lower(pc.replace_substring_regex(rel, r"^(?:.*/)?(?:[^/]+\.([^./]*)|[^/.]*)$", r"\1"))
        suffixes.update(s for s in pc.unique(ext).to_pylist() if s)
        sorter.add(batch)
    return suffixes


def _sort_entries(sorter: ExternalSorter, batches: Iterable[pa.Table]) -> None:
    for table in batches:
        n = table.num_rows
        invalid = pc.equal(table.column("status"), manifest.INVALID_STATUS)
        seq = pa.array(range(sorter.rows, sorter.rows + n), pa.int64())
        # an invalid entry has no trustworthy key: it is named by its place in the manifest
        placeholder = pc.binary_join_element_wise("invalid-entry/", pc.utf8_lpad(pc.cast(seq, pa.string()), 12, "0"),
                                                  "")
        key = pc.if_else(invalid, placeholder, table.column("key"))
        sorter.add(pa.table({"key": key, "seq": seq, "explicit": pc.if_else(invalid, False, table.column("explicit")),
                             "rel": table.column("rel"), "uri": table.column("uri"), "size": table.column("size"),
                             "status": table.column("status"), "error": table.column("error")},
                            schema=LISTING_SCHEMA))


def _with_suffix(rows: Iterator[pa.Table], suffix: str) -> Iterator[pa.Table]:
    for table in rows:
        yield table.filter(pc.ends_with(pc.utf8_lower(table.column("rel")), suffix))


# ---- settling keys and cutting parts

class _Keys:
    """Resolves groups of equal keys, which the sort put side by side (a group may cross batches)."""

    def __init__(self) -> None:
        self.group: list[dict] = []

    def feed(self, table: pa.Table) -> Iterator[pa.Table]:
        """Rows whose key group is complete, with final keys and statuses."""
        if table.num_rows == 0:
            return
        keys = table.column("key").combine_chunks()
        tail_start = table.num_rows - 1
        last = keys[tail_start].as_py()
        while tail_start > 0 and keys[tail_start - 1].as_py() == last:
            tail_start -= 1
        head = table.slice(0, tail_start)
        if self.group and head.num_rows:
            first = head.column("key")[0].as_py()
            if first == self.group[0]["key"]:
                extra = _leading_run(head.column("key").combine_chunks(), first)
                self.group.extend(head.slice(0, extra).to_pylist())
                head = head.slice(extra)
            if head.num_rows:
                yield from self.flush()
        if head.num_rows:
            yield _settle_table(head)
        tail = table.slice(tail_start).to_pylist()
        if self.group and self.group[0]["key"] != tail[0]["key"]:
            yield from self.flush()
        self.group.extend(tail)

    def flush(self) -> Iterator[pa.Table]:
        if self.group:
            yield pa.Table.from_pylist(_settle_group(self.group), LISTING_SCHEMA)
            self.group = []


def _leading_run(keys: pa.Array, key: str) -> int:
    unequal = pc.not_equal(keys, pa.scalar(key))
    index = pc.index(unequal, True).as_py()
    return len(keys) if index < 0 else index


def _settle_table(table: pa.Table) -> pa.Table:
    """Rows with equal keys inside ``table`` (rare) are settled in Python; the rest pass as they are."""
    keys = table.column("key").combine_chunks()
    if len(keys) < 2:
        return table
    same_as_next = pc.equal(keys.slice(0, len(keys) - 1), keys.slice(1))
    if not pc.any(same_as_next).as_py():
        return table
    rows = table.to_pylist()
    out, i = [], 0
    while i < len(rows):
        j = i + 1
        while j < len(rows) and rows[j]["key"] == rows[i]["key"]:
            j += 1
        out.extend(_settle_group(rows[i:j]) if j - i > 1 else rows[i:j])
        i = j
    return pa.Table.from_pylist(out, LISTING_SCHEMA)


def _settle_group(group: list[dict]) -> list[dict]:
    """Files that differ only by extension keep their whole relative path; a key given twice (or the
    same object twice) becomes ``duplicate_key`` rows after the first."""
    if len(group) == 1:
        return group
    derived = [r for r in group if not r["explicit"] and r["status"] == "ok"]
    if len({r["rel"] for r in derived}) > 1:
        for r in derived:
            r["key"] = r["rel"]
    seen: dict[str, str] = {}
    for r in sorted(group, key=lambda r: r["seq"]):
        if r["key"] in seen and r["status"] != manifest.INVALID_STATUS:
            first, copy = r["key"], 2
            while f"{first}~{copy}" in seen:
                copy += 1
            r.update(key=f"{first}~{copy}", status="duplicate_key",
                     error=f"key {first!r} appears again in the input (first: {seen[first]}); this copy is not "
                           f"encoded")
        seen[r["key"]] = r["uri"] or r["rel"]
    return sorted(group, key=lambda r: (r["key"], r["seq"]))


def _settled(rows: Iterator[pa.Table]) -> Iterator[pa.Table]:
    keys = _Keys()
    for table in rows:
        yield from keys.feed(table)
    yield from keys.flush()


def _limited(rows: Iterator[pa.Table], limit: int | None) -> Iterator[pa.Table]:
    left = limit
    for table in rows:
        if left is not None:
            table = table.slice(0, left)
            left -= table.num_rows
        if table.num_rows:
            yield table
        if left == 0:
            return


def _with_uris(table: pa.Table, root_uri: str) -> pa.Array:
    listed = pc.binary_join_element_wise(root_uri, table.column("rel"), "")
    return pc.coalesce(table.column("uri"), listed)


def _image_items(rows: Iterator[pa.Table], root_uri: str, request: PlanRequest) -> Iterator[pa.Table]:
    done = 0
    for table in _limited(_settled(rows), request.limit):
        n = table.num_rows
        position = pa.array(range(done, done + n), pa.int64())
        done += n
        yield pa.table({
            "shard": pc.divide(position, request.rows_per_part), "item": _mod(position, request.rows_per_part),
            "key": table.column("key"), "uri": _with_uris(table, root_uri), "size": table.column("size"),
            "row_start": pa.array([0] * n, pa.int64()), "row_stop": pa.array([0] * n, pa.int64()),
            "image_column": pa.nulls(n, pa.string()), "key_column": pa.nulls(n, pa.string()),
            "status": table.column("status"), "error": table.column("error")}, schema=ITEM_SCHEMA)


def _mod(position: pa.Array, divisor: int) -> pa.Array:
    return pc.subtract(position, pc.multiply(pc.divide(position, divisor), divisor))


def _tar_items(rows: Iterator[pa.Table], root_uri: str, request: PlanRequest) -> Iterator[pa.Table]:
    done = 0
    for table in _limited(rows, request.limit):
        n = table.num_rows
        yield pa.table({
            "shard": pa.array(range(done, done + n), pa.int64()), "item": pa.array([0] * n, pa.int64()),
            "key": table.column("key"), "uri": _with_uris(table, root_uri), "size": table.column("size"),
            "row_start": pa.array([0] * n, pa.int64()), "row_stop": pa.array([0] * n, pa.int64()),
            "image_column": pa.array([request.image_column] * n, pa.string()),
            "key_column": pa.nulls(n, pa.string()), "status": table.column("status"),
            "error": table.column("error")}, schema=ITEM_SCHEMA)
        done += n


FOOTER_THREADS = 16


def _table_items(rows: Iterator[pa.Table], location: Location, request: PlanRequest) -> Iterator[pa.Table]:
    """Row-range items of each table, from its footer (read in a bounded window of threads). Raises
    when no table at all is usable: the input or ``--image-column`` is then wrong, not one file."""
    files = ((r["rel"], r["size"]) for table in rows for r in table.select(["rel", "size"]).to_pylist())
    root = location.root if not location.fs.isfile(location.root) else posixpath.dirname(location.root)
    shard, left, usable, problems = 0, request.limit, False, []

    def footer(entry):
        rel, size = entry
        return tables.table_items(location, f"{root.rstrip('/')}/{rel}", rel, size, request.image_column,
                                  request.key_column, request.rows_per_part, None)

    with ThreadPoolExecutor(FOOTER_THREADS) as pool:
        for items, problem in _bounded_map(pool, footer, files, 2 * FOOTER_THREADS):
            if problem:
                problems.append(problem)
            out = []
            for item in items:
                if left is not None:
                    rows_here = max(1, item["row_stop"] - item["row_start"])
                    if left <= 0:
                        break
                    if item["row_stop"] > item["row_start"]:
                        item["row_stop"] = item["row_start"] + min(rows_here, left)
                    left -= min(rows_here, left)
                usable = usable or item["image_column"] is not None
                out.append({**item, "shard": shard, "item": 0})
                shard += 1
            if out:
                yield pa.Table.from_pylist(out, ITEM_SCHEMA)
            if left is not None and left <= 0:
                break
    if not usable:
        raise ValueError("no usable Parquet table among the input files: " + "; ".join(problems[:3]))


def _bounded_map(pool: ThreadPoolExecutor, fn, entries: Iterator, window: int) -> Iterator:
    """``map`` in input order with at most ``window`` calls pending (``Executor.map`` submits everything)."""
    pending = []
    for entry in entries:
        pending.append(pool.submit(fn, entry))
        if len(pending) >= window:
            yield pending.pop(0).result()
    for future in pending:
        yield future.result()


def _rechunk_items(tables_in: Iterator[pa.Table]) -> Iterator[pa.RecordBatch]:
    """Items in batches of exactly PLAN_BATCH_ROWS (the last shorter), so the plan's digest depends only
    on the items."""
    pending: list[pa.Table] = []
    have = 0
    for table in tables_in:
        pending.append(table)
        have += table.num_rows
        while have >= PLAN_BATCH_ROWS:
            joined = pa.concat_tables(pending).combine_chunks()
            yield from joined.slice(0, PLAN_BATCH_ROWS).to_batches()
            rest = joined.slice(PLAN_BATCH_ROWS)
            pending, have = [rest], rest.num_rows
    if have:
        yield from pa.concat_tables(pending).combine_chunks().to_batches()


def describe(plan: StoredPlan) -> str:
    info = plan.info
    return json.dumps({"kind": info.kind, "items": info.items, "shards": info.shards, "digest": info.digest})
