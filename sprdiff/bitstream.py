"""The SPRDiff record format: the only module that knows bytes.

One record holds one image. All fixed-width integers are little-endian.

====  ==================  ==========================================================
size  field               meaning
====  ==================  ==========================================================
1     magic               ``0xD5``
1     version             format version, 1 to 4 (this sprdiff writes 4)
1     flags               bits 0-3 rate id, bits 4-5 padding mode; bits 6-7: in versions 2-3
                          the flag bits of the optional fields (``FIELDS``: 6 colour map,
                          7 offset grid); from version 4 bit 6 marks the extension area and
                          bit 7 is reserved (0)
var   width - 1           LEB128 varint
var   height - 1          LEB128 varint
var   timestep            LEB128 varint, the one-step diffusion timestep
1     fingerprint tag     first byte of the model's SHA-256 fingerprint
var   optional fields     versions 2-3: each field of ``FIELDS`` whose flag bit is set, in
                          table order, as its own bytes. Version 4: the extension area (only
                          if flag bit 6): a varint count, then per entry a varint tag
                          ``id << 1 | critical``, a varint payload length and the payload
                          (a known field's payload is its own bytes); ids strictly increasing
var   string lengths      LEB128 varint per entropy-coded string (count fixed by model)
...   strings             the entropy-coded strings, concatenated
4     crc32               CRC-32 of the model's full 32-byte fingerprint followed by
                          every byte above
====  ==================  ==========================================================

The CRC is keyed with the full fingerprint, so a record decoded with other weights fails
even when the one-byte tag collides (1 in 256); the tag lets the common case say
"different model" instead of "corrupt". The declared string lengths let truncation be
told apart from corruption. A 512x512 image with one string costs 16 bytes of container.

Growing the format: an optional field is a row of ``FIELDS`` (id, since-version, writer,
reader, validity check), never a branch. From version 4 a field travels in the extension
area with a *critical* bit: a reader skips an entry it does not know unless the entry is
critical (decoding without it would give other pixels), and then refuses the record with a
``BitstreamError`` that says to upgrade. Versions 1-3 are still read (and can be written, for
tests and tools), so every archive ever written keeps decoding.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sprdiff.errors import BitstreamError

MAGIC = 0xD5
FORMAT_VERSION = 4  # the version this module writes, and the newest it reads
SUPPORTED_VERSIONS = (1, 2, 3, 4)
EXTENSIONS_VERSION = 4  # the first version with the extension area (and without legacy flag bits)
_EXTENSIONS_FLAG = 0x40
COLOUR_MAP_LENGTH = 12
MAX_COLOUR_VALUE = 1 << 12  # bounds each colour-map integer (sprdiff.colour keeps well inside)
MAX_GRID_SIDE = 256  # rows and columns of an offset grid
GRID_SCALE_INDEXES = 64  # the offset grid's scale table (sprdiff.offset_grid stores it)
MAX_EXTENSIONS = 64  # entries in one record's extension area

PADDING_MODES = {0: "replicate"}  # id -> name; ids are explicit and never reused
PADDING_IDS = {name: i for i, name in PADDING_MODES.items()}

MAX_RATE_ID = 15
MAX_SIDE = 1 << 24  # far beyond any pixel limit; bounds varint parsing
_MAX_VARINT_BYTES = 5
_CRC_BYTES = 4
_MIN_RECORD = 1 + 1 + 1 + 1 + 1 + 1 + 1 + _CRC_BYTES  # magic..tag with 1-byte varints, no strings


@dataclass(frozen=True)
class CodedOffsetGrid:
    """A record's offset grid as sent: its size, one scale index per channel and the rANS string
    of its 3 x rows x cols integers (``sprdiff.offset_grid`` codes and decodes them)."""

    rows: int
    cols: int
    scale_indexes: tuple[int, int, int]
    string: bytes

    def problem(self) -> str | None:
        """Why this grid cannot be in a record, or None."""
        if not (1 <= self.rows <= MAX_GRID_SIDE and 1 <= self.cols <= MAX_GRID_SIDE):
            return f"an offset grid is 1..{MAX_GRID_SIDE} rows and columns, got {self.rows}x{self.cols}"
        if len(self.scale_indexes) != 3 or not all(0 <= i < GRID_SCALE_INDEXES for i in self.scale_indexes):
            return f"an offset grid has 3 scale indexes in 0..{GRID_SCALE_INDEXES - 1}, got {self.scale_indexes}"
        return None


@dataclass(frozen=True)
class Extension:
    """An extension-area entry this reader does not know (kept as read, written back as is)."""

    id: int
    critical: bool
    payload: bytes


@dataclass(frozen=True)
class RecordHeader:
    """Everything in a record except the entropy-coded strings."""

    width: int
    height: int
    timestep: int
    rate_id: int
    fingerprint_tag: int
    padding: str = "replicate"
    version: int = FORMAT_VERSION
    string_lengths: tuple[int, ...] = ()
    colour_map: tuple[int, ...] | None = None  # 12 integers, see sprdiff.colour
    offset_grid: CodedOffsetGrid | None = None  # see sprdiff.offset_grid
    extensions: tuple[Extension, ...] = ()  # unknown, non-critical entries (version 4)

    @property
    def num_pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class Record:
    """One packed record and what is in it, so nobody has to parse bytes they were just handed."""

    data: bytes
    header: RecordHeader  # version, string lengths and fingerprint tag filled in

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def num_bytes(self) -> int:
        return len(self.data)

    @property
    def latent_bytes(self) -> int:
        """Bytes of the entropy-coded latent strings alone."""
        return sum(self.header.string_lengths)

    @property
    def container_bytes(self) -> int:
        """Everything else: header, optional fields, lengths and CRC."""
        return self.num_bytes - self.latent_bytes


# ---- varints

def encode_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"varints are unsigned, got {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def zigzag(value: int) -> int:
    """Signed -> unsigned, small magnitudes to small numbers: 0, -1, 1, -2 -> 0, 1, 2, 3."""
    return 2 * value if value >= 0 else -2 * value - 1


def unzigzag(value: int) -> int:
    return value // 2 if value % 2 == 0 else -(value + 1) // 2


def _read_varint(buf: bytes, pos: int, field: str) -> tuple[int, int]:
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(buf):
            raise BitstreamError(f"truncated record: it ends inside the {field} field", status="truncated")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise BitstreamError(f"corrupt record: the {field} varint is longer than {_MAX_VARINT_BYTES} bytes",
                         status="corrupt")


# ---- the optional fields: one row each

def _write_colour_map(values: tuple[int, ...]) -> bytes:
    return b"".join(encode_varint(zigzag(v)) for v in values)


def _read_colour_map(buf: bytes, pos: int) -> tuple[tuple[int, ...], int]:
    values = []
    for i in range(COLOUR_MAP_LENGTH):
        v, pos = _read_varint(buf, pos, f"colour map value {i}")
        values.append(unzigzag(v))
    return tuple(values), pos


def _colour_map_problem(values: Any) -> str | None:
    if not isinstance(values, tuple) or len(values) != COLOUR_MAP_LENGTH \
            or not all(isinstance(v, int) and abs(v) < MAX_COLOUR_VALUE for v in values):
        return f"a colour map is {COLOUR_MAP_LENGTH} integers of magnitude < {MAX_COLOUR_VALUE}, got {values}"
    return None


def _write_offset_grid(grid: CodedOffsetGrid) -> bytes:
    return (encode_varint(grid.rows - 1) + encode_varint(grid.cols - 1) + bytes(grid.scale_indexes)
            + encode_varint(len(grid.string)) + grid.string)


def _read_offset_grid(buf: bytes, pos: int) -> tuple[CodedOffsetGrid, int]:
    rows_m1, pos = _read_varint(buf, pos, "offset grid rows")
    cols_m1, pos = _read_varint(buf, pos, "offset grid columns")
    if pos + 3 > len(buf):
        raise BitstreamError("truncated record: it ends inside the offset grid's scale indexes", status="truncated")
    scale_indexes = tuple(buf[pos:pos + 3])
    length, pos = _read_varint(buf, pos + 3, "offset grid length")
    if pos + length > len(buf):
        raise BitstreamError("truncated record: it ends inside the offset grid", status="truncated")
    grid = CodedOffsetGrid(rows=rows_m1 + 1, cols=cols_m1 + 1, scale_indexes=scale_indexes,  # type: ignore[arg-type]
                           string=buf[pos:pos + length])
    return grid, pos + length


def _offset_grid_problem(grid: Any) -> str | None:
    return grid.problem() if isinstance(grid, CodedOffsetGrid) else f"an offset grid is a CodedOffsetGrid, got {grid}"


@dataclass(frozen=True)
class OptionalField:
    """One optional field of the record: how it is marked, written, read and checked."""

    id: int  # its extension id from version 4; never reused
    name: str  # the RecordHeader attribute it fills
    since: int  # the first format version that has it
    critical: bool  # True when a decoder that ignored it would give other pixels
    legacy_flag: int  # its flags bit in versions since..3 (0 for fields added from version 4)
    write: Callable[[Any], bytes]
    read: Callable[[bytes, int], tuple[Any, int]]  # (buffer, position) -> (value, position after it)
    problem: Callable[[Any], str | None]  # why a value cannot be in a record, or None


FIELDS: tuple[OptionalField, ...] = (
    OptionalField(1, "colour_map", 2, True, 0x40, _write_colour_map, _read_colour_map, _colour_map_problem),
    OptionalField(2, "offset_grid", 3, True, 0x80, _write_offset_grid, _read_offset_grid, _offset_grid_problem),
)
FIELDS_BY_ID = {f.id: f for f in FIELDS}
FIELDS_BY_NAME = {f.name: f for f in FIELDS}
assert sorted(FIELDS_BY_ID) == [f.id for f in FIELDS], "FIELDS are listed in id order"


def _allowed_flags(version: int) -> int:
    if version >= EXTENSIONS_VERSION:
        return 0x3F | _EXTENSIONS_FLAG
    return 0x3F | sum(f.legacy_flag for f in FIELDS if f.since <= version)


# ---- writing

def _crc(fingerprint: bytes, body: bytes) -> int:
    return zlib.crc32(body, zlib.crc32(fingerprint))


def _check_fingerprint(fingerprint: bytes) -> None:
    if not isinstance(fingerprint, bytes | bytearray) or len(fingerprint) != 32:
        raise ValueError("fingerprint must be the model's 32-byte SHA-256 digest (SPRDiff.fingerprint_bytes)")


def _present(header: RecordHeader) -> list[tuple[OptionalField, Any]]:
    return [(f, getattr(header, f.name)) for f in FIELDS if getattr(header, f.name) is not None]


def _header_bytes(header: RecordHeader, version: int, tag: int) -> bytes:
    """Everything before the string lengths, checked (programmer errors raise ``ValueError``)."""
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"this sprdiff writes format versions {list(SUPPORTED_VERSIONS)}, not {version}")
    if not 1 <= header.width <= MAX_SIDE or not 1 <= header.height <= MAX_SIDE:
        raise ValueError(f"image size {header.width}x{header.height} is outside 1..{MAX_SIDE}")
    if not 0 <= header.rate_id <= MAX_RATE_ID:
        raise ValueError(f"rate_id must be in 0..{MAX_RATE_ID}, got {header.rate_id}")
    if header.padding not in PADDING_IDS:
        raise ValueError(f"unknown padding mode {header.padding!r}; known: {sorted(PADDING_IDS)}")
    present = _present(header)
    for f, value in present:
        if f.problem(value):
            raise ValueError(f"{f.name}: {f.problem(value)}")
        if f.since > version:
            raise ValueError(f"format version {version} cannot hold a {f.name} (from version {f.since})")
    if header.extensions and version < EXTENSIONS_VERSION:
        raise ValueError(f"format version {version} has no extension area")
    flags = header.rate_id | (PADDING_IDS[header.padding] << 4)
    if version >= EXTENSIONS_VERSION:
        entries = sorted([(f.id, f.critical, f.write(value)) for f, value in present]
                         + [(e.id, e.critical, e.payload) for e in header.extensions])
        ids = [e[0] for e in entries]
        if len(set(ids)) != len(ids) or any(e.id in FIELDS_BY_ID for e in header.extensions):
            raise ValueError(f"extension ids must be unique and unknown ones must not reuse a field's id, got {ids}")
        optional = b""
        if entries:
            flags |= _EXTENSIONS_FLAG
            optional = encode_varint(len(entries)) + b"".join(
                encode_varint(i << 1 | int(critical)) + encode_varint(len(payload)) + payload
                for i, critical, payload in entries)
    else:
        flags |= sum(f.legacy_flag for f, _ in present)
        optional = b"".join(f.write(value) for f, value in present)
    return (bytes([MAGIC, version, flags]) + encode_varint(header.width - 1) + encode_varint(header.height - 1)
            + encode_varint(header.timestep) + bytes([tag]) + optional)


def record_length(header: RecordHeader, string_lengths: tuple[int, ...] | list[int],
                  version: int = FORMAT_VERSION) -> int:
    """The bytes ``pack`` would write for this header and strings of these lengths, without packing
    them: what a side channel's keep-or-drop rule weighs its bytes against."""
    return (len(_header_bytes(header, version, 0)) + sum(len(encode_varint(n)) for n in string_lengths)
            + sum(string_lengths) + _CRC_BYTES)


def pack_record(header: RecordHeader, strings: list[bytes], fingerprint: bytes,
                version: int = FORMAT_VERSION) -> Record:
    """Serialize one record; ``header.version``, ``string_lengths`` and ``fingerprint_tag`` are
    derived here. ``version`` below 4 writes a legacy record (tests and tools only)."""
    _check_fingerprint(fingerprint)
    body = bytearray(_header_bytes(header, version, fingerprint[0]))
    for s in strings:
        body += encode_varint(len(s))
    for s in strings:
        body += s
    body += _crc(fingerprint, bytes(body)).to_bytes(_CRC_BYTES, "little")
    return Record(bytes(body), replace(header, version=version, string_lengths=tuple(len(s) for s in strings),
                                       fingerprint_tag=fingerprint[0]))


def pack(header: RecordHeader, strings: list[bytes], fingerprint: bytes, version: int = FORMAT_VERSION) -> bytes:
    """Serialize one record (see :func:`pack_record`)."""
    return pack_record(header, strings, fingerprint, version).data


# ---- reading

def _read_extensions(record: bytes, pos: int) -> tuple[dict[str, Any], tuple[Extension, ...], int]:
    count, pos = _read_varint(record, pos, "extension count")
    if not 1 <= count <= MAX_EXTENSIONS:
        raise BitstreamError(f"corrupt record: {count} extensions (1..{MAX_EXTENSIONS} when flagged)",
                             status="corrupt")
    values: dict[str, Any] = {}
    unknown: list[Extension] = []
    last_id = 0
    for _ in range(count):
        tag, pos = _read_varint(record, pos, "extension id")
        length, pos = _read_varint(record, pos, f"length of extension {tag >> 1}")
        ext_id, critical = tag >> 1, bool(tag & 1)
        if ext_id <= last_id:
            raise BitstreamError(f"corrupt record: extension ids out of order ({ext_id} after {last_id})",
                                 status="corrupt")
        last_id = ext_id
        if pos + length > len(record):
            raise BitstreamError(f"truncated record: it ends inside extension {ext_id}", status="truncated")
        payload = record[pos:pos + length]
        pos += length
        field = FIELDS_BY_ID.get(ext_id)
        if field is not None:
            try:
                value, end = field.read(payload, 0)
            except BitstreamError as e:  # the entry's length is authoritative: a short value is damage
                raise BitstreamError(f"corrupt record: the {field.name} extension is damaged ({e})",
                                     status="corrupt") from None
            if end != length:
                raise BitstreamError(f"corrupt record: the {field.name} extension holds {length} bytes, its value "
                                     f"{end}", status="corrupt")
            values[field.name] = value
        elif critical:
            raise BitstreamError(f"record needs extension {ext_id}, which this sprdiff does not know and must not "
                                 f"skip (it changes the decoded image): upgrade sprdiff to decode it",
                                 status="future_version")
        else:
            unknown.append(Extension(ext_id, critical, payload))
    return values, tuple(unknown), pos


def read_header(record: bytes, num_strings: int | None = None) -> tuple[RecordHeader, int]:
    """Parse the header without a model: returns it and the offset of the first string.

    The CRC is *not* checked here (it needs the model's fingerprint); use :func:`unpack`
    to decode. ``num_strings`` defaults to "all varints until the payload fits".
    """
    if not isinstance(record, bytes | bytearray | memoryview):
        raise TypeError(f"a record is bytes, got {type(record).__name__}")
    record = bytes(record)
    if len(record) == 0:
        raise BitstreamError("truncated record: it is empty", status="truncated")
    if record[0] != MAGIC:
        raise BitstreamError(f"not an SPRDiff record: first byte is 0x{record[0]:02x}, expected 0x{MAGIC:02x}",
                             status="not_sprdiff")
    if len(record) < 2:
        raise BitstreamError("truncated record: it ends before the version byte", status="truncated")
    version = record[1]
    if version > FORMAT_VERSION:
        raise BitstreamError(f"record uses future format version {version}; this sprdiff reads versions "
                             f"{list(SUPPORTED_VERSIONS)}: upgrade sprdiff to decode it", status="future_version")
    if version not in SUPPORTED_VERSIONS:
        raise BitstreamError(f"unsupported format version {version}", status="corrupt")
    if len(record) < _MIN_RECORD:
        raise BitstreamError(f"truncated record: {len(record)} bytes is shorter than any valid record",
                             status="truncated")
    flags = record[2]
    if flags & ~_allowed_flags(version) or (flags >> 4) & 0x3 not in PADDING_MODES:
        raise BitstreamError(f"corrupt record: invalid flags byte 0x{flags:02x}", status="corrupt")
    pos = 3
    width_m1, pos = _read_varint(record, pos, "width")
    height_m1, pos = _read_varint(record, pos, "height")
    timestep, pos = _read_varint(record, pos, "timestep")
    if width_m1 >= MAX_SIDE or height_m1 >= MAX_SIDE:
        raise BitstreamError(f"corrupt record: image size {width_m1 + 1}x{height_m1 + 1} is implausible",
                             status="corrupt")
    if pos >= len(record):
        raise BitstreamError("truncated record: it ends before the fingerprint tag", status="truncated")
    tag = record[pos]
    pos += 1
    values: dict[str, Any] = {}
    unknown: tuple[Extension, ...] = ()
    if version >= EXTENSIONS_VERSION:
        if flags & _EXTENSIONS_FLAG:
            values, unknown, pos = _read_extensions(record, pos)
    else:
        for field in FIELDS:
            if field.legacy_flag and flags & field.legacy_flag:
                values[field.name], pos = field.read(record, pos)
    for name, value in values.items():
        problem = FIELDS_BY_NAME[name].problem(value)
        if problem:
            raise BitstreamError(f"corrupt record: {problem}", status="corrupt")
    lengths: list[int] = []
    while num_strings is None or len(lengths) < num_strings:
        n, pos = _read_varint(record, pos, f"length of string {len(lengths)}")
        lengths.append(n)
        if num_strings is None and pos + sum(lengths) + _CRC_BYTES >= len(record):
            break
    header = RecordHeader(width=width_m1 + 1, height=height_m1 + 1, timestep=timestep,
                          rate_id=flags & 0xF, fingerprint_tag=tag, padding=PADDING_MODES[(flags >> 4) & 0x3],
                          version=version, string_lengths=tuple(lengths), extensions=unknown, **values)
    return header, pos


def unpack(record: bytes, fingerprint: bytes, num_strings: int) -> tuple[RecordHeader, list[bytes]]:
    """Parse and verify one record for the model with this fingerprint.

    Raises :class:`BitstreamError` with ``status`` ``truncated``, ``corrupt``,
    ``model_mismatch``, ``future_version`` or ``not_sprdiff``; never returns unchecked data.
    """
    _check_fingerprint(fingerprint)
    header, pos = read_header(record, num_strings)
    record = bytes(record)
    if header.fingerprint_tag != fingerprint[0]:
        raise BitstreamError(
            f"record was encoded by a different model (fingerprint tag 0x{header.fingerprint_tag:02x}, "
            f"this model's is 0x{fingerprint[0]:02x}): decode it with the model that encoded it",
            status="model_mismatch")
    end = pos + sum(header.string_lengths)
    if end + _CRC_BYTES > len(record):
        raise BitstreamError(f"truncated record: header declares {end + _CRC_BYTES} bytes, "
                             f"only {len(record)} present", status="truncated")
    if end + _CRC_BYTES < len(record):
        raise BitstreamError(f"corrupt record: {len(record) - end - _CRC_BYTES} unexpected trailing bytes",
                             status="corrupt")
    stored = int.from_bytes(record[end:], "little")
    if stored != _crc(fingerprint, record[:end]):
        raise BitstreamError("corrupt record: checksum mismatch (the bytes were altered, or the record comes "
                             "from a different model whose fingerprint shares its first byte)", status="corrupt")
    strings = []
    for n in header.string_lengths:
        strings.append(record[pos:pos + n])
        pos += n
    return header, strings


def container_overhead(record: bytes) -> int:
    """Bytes of a record beyond its entropy-coded strings."""
    header, _ = read_header(record)
    return len(record) - sum(header.string_lengths)
