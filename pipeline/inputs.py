"""Inputs of the encode job: listing a prefix, cutting it into work shards, reading one shard.

Three kinds of input, told apart by file names (``--input-format auto``) or chosen explicitly:

* ``images``  — image files under a prefix; one item per file.
* ``wds``     — WebDataset ``.tar`` shards; one item per sample (the member with an image suffix).
* ``parquet`` — Parquet tables with an image-bytes column; one item per row.

The listing is sorted, so the shards (and the output file names derived from their index) are
the same on every run over the same input. Reading never raises for bad data: an item that
cannot be read becomes a :class:`SourceItem` with a status and a message.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_iterator

from pipeline.keys import file_keys, shard_member_key, strip_extension
from pipeline.storage import Location

INPUT_FORMATS = ("auto", "images", "wds", "parquet")
IMAGE_COLUMN_GUESSES = ("image", "img", "jpg", "jpeg", "png", "webp", "image_bytes", "bytes", "content", "data")
KEY_COLUMN_GUESSES = ("key", "__key__", "id", "name", "filename")
IMAGE_SUFFIXES = frozenset(ext.lstrip(".").lower() for ext in Image.registered_extensions())


@dataclass(frozen=True)
class WorkShard:
    """A deterministic unit of work; its output is ``<output>/<name>.parquet``."""

    index: int
    kind: str  # images | wds | parquet
    uris: tuple[str, ...]  # images: one per file; wds, parquet: the one shard file
    keys: tuple[str, ...]  # images: one per file; wds, parquet: the shard's key prefix
    row_start: int = 0  # parquet: rows [row_start, row_stop) of the file
    row_stop: int = 0
    image_column: str | None = None  # parquet: column (wds: member suffix) holding the image bytes
    key_column: str | None = None  # parquet: column with per-row keys (else the row number)

    @property
    def name(self) -> str:
        return shard_name(self.index)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkShard:
        d = json.loads(text)
        return cls(**{**d, "uris": tuple(d["uris"]), "keys": tuple(d["keys"])})


def shard_name(index: int) -> str:
    return f"part-{index:05d}"


@dataclass(frozen=True)
class InputPlan:
    kind: str
    shards: tuple[WorkShard, ...]
    num_files: int
    digest: str  # sha256 over the listing: a rerun into the same output must see the same input
    details: dict = field(default_factory=dict)


@dataclass
class SourceItem:
    """One input read from storage: bytes, or a status saying why there are none."""

    key: str
    source_uri: str
    data: bytes | None
    status: str = "ok"
    error: str | None = None
    read_s: float = 0.0


def _visible(relative_path: str) -> bool:
    return not any(part.startswith(".") for part in relative_path.split("/"))


def list_files(location: Location) -> list[tuple[str, str, int]]:
    """Sorted ``(path, relative path, size)`` of every visible file under the location (or the file itself)."""
    fs, root = location.fs, location.root
    if not fs.exists(root):
        raise FileNotFoundError(f"input {location.uri()} does not exist")
    if fs.isfile(root):
        return [(root, posixpath.basename(root), fs.size(root))]
    found = fs.find(root, detail=True)
    rows = []
    for path, info in found.items():
        if info.get("type", "file") != "file":
            continue
        relative = path[len(root.rstrip("/")) + 1:]
        if relative and _visible(relative):
            rows.append((path, relative, int(info.get("size") or 0)))
    return sorted(rows, key=lambda r: r[1])


def detect_format(relative_paths: list[str]) -> str:
    """``wds`` for tar shards, ``parquet`` for tables (other files beside them, such as a
    ``manifest.json``, are ignored), ``images`` as soon as any image file is present."""
    suffixes = {posixpath.splitext(p)[1].lower().lstrip(".") for p in relative_paths}
    if suffixes & IMAGE_SUFFIXES:
        return "images"
    if "tar" in suffixes and "parquet" not in suffixes:
        return "wds"
    if "parquet" in suffixes and "tar" not in suffixes:
        return "parquet"
    return "images"


def plan_inputs(uri: str, *, input_format: str = "auto", shard_size: int = 64, limit: int | None = None,
                image_column: str | None = None, key_column: str | None = None) -> InputPlan:
    """List the input and cut it into work shards of at most ``shard_size`` items.

    ``limit`` keeps the first N items in listing order: image files, Parquet rows, or (for
    WebDataset input) tar shards.
    """
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input format must be one of {INPUT_FORMATS}, got {input_format!r}")
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    location = Location.of(uri)
    files = list_files(location)
    if not files:
        raise FileNotFoundError(f"no input files under {location.uri()}")
    kind = detect_format([f[1] for f in files]) if input_format == "auto" else input_format
    if kind == "images":
        return _plan_images(location, files, shard_size, limit)
    if kind == "wds":
        return _plan_tars(location, _with_suffix(files, ".tar"), limit, image_column)
    return _plan_parquet(location, _with_suffix(files, ".parquet"), shard_size, limit, image_column, key_column)


def _with_suffix(files: list[tuple[str, str, int]], suffix: str) -> list[tuple[str, str, int]]:
    kept = [f for f in files if f[1].lower().endswith(suffix)]
    if not kept:
        raise FileNotFoundError(f"no {suffix} files among the {len(files)} input files")
    return kept


def _digest(kind: str, lines: list[str]) -> str:
    h = hashlib.sha256(kind.encode())
    for line in lines:
        h.update(b"\n" + line.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _plan_images(location: Location, files: list[tuple[str, str, int]], shard_size: int,
                 limit: int | None) -> InputPlan:
    files = files[:limit] if limit is not None else files
    keys = file_keys([f[1] for f in files])
    uris = [location.uri(f[0]) for f in files]
    shards = tuple(
        WorkShard(index=i // shard_size, kind="images", uris=tuple(uris[i:i + shard_size]),
                  keys=tuple(keys[i:i + shard_size]))
        for i in range(0, len(files), shard_size))
    lines = [f"{k}\t{u}\t{f[2]}" for k, u, f in zip(keys, uris, files)] + [f"shard_size={shard_size}"]
    return InputPlan("images", shards, len(files), _digest("images", lines))


def _plan_tars(location: Location, files: list[tuple[str, str, int]], limit: int | None,
               member_suffix: str | None) -> InputPlan:
    files = files[:limit] if limit is not None else files
    shards = tuple(
        WorkShard(index=i, kind="wds", uris=(location.uri(path),), keys=(strip_extension(rel),),
                  image_column=member_suffix)
        for i, (path, rel, _) in enumerate(files))
    lines = [f"{s.keys[0]}\t{s.uris[0]}\t{f[2]}" for s, f in zip(shards, files)] + [f"member={member_suffix}"]
    return InputPlan("wds", shards, len(files), _digest("wds", lines))


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


def _is_image_type(t: pa.DataType) -> bool:
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return True
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0


def _plan_parquet(location: Location, files: list[tuple[str, str, int]], shard_size: int, limit: int | None,
                  image_column: str | None, key_column: str | None) -> InputPlan:
    shards: list[WorkShard] = []
    lines = [f"shard_size={shard_size}"]
    remaining = limit
    chosen: tuple[str, str | None] | None = None
    for path, rel, size in files:
        with location.fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
            schema = meta.schema.to_arrow_schema()
        image_col = _guess_column(schema, image_column, IMAGE_COLUMN_GUESSES, "image", _is_image_type)
        if image_col is None:
            image_col = next((n for n in schema.names if _is_image_type(schema.field(n).type)), None)
        if image_col is None:
            raise ValueError(f"{location.uri(path)} has no image-bytes column (columns: {schema.names}); "
                             f"name it with --image-column")
        key_col = _guess_column(schema, key_column, KEY_COLUMN_GUESSES, "key",
                                lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)
                                or pa.types.is_integer(t))
        chosen = chosen or (image_col, key_col)
        rows = meta.num_rows if remaining is None else min(meta.num_rows, remaining)
        if remaining is not None:
            remaining -= rows
        lines.append(f"{rel}\t{size}\t{rows}\t{image_col}\t{key_col}")
        for start in range(0, rows, shard_size):
            shards.append(WorkShard(index=len(shards), kind="parquet", uris=(location.uri(path),),
                                    keys=(strip_extension(rel),), row_start=start,
                                    row_stop=min(rows, start + shard_size), image_column=image_col,
                                    key_column=key_col))
        if remaining == 0:
            break
    details = {"image_column": chosen[0], "key_column": chosen[1]} if chosen else {}
    return InputPlan("parquet", tuple(shards), len(files), _digest("parquet", lines), details)


# ---- reading one shard (runs in a CPU task)

def read_shard(shard: WorkShard) -> Iterator[SourceItem]:
    """Every item of the shard, in a fixed order, bad ones included."""
    if shard.kind == "images":
        yield from _read_files(shard)
    elif shard.kind == "wds":
        yield from _read_tar(shard)
    elif shard.kind == "parquet":
        yield from _read_parquet_rows(shard)
    else:
        raise ValueError(f"unknown shard kind {shard.kind!r}")


def _timed_read(location: Location, path: str) -> tuple[bytes | None, str | None, float]:
    t0 = time.perf_counter()
    try:
        data = location.fs.cat_file(path)
    except FileNotFoundError as e:
        return None, f"file vanished before it was read: {e}", time.perf_counter() - t0
    except OSError as e:
        return None, f"cannot read: {e}", time.perf_counter() - t0
    return data, None, time.perf_counter() - t0


def _read_files(shard: WorkShard) -> Iterator[SourceItem]:
    for uri, key in zip(shard.uris, shard.keys):
        location = Location.of(uri)
        data, error, seconds = _timed_read(location, location.root)
        status = "ok" if error is None else "read_error"
        yield SourceItem(key, uri, data, status=status, error=error, read_s=seconds)


def _pick_member(sample: dict, suffix: str | None) -> str | None:
    if suffix is not None:
        return suffix if suffix in sample else None
    candidates = sorted(k for k in sample if not k.startswith("__") and k.rsplit(".", 1)[-1] in IMAGE_SUFFIXES)
    return candidates[0] if candidates else None


def _read_tar(shard: WorkShard) -> Iterator[SourceItem]:
    [uri], [shard_key] = shard.uris, shard.keys
    location = Location.of(uri)
    t0 = time.perf_counter()
    count = 0
    try:
        with location.fs.open(location.root, "rb") as f:
            members = ({**m, "__url__": uri} for m in tar_file_iterator(f))
            for sample in group_by_keys(members, keys=base_plus_ext):
                member = _pick_member(sample, shard.image_column)
                key = shard_member_key(shard_key, sample["__key__"])
                seconds, t0 = time.perf_counter() - t0, time.perf_counter()
                count += 1
                if member is None:
                    present = sorted(k for k in sample if not k.startswith("__"))
                    yield SourceItem(key, uri, None, status="no_image", read_s=seconds,
                                     error=f"sample has no image member (members: {', '.join(present)})")
                else:
                    yield SourceItem(key, uri, sample[member], read_s=seconds)
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        yield SourceItem(shard_key, uri, None, status="read_error", read_s=time.perf_counter() - t0,
                         error=f"tar shard unreadable after {count} samples: {e}")


def _image_bytes(value) -> bytes | None:
    if isinstance(value, dict):  # Hugging Face style {"bytes": ..., "path": ...}
        value = value.get("bytes")
    return None if value is None else bytes(value)


def _read_parquet_rows(shard: WorkShard) -> Iterator[SourceItem]:
    [uri], [shard_key] = shard.uris, shard.keys
    location = Location.of(uri)
    t0 = time.perf_counter()
    columns = [shard.image_column] + ([shard.key_column] if shard.key_column else [])
    try:
        with location.fs.open(location.root, "rb") as f:
            table = _read_row_range(pq.ParquetFile(f), columns, shard.row_start, shard.row_stop)
    except (OSError, pa.ArrowException) as e:
        seconds = time.perf_counter() - t0
        for row in range(shard.row_start, shard.row_stop):
            yield SourceItem(shard_member_key(shard_key, f"{row:08d}"), uri, None, status="read_error",
                             error=f"cannot read Parquet rows: {e}", read_s=seconds)
        return
    seconds = (time.perf_counter() - t0) / max(1, table.num_rows)
    images = table.column(shard.image_column).to_pylist()
    names = table.column(shard.key_column).to_pylist() if shard.key_column else [None] * len(images)
    for offset, (value, name) in enumerate(zip(images, names)):
        row = shard.row_start + offset
        key = shard_member_key(shard_key, str(name) if name is not None else f"{row:08d}")
        data = _image_bytes(value)
        if data is None:
            yield SourceItem(key, uri, None, status="empty", error="image column is null", read_s=seconds)
        else:
            yield SourceItem(key, uri, data, read_s=seconds)


def _read_row_range(pf: pq.ParquetFile, columns: list[str], start: int, stop: int) -> pa.Table:
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
