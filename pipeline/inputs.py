"""Inputs of the encode job: listing a prefix, cutting it into work shards, reading one shard.

Three kinds of input, told apart by file names (``--input-format auto``) or chosen explicitly:

* ``images``  — image files under a prefix; one item per file.
* ``wds``     — WebDataset ``.tar`` shards; one item per sample (the member with an image suffix).
* ``parquet`` — Parquet tables with an image-bytes column; one item per row.

The listing is sorted, so the shards (and the output file names derived from their index) are
the same on every run over the same input. Reading never raises for bad data: an item that
cannot be read becomes a :class:`SourceItem` with a status and a message. A damaged tar shard
keeps the samples before the damage and adds one ``read_error`` row (keyed by the shard) for the
rest; a Parquet file that cannot be read, or whose image column is missing or holds something
other than bytes, gives status rows too, unless no file of the input is usable (then planning
raises: the command is probably wrong). Files and tar members larger than ``max_bytes`` are
never read into memory.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from webdataset.tariterators import base_plus_ext

from pipeline.keys import file_keys, shard_member_key, strip_extension
from pipeline.storage import Location

INPUT_FORMATS = ("auto", "images", "wds", "parquet")
IMAGE_COLUMN_GUESSES = ("image", "img", "jpg", "jpeg", "png", "webp", "image_bytes", "bytes", "content", "data")
KEY_COLUMN_GUESSES = ("key", "__key__", "id", "name", "filename")
IMAGE_SUFFIXES = frozenset(ext.lstrip(".").lower() for ext in Image.registered_extensions())
BYTES_PER_PIXEL_READ = 16  # an uncompressed 4-channel float image: no image file within the pixel limit is larger


def max_file_bytes(max_pixels: int) -> int:
    """The largest file (or tar member) read into memory for a pixel limit: 16 bytes per pixel + 1 MiB."""
    return BYTES_PER_PIXEL_READ * max_pixels + (1 << 20)


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
    sizes: tuple[int, ...] = ()  # images: each file's size in the listing
    status: str = "ok"  # parquet: why none of the shard's rows can be read (each becomes a row with it)
    error: str | None = None

    @property
    def name(self) -> str:
        return shard_name(self.index)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkShard:
        d = json.loads(text)
        return cls(**{**d, "uris": tuple(d["uris"]), "keys": tuple(d["keys"]), "sizes": tuple(d.get("sizes", ()))})


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
    sizes = [f[2] for f in files]
    shards = tuple(
        WorkShard(index=i // shard_size, kind="images", uris=tuple(uris[i:i + shard_size]),
                  keys=tuple(keys[i:i + shard_size]), sizes=tuple(sizes[i:i + shard_size]))
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


def _plan_parquet(location: Location, files: list[tuple[str, str, int]], shard_size: int, limit: int | None,
                  image_column: str | None, key_column: str | None) -> InputPlan:
    """Row-range shards of each table. A table that cannot be read, or has no usable image column, still
    gets its shards: their rows become status rows (one ``read_error`` row per unreadable file). Raises
    when no table at all is usable: the input or ``--image-column`` is then wrong, not one file."""
    shards: list[WorkShard] = []
    lines = [f"shard_size={shard_size}"]
    remaining = limit
    chosen: tuple[str, str | None] | None = None
    problems: list[str] = []
    for path, rel, size in files:
        uri, shard_key = location.uri(path), strip_extension(rel)
        try:
            with location.fs.open(path, "rb") as f:
                meta = pq.ParquetFile(f).metadata
                schema = meta.schema.to_arrow_schema()
        except (OSError, pa.ArrowException) as e:
            message = f"not a readable Parquet file: {e}"
            problems.append(f"{uri}: {message}")
            shards.append(WorkShard(index=len(shards), kind="parquet", uris=(uri,), keys=(shard_key,),
                                    status="read_error", error=message))
            lines.append(f"{rel}\t{size}\tunreadable")
            remaining = None if remaining is None else remaining - 1
            if remaining == 0:
                break
            continue
        image_col, status, message = _image_column(schema, image_column)
        if message is not None:
            problems.append(f"{uri}: {message}")
        key_col = _guess_column(schema, key_column, KEY_COLUMN_GUESSES, "key", _is_key_type)
        if image_col is not None:
            chosen = chosen or (image_col, key_col)
        rows = meta.num_rows if remaining is None else min(meta.num_rows, remaining)
        if remaining is not None:
            remaining -= rows
        lines.append(f"{rel}\t{size}\t{rows}\t{image_col}\t{key_col}" + ("" if status == "ok" else f"\t{status}"))
        for start in range(0, rows, shard_size):
            shards.append(WorkShard(index=len(shards), kind="parquet", uris=(uri,), keys=(shard_key,),
                                    row_start=start, row_stop=min(rows, start + shard_size), image_column=image_col,
                                    key_column=key_col, status=status, error=message))
        if remaining == 0:
            break
    if chosen is None:
        raise ValueError(f"no usable Parquet table among the {len(files)} input files: " + "; ".join(problems[:3]))
    details = {"image_column": chosen[0], "key_column": chosen[1]}
    return InputPlan("parquet", tuple(shards), len(files), _digest("parquet", lines), details)


# ---- reading one shard (runs in a CPU task)

def read_shard(shard: WorkShard, *, max_bytes: int | None = None) -> Iterator[SourceItem]:
    """Every item of the shard, in a fixed order, bad ones included. Image files and tar members
    over ``max_bytes`` become ``too_large`` items without being read."""
    if shard.kind == "images":
        yield from _read_files(shard, max_bytes)
    elif shard.kind == "wds":
        yield from _read_tar(shard, max_bytes)
    elif shard.kind == "parquet":
        yield from _read_parquet_rows(shard)
    else:
        raise ValueError(f"unknown shard kind {shard.kind!r}")


def _too_large(what: str, size: int, max_bytes: int) -> str:
    return (f"too large: {what} is {size:,} bytes, over the {max_bytes:,}-byte read limit "
            f"({BYTES_PER_PIXEL_READ} bytes per pixel of --max-pixels): not read")


def _timed_read(location: Location, path: str) -> tuple[bytes | None, str | None, float]:
    t0 = time.perf_counter()
    try:
        data = location.fs.cat_file(path)
    except FileNotFoundError as e:
        return None, f"file vanished before it was read: {e}", time.perf_counter() - t0
    except OSError as e:
        return None, f"cannot read: {e}", time.perf_counter() - t0
    return data, None, time.perf_counter() - t0


def _read_files(shard: WorkShard, max_bytes: int | None) -> Iterator[SourceItem]:
    sizes = shard.sizes or (0,) * len(shard.uris)
    for uri, key, size in zip(shard.uris, shard.keys, sizes):
        if max_bytes is not None and size > max_bytes:
            yield SourceItem(key, uri, None, status="too_large", error=_too_large("the file", size, max_bytes))
            continue
        location = Location.of(uri)
        data, error, seconds = _timed_read(location, location.root)
        status = "ok" if error is None else "read_error"
        yield SourceItem(key, uri, data, status=status, error=error, read_s=seconds)


def _pick_member(sample: dict, suffix: str | None) -> str | None:
    if suffix is not None:
        return suffix if suffix in sample else None
    candidates = sorted(k for k in sample if _is_image_member(k))
    return candidates[0] if candidates else None


def _is_image_member(suffix: str) -> bool:
    return suffix.rsplit(".", 1)[-1] in IMAGE_SUFFIXES


class _StrictTarInfo(tarfile.TarInfo):
    """Raises where :mod:`tarfile` would quietly end the archive: at a damaged member header, or where
    the data stops without the end-of-archive marker. Either way the samples after it would be lost
    without a word."""

    @classmethod
    def fromtarfile(cls, tar):
        offset = tar.fileobj.tell()
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            raise  # a block of zeros: the end-of-archive marker
        except tarfile.InvalidHeaderError as e:
            raise tarfile.ReadError(f"damaged member header at byte {offset:,} ({e})") from None
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError):
            raise tarfile.ReadError(f"the data stops at byte {offset:,} without the end-of-archive marker "
                                    f"(cut short)") from None


@dataclass
class _Sample:
    key: str
    members: dict[str, bytes | None] = field(default_factory=dict)  # suffix -> bytes (None: not read)
    sizes: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # the tar broke off while this sample's members were read


def _tar_samples(fileobj, wanted, max_bytes: int | None) -> Iterator[_Sample]:
    """Samples of a tar stream (consecutive members sharing a key, as WebDataset groups them).

    Only members ``wanted(suffix)`` accepts are read, and only up to ``max_bytes``; the others are
    skipped (their size is kept). A repeated suffix starts a new sample with the same key. Where the
    tar is damaged, the sample being read is yielded (with ``error`` if one of its members was cut),
    then the error is raised.
    """
    current: _Sample | None = None
    in_member = False
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*", tarinfo=_StrictTarInfo) as tar:
            for info in tar:
                tar.members = []  # a stream: keep no history
                if not info.isreg():
                    continue
                if "/" not in info.name and info.name.startswith("__") and info.name.endswith("__"):
                    continue  # WebDataset metadata
                key, suffix = base_plus_ext(info.name)
                if key is None:
                    continue  # no suffix: not part of any sample
                suffix = suffix.lower()
                if current is None or key != current.key or suffix in current.members:
                    if current is not None:
                        yield current
                    current = _Sample(key)
                current.sizes[suffix] = info.size
                current.members[suffix] = None
                if wanted(suffix) and (max_bytes is None or info.size <= max_bytes):
                    in_member = True
                    current.members[suffix] = tar.extractfile(info).read()
                    in_member = False
    except _TAR_ERRORS as e:
        if current is not None:
            if in_member:
                current.error = f"the tar breaks off inside this sample's members: {e}"
            yield current
        raise
    if current is not None:
        yield current


_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError, zlib.error)


def _read_tar(shard: WorkShard, max_bytes: int | None) -> Iterator[SourceItem]:
    [uri], [shard_key] = shard.uris, shard.keys
    location = Location.of(uri)
    wanted = (lambda s: s == shard.image_column) if shard.image_column else _is_image_member
    t0 = time.perf_counter()
    count, seen = 0, set()
    try:
        with location.fs.open(location.root, "rb") as f:
            for sample in _tar_samples(f, wanted, max_bytes):
                seconds, t0 = time.perf_counter() - t0, time.perf_counter()
                count += 1
                yield _sample_item(shard, sample, seen, seconds, max_bytes)
    except _TAR_ERRORS as e:
        yield SourceItem(shard_key, uri, None, status="read_error", read_s=time.perf_counter() - t0,
                         error=f"tar shard damaged after {count} sample(s); whatever follows is lost: {e}")


def _sample_item(shard: WorkShard, sample: _Sample, seen: set[str], seconds: float,
                 max_bytes: int | None) -> SourceItem:
    [uri], [shard_key] = shard.uris, shard.keys
    key = shard_member_key(shard_key, sample.key)
    if key in seen:
        copy = 2
        while f"{key}~{copy}" in seen:
            copy += 1
        first, key = key, f"{key}~{copy}"
        seen.add(key)
        return SourceItem(key, uri, None, status="duplicate_key", read_s=seconds,
                          error=f"sample key {sample.key!r} appears again in the shard (first row: {first!r}); "
                                f"this copy is not encoded")
    seen.add(key)
    if sample.error is not None:
        return SourceItem(key, uri, None, status="read_error", error=sample.error, read_s=seconds)
    member = _pick_member(sample.members, shard.image_column)
    if member is None:
        present = ", ".join(sorted(sample.members))
        return SourceItem(key, uri, None, status="no_image", read_s=seconds,
                          error=f"sample has no image member (members: {present})")
    data = sample.members[member]
    if data is None:
        return SourceItem(key, uri, None, status="too_large", read_s=seconds,
                          error=_too_large(f"member .{member}", sample.sizes[member], max_bytes or 0))
    return SourceItem(key, uri, data, read_s=seconds)


def _image_bytes(value) -> tuple[bytes | None, str, str | None]:
    """``(bytes, "ok", None)`` for a Parquet image cell, or ``(None, status, message)`` saying why not."""
    if isinstance(value, dict):  # Hugging Face style {"bytes": ..., "path": ...}
        value = value.get("bytes")
    if value is None:
        return None, "empty", "image column is null"
    if not isinstance(value, bytes | bytearray | memoryview):
        return None, "wrong_type", f"image cell holds {type(value).__name__}, not bytes"
    return bytes(value), "ok", None


def _row_keys(shard: WorkShard, names: list) -> list[str]:
    [shard_key] = shard.keys
    return [shard_member_key(shard_key, str(name) if name is not None else f"{shard.row_start + i:08d}")
            for i, name in enumerate(names)]


def _read_parquet_rows(shard: WorkShard) -> Iterator[SourceItem]:
    [uri], [shard_key] = shard.uris, shard.keys
    location = Location.of(uri)
    t0 = time.perf_counter()
    if shard.status != "ok":
        yield from _problem_rows(shard, location, t0)
        return
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
    for key, value in zip(_row_keys(shard, names), images):
        data, status, problem = _image_bytes(value)
        yield SourceItem(key, uri, data, status=status, error=problem, read_s=seconds)


def _problem_rows(shard: WorkShard, location: Location, t0: float) -> Iterator[SourceItem]:
    """The rows of a table planning found unusable, each with the table's status (keys from the key
    column where it can be read); an unreadable file is one row keyed by the file."""
    [uri], [shard_key] = shard.uris, shard.keys
    where = f"{shard.error} (in {uri})"
    if shard.row_stop <= shard.row_start:
        yield SourceItem(shard_key, uri, None, status=shard.status, error=where, read_s=time.perf_counter() - t0)
        return
    names: list = [None] * (shard.row_stop - shard.row_start)
    if shard.key_column:
        try:
            with location.fs.open(location.root, "rb") as f:
                table = _read_row_range(pq.ParquetFile(f), [shard.key_column], shard.row_start, shard.row_stop)
            names = table.column(shard.key_column).to_pylist()
        except (OSError, pa.ArrowException):
            pass  # row numbers, then
    seconds = (time.perf_counter() - t0) / len(names)
    for key in _row_keys(shard, names):
        yield SourceItem(key, uri, None, status=shard.status, error=where, read_s=seconds)


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
