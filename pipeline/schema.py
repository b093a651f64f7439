"""The columns of an archive (encode job output) and of a decode manifest, with their meaning.

The schema is stored, as JSON, in the key-value metadata of every Parquet file the jobs write
(key ``sprdiff.schema``) and documented in ``docs/archive-format.md``. Each Arrow field also
carries its description in its own metadata (key ``doc``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa

ARCHIVE_VERSION = 1  # version of this table layout (the bitstream has its own FORMAT_VERSION)
SCHEMA_METADATA_KEY = b"sprdiff.schema"


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    nullable: bool
    doc: str

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
    Column("bitstream", pa.binary(), True, "the SPRDiff record (null on failure); decode with SPRDiff.decompress"),
    Column("num_bytes", pa.int64(), True, "len(bitstream) in bytes (null on failure)"),
    Column("bpp", pa.float64(), True, "8 * num_bytes / (width * height): bits per pixel actually written"),
    Column("model_id", pa.string(), False, "id of the model that ran (its config's model_id)"),
    Column("model_fingerprint", pa.string(), False, "hex SHA-256 of the model's weights and config"),
    Column("format_version", pa.int32(), False,
           "format version of the row's record (1; 2 with a colour map; 3 with an offset grid)"),
    Column("source_sha256", pa.string(), True, "hex SHA-256 of the input file's bytes (null if unreadable)"),
    Column("source_bytes", pa.int64(), True, "size of the input file in bytes (null if unreadable)"),
    Column("read_s", pa.float64(), False, "seconds spent reading the input bytes"),
    Column("decode_s", pa.float64(), False, "seconds spent decoding and validating the input image"),
    Column("encode_s", pa.float64(), False, "seconds spent in SPRDiff.compress for this image (0 if skipped)"),
)

MANIFEST_COLUMNS: tuple[Column, ...] = (
    Column("key", pa.string(), False, "the archive row's key"),
    Column("source_uri", pa.string(), False, "URI of the archive file the row came from"),
    Column("status", pa.string(), False, "'ok', 'not_encoded' (the archive row holds no bitstream), or a "
           "bitstream error status: corrupt, truncated, model_mismatch, future_version, not_sprdiff"),
    Column("error", pa.string(), True, "human-readable message when status is not 'ok', else null"),
    Column("output_uri", pa.string(), True, "URI of the image file (or tar member) written; null on failure"),
    Column("width", pa.int32(), True, "decoded width in pixels"),
    Column("height", pa.int32(), True, "decoded height in pixels"),
    Column("bitstream_bytes", pa.int64(), True, "size of the record decoded"),
    Column("num_bytes", pa.int64(), True, "size of the image file written"),
    Column("decode_s", pa.float64(), False, "seconds spent in SPRDiff.decompress for this record"),
    Column("write_s", pa.float64(), False, "seconds spent encoding and writing the image file"),
)


def arrow_schema(columns: tuple[Column, ...], metadata: dict[str, str] | None = None) -> pa.Schema:
    """The Arrow schema, with the column descriptions and ``metadata`` in its key-value metadata."""
    described = {
        "archive_version": ARCHIVE_VERSION,
        "columns": [{"name": c.name, "type": str(c.type), "nullable": c.nullable, "doc": c.doc} for c in columns],
    }
    kv = {SCHEMA_METADATA_KEY: json.dumps(described).encode()}
    kv.update({f"sprdiff.{k}".encode(): v.encode() for k, v in (metadata or {}).items()})
    return pa.schema([c.field() for c in columns], metadata=kv)


ARCHIVE_SCHEMA = arrow_schema(ARCHIVE_COLUMNS)
MANIFEST_SCHEMA = arrow_schema(MANIFEST_COLUMNS)
