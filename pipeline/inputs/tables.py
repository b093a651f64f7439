"""Parquet tables with an image-bytes column: items are row ranges of a table, one archive row per row.

A table that cannot be read, or whose image column is missing or holds something other than
bytes, still gets its items: their rows become status rows, unless no table of the input is
usable (then planning raises: the command is probably wrong).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.inputs.items import SourceItem
from pipeline.inputs.plan import PlanItem, read_row_range
from pipeline.keys import shard_member_key, strip_extension
from pipeline.storage import Location

IMAGE_COLUMN_GUESSES = ("image", "img", "jpg", "jpeg", "png", "webp", "image_bytes", "bytes", "content", "data")
KEY_COLUMN_GUESSES = ("key", "__key__", "id", "name", "filename")


def _guess_column(schema: pa.Schema, wanted: str | None, guesses: tuple[str, ...], what: str,
                  accept) -> str | None:
    names = schema.names
    if wanted is not None:
        if wanted not in names:
            raise ValueError(f"{what} column {wanted!r} is not in the Parquet schema (columns: {names})")
        return wanted
    for name in guesses:
        if name in names and accept(schema.field(name).type):
            return name
    return None


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)


def _is_image_type(t: pa.DataType) -> bool:
    """Bytes, or a Hugging Face style struct whose ``bytes`` field is bytes."""
    if _is_binary(t):
        return True
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and _is_binary(t.field("bytes").type)


IMAGE_TYPES = "binary, or a struct with a binary 'bytes' field"


def _image_column(schema: pa.Schema, wanted: str | None) -> tuple[str | None, str, str | None]:
    """``(column, "ok", None)``, or ``(None, status, message)`` saying why this table has no image column."""
    names = schema.names
    if wanted is not None:
        if wanted not in names:
            return None, "no_image", f"image column {wanted!r} is not in the Parquet schema (columns: {names})"
        if not _is_image_type(schema.field(wanted).type):
            return None, "wrong_type", (f"image column {wanted!r} holds {schema.field(wanted).type}, not image bytes "
                                        f"({IMAGE_TYPES})")
        return wanted, "ok", None
    found = _guess_column(schema, None, IMAGE_COLUMN_GUESSES, "image", _is_image_type)
    found = found or next((n for n in names if _is_image_type(schema.field(n).type)), None)
    if found is not None:
        return found, "ok", None
    named = next((n for n in IMAGE_COLUMN_GUESSES if n in names), None)
    if named is not None:
        return None, "wrong_type", (f"column {named!r} holds {schema.field(named).type}, not image bytes "
                                    f"({IMAGE_TYPES}); name the image column with --image-column")
    return None, "no_image", f"no image-bytes column (columns: {names}); name it with --image-column"


def _is_key_type(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)




def read_tables(items: list[PlanItem]) -> Iterator[SourceItem]:
    for item in items:
        yield from _read_rows(item)


def table_items(location: Location, path: str, relative: str, size: int, image_column: str | None,
                key_column: str | None, rows_per_part: int, limit: int | None) -> tuple[list[dict], str | None]:
    """The items (row ranges of at most ``rows_per_part`` rows) of one table, and a problem to report.

    Reads the table's footer only. An unreadable table is one item whose row becomes a ``read_error``.
    """
    uri, shard_key = location.uri(path), strip_extension(relative)
    base = {"key": shard_key, "uri": uri, "size": size, "image_column": None, "key_column": None}
    try:
        with location.fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
            schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as e:
        message = f"not a readable Parquet file: {e}"
        return [{**base, "row_start": 0, "row_stop": 0, "status": "read_error", "error": message}], \
            f"{uri}: {message}"
    image_col, status, message = _image_column(schema, image_column)
    key_col = _guess_column(schema, key_column, KEY_COLUMN_GUESSES, "key", _is_key_type)
    rows = meta.num_rows if limit is None else min(meta.num_rows, limit)
    items = [{**base, "row_start": start, "row_stop": min(rows, start + rows_per_part), "image_column": image_col,
              "key_column": key_col, "status": status, "error": message}
             for start in range(0, rows, rows_per_part)]
    return items, (None if message is None else f"{uri}: {message}")


def _image_bytes(value) -> tuple[bytes | None, str, str | None]:
    """``(bytes, "ok", None)`` for a Parquet image cell, or ``(None, status, message)`` saying why not."""
    if isinstance(value, dict):  # Hugging Face style {"bytes": ..., "path": ...}
        value = value.get("bytes")
    if value is None:
        return None, "empty", "image column is null"
    if not isinstance(value, bytes | bytearray | memoryview):
        return None, "wrong_type", f"image cell holds {type(value).__name__}, not bytes"
    return bytes(value), "ok", None


def _row_keys(shard: PlanItem, names: list) -> list[str]:
    shard_key = shard.key
    return [shard_member_key(shard_key, str(name) if name is not None else f"{shard.row_start + i:08d}")
            for i, name in enumerate(names)]


def _read_rows(shard: PlanItem) -> Iterator[SourceItem]:
    uri, shard_key = shard.uri, shard.key
    location = Location.of(uri)
    t0 = time.perf_counter()
    if shard.status != "ok":
        yield from _problem_rows(shard, location, t0)
        return
    columns = [shard.image_column] + ([shard.key_column] if shard.key_column else [])
    try:
        with location.fs.open(location.root, "rb") as f:
            table = read_row_range(pq.ParquetFile(f), columns, shard.row_start, shard.row_stop)
    except (OSError, pa.ArrowException) as e:
        seconds = time.perf_counter() - t0
        for row in range(shard.row_start, shard.row_stop):
            yield SourceItem(shard_member_key(shard_key, f"{row:08d}"), uri, None, status="read_error",
                             error=f"cannot read Parquet rows: {e}", read_s=seconds)
        return
    seconds = (time.perf_counter() - t0) / max(1, table.num_rows)
    images = table.column(shard.image_column).to_pylist()
    names = table.column(shard.key_column).to_pylist() if shard.key_column else [None] * len(images)
    for key, value in zip(_row_keys(shard, names), images):
        data, status, problem = _image_bytes(value)
        yield SourceItem(key, uri, data, status=status, error=problem, read_s=seconds)


def _problem_rows(shard: PlanItem, location: Location, t0: float) -> Iterator[SourceItem]:
    """The rows of a table planning found unusable, each with the table's status (keys from the key
    column where it can be read); an unreadable file is one row keyed by the file."""
    uri, shard_key = shard.uri, shard.key
    where = f"{shard.error} (in {uri})"
    if shard.row_stop <= shard.row_start:
        yield SourceItem(shard_key, uri, None, status=shard.status, error=where, read_s=time.perf_counter() - t0)
        return
    names: list = [None] * (shard.row_stop - shard.row_start)
    if shard.key_column:
        try:
            with location.fs.open(location.root, "rb") as f:
                table = read_row_range(pq.ParquetFile(f), [shard.key_column], shard.row_start, shard.row_stop)
            names = table.column(shard.key_column).to_pylist()
        except (OSError, pa.ArrowException):
            pass  # row numbers, then
    seconds = (time.perf_counter() - t0) / len(names)
    for key in _row_keys(shard, names):
        yield SourceItem(key, uri, None, status=shard.status, error=where, read_s=seconds)
