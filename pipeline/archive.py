"""Writing and reading the jobs' output files: Parquet parts, the job file, the stats file.

Output layout of the encode job (the *archive*)::

    <output>/part-00000.parquet   one per work shard, written whole (never half a file)
    <output>/_job.json            what the output was started with; a rerun must match it
    <output>/_stats.json          the last run's summary

Files whose names start with ``_`` or ``.`` are skipped by pyarrow, pandas, DuckDB and Polars
globs over ``*.parquet``, so the parts read as one table with no project code.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.schema import ARCHIVE_COLUMNS, MANIFEST_COLUMNS, Column, arrow_schema
from pipeline.storage import Location

JOB_FILE = "_job.json"
STATS_FILE = "_stats.json"
MAX_ROW_GROUP_BYTES = 64 * 1024 * 1024  # binary data per row group: far below Arrow's 2 GiB array limit
MAX_ROW_GROUP_ROWS = 8192


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
    """Collected encode rows (with the stages' sentinels) -> the archive's columns, nulls where missing."""
    num_bytes = pc.cast(rows.column("num_bytes"), pa.float64())
    pixels = pc.multiply(pc.cast(rows.column("width"), pa.float64()), pc.cast(rows.column("height"), pa.float64()))
    ok = pc.greater_equal(num_bytes, 0)
    bpp = pc.if_else(ok, pc.divide(pc.multiply(num_bytes, 8.0), pixels), pa.scalar(None, pa.float64()))
    return _final_table(rows, ARCHIVE_COLUMNS, {"bpp": bpp})


def manifest_table(rows: pa.Table) -> pa.Table:
    """Collected decode rows -> the manifest's columns."""
    return _final_table(rows, MANIFEST_COLUMNS, {})


def parquet_bytes(table: pa.Table, columns: tuple[Column, ...], metadata: dict[str, str]) -> bytes:
    """The table as a Parquet file, schema (and ``metadata``) in its key-value metadata.

    Row groups hold at most 64 MiB of data, so no binary column chunk comes near Arrow's 2 GiB
    limit; bitstreams are stored uncompressed (they are entropy-coded), the rest with zstd.
    """
    schema = arrow_schema(columns, metadata)
    table = table.replace_schema_metadata(schema.metadata)
    compression = {c.name: ("none" if c.name == "bitstream" else "zstd") for c in columns}
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, schema, compression=compression) as writer:
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


def existing_parts(location: Location, pattern: str = "part-*.parquet") -> set[str]:
    """Names (``part-00012``) of the complete parts already under the output."""
    location.refresh()
    if not location.exists(location.root):
        return set()
    found = location.fs.glob(location.path(pattern))
    return {p.rsplit("/", 1)[-1].rsplit(".", 1)[0] for p in found}


def read_columns(location: Location, names: list[str], columns: list[str]) -> pa.Table:
    """``columns`` of the named parts (``part-00012.parquet``), concatenated, without the big binaries."""
    tables = []
    for name in sorted(names):
        with location.fs.open(location.path(name), "rb") as f:
            tables.append(pq.read_table(f, columns=columns))
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


def part_metadata(location: Location, name: str) -> dict[str, str]:
    return file_metadata(location, location.path(name))


def file_metadata(location: Location, path: str) -> dict[str, str]:
    """The key-value metadata of a Parquet file (``sprdiff.schema``, ``sprdiff.model_source``, ...)."""
    with location.fs.open(path, "rb") as f:
        kv = pq.ParquetFile(f).schema_arrow.metadata or {}
    return {k.decode(): v.decode() for k, v in kv.items()}


# ---- the job file: what an output was started with

def check_job_file(location: Location, job: dict) -> None:
    """Write ``_job.json`` for a new output, or refuse to mix a rerun with different settings."""
    path = location.path(JOB_FILE)
    location.refresh()
    if location.exists(path):
        before = json.loads(location.read_bytes(path))
        changed = {k: (before.get(k), v) for k, v in job.items() if before.get(k) != v}
        if changed:
            lines = "; ".join(f"{k}: {old!r} then, {new!r} now" for k, (old, new) in sorted(changed.items()))
            raise ValueError(f"{location.uri()} was started with other settings ({lines}). Rerun with the same "
                             f"input and options to resume it, or write to a new --output")
        return
    location.write_bytes(path, json.dumps(job, indent=2, sort_keys=True).encode())


def write_stats(location: Location, stats: dict) -> str:
    path = location.path(STATS_FILE)
    location.write_bytes(path, (json.dumps(stats, indent=2, sort_keys=True) + "\n").encode())
    return path
