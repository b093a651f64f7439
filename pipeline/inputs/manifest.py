"""``encode-job --input-list``: a manifest of objects instead of a prefix to list.

Accepted, read in batches and never whole:

* a Parquet, CSV (with a header) or JSON-lines file with a ``uri`` column, optional ``key``
  (the archive key; default: the URI's path without bucket and extension) and ``size``;
* an S3 Inventory listing as S3 writes it: a Parquet or CSV file with ``bucket``, ``key`` and
  ``size`` columns (``key`` is then the object key, and the archive key is derived from it), or
  the inventory's ``manifest.json``, whose ``fileSchema`` names the columns of its headerless,
  URL-encoded CSV data files (or whose Parquet data files carry them).

Planning takes keys and sizes from the manifest and touches no object. A file without a ``uri``
(or ``bucket`` + ``key``) column is refused with a message naming the columns it has; an empty
or unparsable entry, or a URI outside :data:`ALLOWED_SCHEMES`, becomes an ``invalid_entry`` row.
"""

from __future__ import annotations

import gzip
import io
import json
import posixpath
from collections.abc import Iterator
from urllib.parse import unquote_plus

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.storage import Location

ALLOWED_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "file")  # and absolute local paths
INVALID_STATUS = "invalid_entry"
BATCH_ROWS = 65_536
SCHEME_PATTERN = r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://"
# The manifest's rows as planning sorts them (pipeline.inputs.planner.LISTING_SCHEMA plus nothing else)
ENTRY_SCHEMA = pa.schema([("key", pa.string()), ("explicit", pa.bool_()), ("rel", pa.string()), ("uri", pa.string()),
                          ("size", pa.int64()), ("status", pa.string()), ("error", pa.string())])


def identity(uri: str) -> dict:
    """What tells one version of the manifest from another without reading it: size and ETag or mtime."""
    location = Location.of(uri)
    info = location.fs.info(location.root)
    stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    return {"uri": location.uri(), "size": int(info.get("size") or 0), "stamp": str(stamp)}


def entry_batches(uri: str) -> Iterator[pa.Table]:
    """The manifest's entries as tables of :data:`ENTRY_SCHEMA`, in manifest order."""
    location = Location.of(uri)
    if not location.exists(location.root):
        raise FileNotFoundError(f"input list {location.uri()} does not exist")
    name = location.root.rsplit("/", 1)[-1].lower()
    if name == "manifest.json":
        yield from _s3_inventory(location)
        return
    for raw in _raw_batches(location, location.root, name):
        yield normalise(raw, location.uri())


def _raw_batches(location: Location, path: str, name: str, column_names: list[str] | None = None,
                 url_encoded: bool = False) -> Iterator[pa.Table]:
    if name.endswith(".parquet"):
        with location.fs.open(path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS):
                yield pa.Table.from_batches([batch])
    elif name.endswith((".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz")):
        yield from _json_lines(location, path)
    elif name.endswith((".csv", ".csv.gz", ".tsv")):
        yield from _csv(location, path, column_names, url_encoded)
    else:
        raise ValueError(f"input list {location.uri(path)}: unknown format (expected .parquet, .csv, .csv.gz, "
                         f".jsonl or an S3 Inventory manifest.json)")


def _opened(location: Location, path: str):
    f = location.fs.open(path, "rb")
    return gzip.open(f) if path.endswith(".gz") else f


def _csv(location: Location, path: str, column_names: list[str] | None, url_encoded: bool) -> Iterator[pa.Table]:
    bad: list = []

    def invalid(row) -> str:
        bad.append(row)
        return "skip"

    read = pacsv.ReadOptions(column_names=column_names, block_size=1 << 22)
    convert = pacsv.ConvertOptions(column_types={"size": pa.int64(), "Size": pa.int64()},
                                   strings_can_be_null=False)
    parse = pacsv.ParseOptions(invalid_row_handler=invalid, delimiter="\t" if path.endswith(".tsv") else ",")
    with _opened(location, path) as f:
        reader = pacsv.open_csv(f, read_options=read, parse_options=parse, convert_options=convert)
        for batch in reader:
            table = pa.Table.from_batches([batch])
            if url_encoded and "key" in table.column_names:  # S3 Inventory CSV keys are URL-encoded
                table = table.set_column(table.column_names.index("key"), "key",
                                         pa.array([unquote_plus(k) for k in table.column("key").to_pylist()]))
            yield table.append_column("_problem", pa.nulls(table.num_rows, pa.string()))
            if bad:
                yield _problem_rows(table.schema, [f"CSV row {r.number}: {r.actual_columns} fields where "
                                                   f"{r.expected_columns} were expected: {r.text[:200]!r}"
                                                   for r in bad])
                bad.clear()


def _json_lines(location: Location, path: str) -> Iterator[pa.Table]:
    rows: list[dict] = []
    with _opened(location, path) as f:
        for number, line in enumerate(io.TextIOWrapper(f, encoding="utf-8", errors="replace"), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
                if not isinstance(value, dict):
                    raise ValueError("not a JSON object")
                row = {"uri": value.get("uri"), "key": value.get("key"), "size": value.get("size"), "_problem": None}
                if row["uri"] is None and "bucket" in value:
                    row.update(uri=None, bucket=value.get("bucket"), key=value.get("key"))
            except ValueError as e:
                row = {"uri": None, "key": None, "size": None, "_problem": f"line {number} is not a JSON object: {e}"}
            rows.append(row)
            if len(rows) >= BATCH_ROWS:
                yield _json_table(rows)
                rows = []
    if rows:
        yield _json_table(rows)


def _json_table(rows: list[dict]) -> pa.Table:
    columns = {"uri": pa.string(), "key": pa.string(), "size": pa.int64(), "_problem": pa.string()}
    if any("bucket" in r for r in rows):
        columns["bucket"] = pa.string()
    data = {}
    for name, kind in columns.items():
        values = [r.get(name) for r in rows]
        if name == "size":
            values = [v if isinstance(v, int) and not isinstance(v, bool) else None for v in values]
        elif name != "_problem":
            values = [None if v is None else str(v) for v in values]
        data[name] = pa.array(values, kind)
    return pa.table(data)


def _problem_rows(schema: pa.Schema, problems: list[str]) -> pa.Table:
    columns = {n: pa.nulls(len(problems), schema.field(n).type) for n in schema.names if n != "_problem"}
    columns["_problem"] = pa.array(problems, pa.string())
    return pa.table(columns)


def _s3_inventory(location: Location) -> Iterator[pa.Table]:
    manifest = json.loads(location.read_bytes(location.root))
    file_format = str(manifest.get("fileFormat", "CSV")).upper()
    names = None
    if file_format == "CSV":
        names = [n.strip().lower() for n in str(manifest.get("fileSchema", "")).split(",")]
        if "key" not in names or "bucket" not in names:
            raise ValueError(f"S3 Inventory manifest {location.uri()}: its fileSchema has no Bucket and Key "
                             f"(columns: {names})")
    destination = str(manifest.get("destinationBucket", "")).removeprefix("arn:aws:s3:::")
    for entry in manifest.get("files", []):
        data = Location.of(f"s3://{destination}/{entry['key']}") if destination else \
            Location.of(posixpath.join(posixpath.dirname(location.uri()), entry["key"]))
        suffix = ".parquet" if file_format == "PARQUET" else (".csv.gz" if entry["key"].endswith(".gz") else ".csv")
        for raw in _raw_batches(data, data.root, suffix, names, url_encoded=file_format == "CSV"):
            yield normalise(raw, data.uri())


def normalise(raw: pa.Table, where: str) -> pa.Table:
    """One batch of a manifest -> :data:`ENTRY_SCHEMA` rows, bad entries marked, all vectorised."""
    names = raw.column_names
    lower = {n.lower(): n for n in names}
    n = raw.num_rows
    problem = raw.column("_problem") if "_problem" in names else pa.nulls(n, pa.string())
    if "uri" in lower:
        uri = pc.cast(raw.column(lower["uri"]), pa.string())
        explicit_key = pc.cast(raw.column(lower["key"]), pa.string()) if "key" in lower else pa.nulls(n, pa.string())
    elif "bucket" in lower and "key" in lower:
        bucket = pc.cast(raw.column(lower["bucket"]), pa.string())
        object_key = pc.cast(raw.column(lower["key"]), pa.string())
        missing = pc.or_kleene(pc.equal(pc.fill_null(bucket, ""), ""), pc.equal(pc.fill_null(object_key, ""), ""))
        joined = pc.binary_join_element_wise("s3://", bucket, "/", object_key, "")
        uri = pc.if_else(missing, pa.scalar(None, pa.string()), joined)
        explicit_key = pa.nulls(n, pa.string())
    else:
        shown = [c for c in names if c != "_problem"]
        raise ValueError(f"input list {where} has no 'uri' column (nor 'bucket' and 'key' columns of an S3 "
                         f"Inventory): its columns are {shown}")
    size = pc.fill_null(pc.cast(raw.column(lower["size"]), pa.int64()), -1) if "size" in lower else \
        pa.array([-1] * n, pa.int64())
    uri_text = pc.fill_null(uri, "")
    found = pc.extract_regex(uri_text, SCHEME_PATTERN)
    scheme, has_scheme = pc.struct_field(found, [0]), pc.is_valid(found)
    allowed = pc.is_in(pc.utf8_lower(pc.fill_null(scheme, "")), value_set=pa.array(ALLOWED_SCHEMES))
    local = pc.and_(pc.invert(has_scheme), pc.starts_with(uri_text, "/"))
    empty = pc.equal(uri_text, "")
    bad_scheme = pc.invert(pc.or_(allowed, local))
    message = pc.if_else(empty, pa.scalar("the entry names no object (empty uri)"),
                         pc.if_else(bad_scheme,
                                    pc.binary_join_element_wise(
                                        "the entry's uri ", uri_text, " is not on an allowed store (schemes "
                                        + ", ".join(ALLOWED_SCHEMES) + ", or an absolute local path)", ""),
                                    pa.scalar(None, pa.string())))
    message = pc.coalesce(problem, message)
    invalid = pc.is_valid(message)
    # the archive key: the given one, else the object's path without its store, bucket and extension
    path = pc.replace_substring_regex(uri_text, r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]*/?", "")
    path = pc.replace_substring_regex(path, r"^/+", "")
    derived = derive_keys(path)
    given = pc.and_(pc.is_valid(explicit_key), pc.not_equal(pc.fill_null(explicit_key, ""), ""))
    key = pc.if_else(given, explicit_key, derived)
    status = pc.if_else(invalid, pa.scalar(INVALID_STATUS), pa.scalar("ok"))
    return pa.table({"key": key, "explicit": given, "rel": path, "uri": uri_text, "size": size,
                     "status": status, "error": message}, schema=ENTRY_SCHEMA)


def derive_keys(relative_paths: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """``pipeline.keys.strip_extension``, vectorised: ``a/b/photo.jpg`` -> ``a/b/photo``."""
    return pc.replace_substring_regex(relative_paths, r"^((?:.*/)?[^/]+)\.[^./]*$", r"\1")
