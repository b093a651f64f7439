"""Writing and reading the jobs' output files: Parquet parts, their sidecars, the job and stats files.

Output layout of the encode job (the *archive*, CONTRACTS §1)::

    <output>/part-00000.parquet   one per plan shard, rows sorted by key, written whole (never half a file)
    <output>/_parts/part-00000.json  the part's summary (rows, size, sha256, key range, counts), written
                                  right after the part commits; _stats.json and _index/ come from these
    <output>/_plan/...            the stored plan (pipeline.inputs.plan)
    <output>/_index/parts.parquet part -> rows and key range, for lookups (pipeline.lookup)
    <output>/_job.json            what the output was started with; a rerun must match it
    <output>/_stats.json          the summary of the whole output

The parts read as one table with no project code: pyarrow and pandas skip names starting with
``_`` or ``.``, and a glob over ``OUTPUT/*.parquet`` (DuckDB, Polars) sees only the parts, since
every other Parquet file lives in a ``_`` folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.schema import ARCHIVE_COLUMNS, MANIFEST_COLUMNS, RECORD_COLUMN, Column, arrow_schema
from pipeline.storage import Location

JOB_FILE = "_job.json"
STATS_FILE = "_stats.json"
INDEX_FILE = "_index/parts.parquet"  # in a folder: DuckDB and Polars globs skip folders, not "_" names
PARTS_DIR = "_parts"
MAX_ROW_GROUP_BYTES = 64 * 1024 * 1024  # binary data per row group: far below Arrow's 2 GiB array limit
MAX_ROW_GROUP_ROWS = 1024  # small enough that a key lookup reads about 1.5 MB of 512² records, not a part
FOOTER_KEYS = ("job_id", "plan_digest", "shard", "rows", "first_key", "last_key")  # sprdiff.<name>


def _null_if(column: pa.ChunkedArray, sentinel) -> pa.ChunkedArray:
    return pc.if_else(pc.equal(column, pa.scalar(sentinel, column.type)), pa.scalar(None, column.type), column)


def _final_table(rows: pa.Table, columns: tuple[Column, ...], computed: dict[str, pa.Array]) -> pa.Table:
    arrays = []
    for c in columns:
        col = computed[c.name] if c.name in computed else rows.column(c.name)
        if c.nullable and c.name not in computed:
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                col = _null_if(col, "")
            elif pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
                col = _null_if(col, b"")
            elif pa.types.is_integer(col.type):
                col = pc.if_else(pc.less(col, 0), pa.scalar(None, col.type), col)
        arrays.append(pc.cast(col, c.type) if col.type != c.type else col)
    return pa.Table.from_arrays(arrays, schema=pa.schema([c.field() for c in columns]))


def archive_table(rows: pa.Table) -> pa.Table:
    """Collected encode rows (with the stages' sentinels) -> the archive's columns, nulls where missing,
    sorted by key."""
    num_bytes = pc.cast(rows.column("num_bytes"), pa.float64())
    pixels = pc.multiply(pc.cast(rows.column("width"), pa.float64()), pc.cast(rows.column("height"), pa.float64()))
    ok = pc.greater_equal(num_bytes, 0)
    bpp = pc.if_else(ok, pc.divide(pc.multiply(num_bytes, 8.0), pixels), pa.scalar(None, pa.float64()))
    return _final_table(rows, ARCHIVE_COLUMNS, {"bpp": bpp}).sort_by("key")


def manifest_table(rows: pa.Table) -> pa.Table:
    """Collected decode rows -> the manifest's columns, sorted by key."""
    return _final_table(rows, MANIFEST_COLUMNS, {}).sort_by("key")


def parquet_bytes(table: pa.Table, columns: tuple[Column, ...], metadata: dict[str, str]) -> bytes:
    """The table as a Parquet file, schema (and ``metadata``) in its key-value metadata.

    Row groups hold at most 1,024 rows and 64 MiB of data, with statistics, so a reader looking for
    a key skips every group whose key range misses it; bitstreams are stored uncompressed (they are
    entropy-coded), the rest with zstd; page checksums let a reader catch a flipped byte.
    """
    schema = arrow_schema(columns, metadata)
    table = table.replace_schema_metadata(schema.metadata)
    compression = {c.name: ("none" if c.name == RECORD_COLUMN else "zstd") for c in columns}
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, schema, compression=compression, write_page_checksum=True) as writer:
        for chunk in _row_group_slices(table):
            writer.write_table(chunk, row_group_size=MAX_ROW_GROUP_ROWS)
    return buf.getvalue()


def _row_group_slices(table: pa.Table):
    if table.num_rows == 0:
        yield table
        return
    sizes = [0] * table.num_rows
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_binary(col.type) or pa.types.is_string(col.type):
            lengths = pc.fill_null(pc.binary_length(col), 0).to_pylist()
            sizes = [a + b for a, b in zip(sizes, lengths)]
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and (total + size > MAX_ROW_GROUP_BYTES or i - start >= MAX_ROW_GROUP_ROWS):
            yield table.slice(start, i - start)
            start, total = i, 0
        total += size
    yield table.slice(start)


def write_parquet(location: Location, relative_path: str, table: pa.Table, columns: tuple[Column, ...],
                  metadata: dict[str, str]) -> str:
    path = location.path(relative_path)
    location.write_bytes(path, parquet_bytes(table, columns, metadata))
    return path


def key_range(table: pa.Table) -> tuple[str, str]:
    if table.num_rows == 0:
        return "", ""
    keys = table.column("key")
    return pc.min(keys).as_py() or "", pc.max(keys).as_py() or ""


def footer_metadata(job_id: str, plan_digest: str, shard: int, table: pa.Table) -> dict[str, str]:
    first, last = key_range(table)
    return {"job_id": job_id, "plan_digest": plan_digest, "shard": str(shard), "rows": str(table.num_rows),
            "first_key": first, "last_key": last}


# ---- part summaries (the _parts/ sidecars)

def summarise_archive_part(name: str, shard: int, job_id: str, data: bytes, table: pa.Table) -> dict:
    """CONTRACTS §1's sidecar of an archive part, from the part's bytes and rows."""
    ok = table.filter(pc.equal(table.column("status"), "ok")) if table.num_rows else table
    first, last = key_range(table)
    pixels = pc.sum(pc.multiply(pc.cast(ok.column("width"), pa.int64()), pc.cast(ok.column("height"), pa.int64())))
    return {"part": name, "shard": shard, "job_id": job_id, "rows": table.num_rows, "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "first_key": first, "last_key": last,
            "counts": status_counts(table), "record_bytes": _sum(ok, "num_bytes"),
            "pixels_ok": int(pixels.as_py() or 0) if ok.num_rows else 0, "source_bytes": _sum(table, "source_bytes"),
            "fingerprints": sorted(set(ok.column("model_fingerprint").to_pylist())) if ok.num_rows else [],
            "rate_counts": rate_counts(ok), "budget_warnings": _non_null(table, "warning")}


def rate_counts(table: pa.Table) -> dict[str, int]:
    """Rows by rate id (as a string: a JSON key), of the rows that have one; {} for a part of layout 2."""
    if "rate_id" not in table.column_names or table.num_rows == 0:
        return {}
    counts = table.column("rate_id").drop_null().value_counts().to_pylist()
    return {str(c["values"]): int(c["counts"]) for c in sorted(counts, key=lambda c: c["values"])}


def _non_null(table: pa.Table, name: str) -> int:
    return table.num_rows - table.column(name).null_count if name in table.column_names else 0


def summarise_manifest_part(name: str, shard: int, job_id: str, data: bytes, table: pa.Table) -> dict:
    """The decode job's sidecar of one manifest part (same fields where they mean the same)."""
    ok = table.filter(pc.equal(table.column("status"), "ok")) if table.num_rows else table
    first, last = key_range(table)
    pixels = pc.sum(pc.multiply(pc.cast(ok.column("width"), pa.int64()), pc.cast(ok.column("height"), pa.int64())))
    return {"part": name, "shard": shard, "job_id": job_id, "rows": table.num_rows, "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "first_key": first, "last_key": last,
            "counts": status_counts(table), "record_bytes": _sum(ok, "record_bytes"),
            "pixels_ok": int(pixels.as_py() or 0) if ok.num_rows else 0, "image_bytes": _sum(ok, "image_bytes")}


def status_counts(table: pa.Table) -> dict[str, int]:
    if table.num_rows == 0:
        return {}
    counts = table.column("status").value_counts().to_pylist()
    return {c["values"]: int(c["counts"]) for c in sorted(counts, key=lambda c: c["values"])}


def _sum(table: pa.Table, name: str) -> int:
    if name not in table.column_names or table.num_rows == 0:
        return 0
    return int(pc.sum(table.column(name)).as_py() or 0)


def sidecar_path(location: Location, name: str) -> str:
    return location.path(PARTS_DIR, f"{name}.json")


def write_sidecar(location: Location, summary: dict) -> None:
    location.write_bytes(sidecar_path(location, summary["part"]), json.dumps(summary, sort_keys=True).encode())


def read_sidecar(location: Location, name: str) -> dict | None:
    try:
        return json.loads(location.read_bytes(sidecar_path(location, name)))
    except (FileNotFoundError, ValueError):
        return None


def file_metadata(location: Location, path: str) -> dict[str, str]:
    """The key-value metadata of a Parquet file (``sprdiff.schema``, ``sprdiff.model_source``, ...)."""
    with location.fs.open(path, "rb") as f:
        kv = pq.ParquetFile(f).schema_arrow.metadata or {}
    return {k.decode(): v.decode() for k, v in kv.items()}


def footer(location: Location, path: str) -> tuple[int, dict[str, str]] | None:
    """``(rows, sprdiff.* metadata without the prefix)`` of a part, or None if its footer does not read."""
    try:
        with location.fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            kv = pf.schema_arrow.metadata or {}
            rows = pf.metadata.num_rows
    except (OSError, pa.ArrowException, ValueError):
        return None
    meta = {k.decode().removeprefix("sprdiff."): v.decode() for k, v in kv.items() if k.startswith(b"sprdiff.")}
    return rows, meta


# ---- the job file: what an output was started with

def new_job_id() -> str:
    return uuid.uuid4().hex


def check_job_file(location: Location, job: dict, *, ignore: tuple[str, ...] = ("job_id", "plan_digest")) -> dict:
    """Write ``_job.json`` for a new output, or refuse to mix a rerun with different settings.

    Returns the job file as stored (a rerun gets the first run's ``job_id`` and ``plan_digest``).
    """
    path = location.path(JOB_FILE)
    location.refresh()
    if location.exists(path):
        before = json.loads(location.read_bytes(path))
        changed = {k: (before.get(k), v) for k, v in job.items() if k not in ignore and before.get(k) != v}
        if changed:
            lines = "; ".join(f"{k}: {old!r} then, {new!r} now" for k, (old, new) in sorted(changed.items()))
            raise ValueError(f"{location.uri()} was started with other settings ({lines}). Rerun with the same "
                             f"input and options to resume it, or write to a new --output")
        return before
    location.write_bytes(path, json.dumps(job, indent=2, sort_keys=True).encode())
    return job


def write_stats(location: Location, stats: dict) -> str:
    path = location.path(STATS_FILE)
    location.write_bytes(path, (json.dumps(stats, indent=2, sort_keys=True) + "\n").encode())
    return path
