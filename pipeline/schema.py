"""The columns of an archive (encode job output) and of a decode manifest, with their meaning.

The schema is stored, as JSON, in the key-value metadata of every Parquet file the jobs write
(key ``sprdiff.schema``) and documented in ``docs/archive-format.md``. Each Arrow field also
carries its description in its own metadata (key ``doc``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa

ARCHIVE_VERSION = 3  # version of this table layout (each record has its own format version)
# 1: the record column was named ``bitstream``; the decode manifest had ``bitstream_bytes`` and
#    ``num_bytes`` (the image file's size). 2: ``record``; ``record_bytes`` and ``image_bytes``.
# 3: ``rate_id`` and ``warning`` (rate points). A column added after layout 1 says so in ``since``;
#    files of older layouts read it as nulls (``as_current``), so old archives need no conversion.
SCHEMA_METADATA_KEY = b"sprdiff.schema"
RENAMED_COLUMNS = {"bitstream": "record"}  # an archive's layout-1 column names -> today's
RECORD_COLUMN = "record"


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    nullable: bool
    doc: str
    since: int = 1  # the archive layout that added it; parts of older layouts read it as nulls

    def field(self) -> pa.Field:
        return pa.field(self.name, self.type, nullable=self.nullable, metadata={"doc": self.doc})


ARCHIVE_COLUMNS: tuple[Column, ...] = (
    Column("key", pa.string(), False, "stable id of the input: its path under the input prefix without the "
           "extension, or <shard>/<member> for tar and Parquet inputs"),
    Column("source_uri", pa.string(), False, "URI of the input file (for tar/Parquet inputs: the shard file)"),
    Column("status", pa.string(), False, "'ok', or the error class: empty, not_image, truncated, unreadable, "
           "too_large, read_error, no_image, wrong_type, duplicate_key, or a codec error status"),
    Column("error", pa.string(), True, "human-readable message when status is not 'ok', else null"),
    Column("width", pa.int32(), True, "image width in pixels (null when the image could not be read)"),
    Column("height", pa.int32(), True, "image height in pixels (null when the image could not be read)"),
    Column("record", pa.binary(), True, "the SPRDiff record, one coded image (null on failure); decode with "
           "SPRDiff.decompress"),
    Column("num_bytes", pa.int64(), True, "len(record): the record's length in bytes (null on failure)"),
    Column("bpp", pa.float64(), True, "8 * num_bytes / (width * height): bits per pixel actually written"),
    Column("model_id", pa.string(), False, "id of the model that ran (its config's model_id)"),
    Column("model_fingerprint", pa.string(), False, "hex SHA-256 of the model's weights and config"),
    Column("format_version", pa.int32(), False,
           "format version of the row's record, and only of it (1; 2 with a colour map; 3 with an offset grid)"),
    Column("rate_id", pa.int16(), True, "the rate point the record was coded at, as its header says "
           "(sprdiff.rates); null when there is no record, and in archives of layout 2 and older", since=3),
    Column("warning", pa.string(), True, "why the record is not what was asked for (with --target-bpp: no "
           "rate fits the budget, so it was coded at the rate with the fewest bytes), else null", since=3),
    Column("source_sha256", pa.string(), True, "hex SHA-256 of the input file's bytes (null if unreadable)"),
    Column("source_bytes", pa.int64(), True, "size of the input file in bytes (null if unreadable)"),
    Column("read_s", pa.float64(), False, "seconds spent reading the input bytes"),
    Column("decode_s", pa.float64(), False, "seconds spent decoding and validating the input image"),
    Column("encode_s", pa.float64(), False, "seconds spent in SPRDiff.compress for this image (0 if skipped)"),
)

MANIFEST_COLUMNS: tuple[Column, ...] = (
    Column("key", pa.string(), False, "the archive row's key"),
    Column("source_uri", pa.string(), False, "URI of the archive file the row came from"),
    Column("status", pa.string(), False, "'ok', 'not_encoded' (the archive row holds no record), "
           "'model_not_found' (no place holds the weights of the record's fingerprint), or a record error "
           "status: corrupt, truncated, model_mismatch, future_version, not_sprdiff"),
    Column("error", pa.string(), True, "human-readable message when status is not 'ok', else null"),
    Column("output_uri", pa.string(), True, "URI of the image file (or tar member) written; null on failure"),
    Column("width", pa.int32(), True, "decoded width in pixels"),
    Column("height", pa.int32(), True, "decoded height in pixels"),
    Column("record_bytes", pa.int64(), True, "length of the record decoded, in bytes"),
    Column("image_bytes", pa.int64(), True, "size of the image file written, in bytes"),
    Column("decode_s", pa.float64(), False, "seconds spent in SPRDiff.decompress for this record"),
    Column("write_s", pa.float64(), False, "seconds spent encoding and writing the image file"),
)


def archive_version(metadata: dict[bytes, bytes] | None) -> int:
    """The table layout a Parquet file's key-value metadata declares (1 for files that predate the key)."""
    described = (metadata or {}).get(SCHEMA_METADATA_KEY)
    return int(json.loads(described).get("archive_version", 1)) if described else 1


def current_names(names: list[str]) -> list[str]:
    """Column names of any archive layout in today's names (``bitstream`` -> ``record``)."""
    return [RENAMED_COLUMNS.get(n, n) for n in names]


def stored_name(name: str, file_names: list[str]) -> str:
    """Today's column ``name`` as a file of any layout spells it (``record`` -> ``bitstream`` in layout 1)."""
    if name in file_names:
        return name
    old = {new: old for old, new in RENAMED_COLUMNS.items()}.get(name)
    return old if old in file_names else name


ADDED_COLUMNS = tuple(c for c in ARCHIVE_COLUMNS if c.since > 1)  # what parts of older layouts lack


def as_current(table: pa.Table, columns: list[str] | None = None) -> pa.Table:
    """A table read from an archive part of any layout in today's terms: old archives read forever.
    Columns have today's names, and the columns added since the part's layout are there, as nulls;
    ``columns``: only these (today's names), in this order."""
    metadata = table.schema.metadata
    table = table.rename_columns(current_names(table.column_names))
    for c in ADDED_COLUMNS:
        if c.name not in table.column_names and (columns is None or c.name in columns):
            table = table.append_column(c.field(), pa.nulls(table.num_rows, c.type))
    if columns is not None:  # in the order asked for
        table = table.select([c for c in columns if c in table.column_names])
    return table.replace_schema_metadata(metadata)


def with_added_columns(schema: pa.Schema) -> pa.Schema:
    """A part's ``schema`` with the columns added since its layout appended (names as the file spells
    them): what ``--where`` is checked against and what a filtered scan reads, so a filter on an added
    column sees an old part's rows as nulls instead of failing."""
    for c in ADDED_COLUMNS:
        if c.name not in schema.names:
            schema = schema.append(c.field())
    return schema


def arrow_schema(columns: tuple[Column, ...], metadata: dict[str, str] | None = None) -> pa.Schema:
    """The Arrow schema, with the column descriptions and ``metadata`` in its key-value metadata."""
    described = {
        "archive_version": ARCHIVE_VERSION,
        "columns": [{"name": c.name, "type": str(c.type), "nullable": c.nullable, "doc": c.doc, "since": c.since}
                    for c in columns],
    }
    kv = {SCHEMA_METADATA_KEY: json.dumps(described).encode()}
    kv.update({f"sprdiff.{k}".encode(): v.encode() for k, v in (metadata or {}).items()})
    return pa.schema([c.field() for c in columns], metadata=kv)


ARCHIVE_SCHEMA = arrow_schema(ARCHIVE_COLUMNS)
MANIFEST_SCHEMA = arrow_schema(MANIFEST_COLUMNS)
