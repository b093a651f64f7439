"""The SPRDiff record format: the only module that knows bytes.

One record holds one image. All fixed-width integers are little-endian.

====  ==================  ==========================================================
size  field               meaning
====  ==================  ==========================================================
1     magic               ``0xD5``
1     version             format version: 1; 2 when the record has a colour map; 3 when
                          it has an offset grid
1     flags               bits 0-3 rate id, bits 4-5 padding mode, bit 6 colour map
                          present (version >= 2), bit 7 offset grid present (version 3)
var   width - 1           LEB128 varint
var   height - 1          LEB128 varint
var   timestep            LEB128 varint, the one-step diffusion timestep
1     fingerprint tag     first byte of the model's SHA-256 fingerprint
var   colour map          only if flag bit 6: 12 zigzag LEB128 varints (``sprdiff.colour``)
var   offset grid         only if flag bit 7 (``sprdiff.offset_grid``): rows - 1 and
                          cols - 1 (LEB128 varints), 3 bytes of scale indexes (R, G, B),
                          the length of its rANS string (LEB128 varint), the string
var   string lengths      LEB128 varint per entropy-coded string (count fixed by model)
...   strings             the entropy-coded strings, concatenated
4     crc32               CRC-32 of the model's full 32-byte fingerprint followed by
                          every byte above
====  ==================  ==========================================================

The CRC is keyed with the full fingerprint, so a record decoded with other weights fails
even when the one-byte tag collides (1 in 256); the tag lets the common case say
"different model" instead of "corrupt". The declared string lengths let truncation be
told apart from corruption. A 512x512 image with one string costs 16 bytes of container.

Version 2 added the colour map, version 3 the offset grid. A record is written in the oldest
version that can hold it (without either, byte for byte what version 1 wrote), so archives stay
readable by older sprdiff wherever they can be.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from sprdiff.errors import BitstreamError

MAGIC = 0xD5
FORMAT_VERSION = 3  # the newest version this module reads and writes
SUPPORTED_VERSIONS = (1, 2, 3)
_COLOUR_MAP_FLAG = 0x40
_COLOUR_MAP_VERSION = 2  # the first version with the colour map
COLOUR_MAP_LENGTH = 12
MAX_COLOUR_VALUE = 1 << 12  # bounds each colour-map integer (sprdiff.colour keeps well inside)
_OFFSET_GRID_FLAG = 0x80
_OFFSET_GRID_VERSION = 3  # the first version with the offset grid
MAX_GRID_SIDE = 256  # rows and columns of an offset grid
GRID_SCALE_INDEXES = 64  # CompressAI's standard scale table (sprdiff.offset_grid checks it)

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

    @property
    def num_pixels(self) -> int:
        return self.width * self.height


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


def _plausible_colour_map(values) -> bool:
    return len(values) == COLOUR_MAP_LENGTH and all(abs(v) < MAX_COLOUR_VALUE for v in values)


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


def _crc(fingerprint: bytes, body: bytes) -> int:
    return zlib.crc32(body, zlib.crc32(fingerprint))


def _check_fingerprint(fingerprint: bytes) -> None:
    if not isinstance(fingerprint, bytes | bytearray) or len(fingerprint) != 32:
        raise ValueError("fingerprint must be the model's 32-byte SHA-256 digest (SPRDiff.fingerprint_bytes)")


def pack(header: RecordHeader, strings: list[bytes], fingerprint: bytes) -> bytes:
    """Serialize one record. ``header.string_lengths`` and ``fingerprint_tag`` are derived here."""
    _check_fingerprint(fingerprint)
    if not 1 <= header.width <= MAX_SIDE or not 1 <= header.height <= MAX_SIDE:
        raise ValueError(f"image size {header.width}x{header.height} is outside 1..{MAX_SIDE}")
    if not 0 <= header.rate_id <= MAX_RATE_ID:
        raise ValueError(f"rate_id must be in 0..{MAX_RATE_ID}, got {header.rate_id}")
    if header.padding not in PADDING_IDS:
        raise ValueError(f"unknown padding mode {header.padding!r}; known: {sorted(PADDING_IDS)}")
    colour_map = header.colour_map
    if colour_map is not None and not _plausible_colour_map(colour_map):
        raise ValueError(f"colour_map must be {COLOUR_MAP_LENGTH} integers of magnitude < {MAX_COLOUR_VALUE}, "
                         f"got {colour_map}")
    grid = header.offset_grid
    if grid is not None and grid.problem():
        raise ValueError(grid.problem())
    flags = (header.rate_id | (PADDING_IDS[header.padding] << 4) | (_COLOUR_MAP_FLAG if colour_map is not None else 0)
             | (_OFFSET_GRID_FLAG if grid is not None else 0))
    # the oldest version that can hold the record
    version = _OFFSET_GRID_VERSION if grid is not None else _COLOUR_MAP_VERSION if colour_map is not None else 1
    body = bytearray([MAGIC, version, flags])
    body += encode_varint(header.width - 1)
    body += encode_varint(header.height - 1)
    body += encode_varint(header.timestep)
    body.append(fingerprint[0])
    for v in colour_map or ():
        body += encode_varint(zigzag(v))
    if grid is not None:
        body += encode_varint(grid.rows - 1) + encode_varint(grid.cols - 1) + bytes(grid.scale_indexes)
        body += encode_varint(len(grid.string)) + grid.string
    for s in strings:
        body += encode_varint(len(s))
    for s in strings:
        body += s
    body += _crc(fingerprint, bytes(body)).to_bytes(_CRC_BYTES, "little")
    return bytes(body)


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
    allowed = (0x3F | (_COLOUR_MAP_FLAG if version >= _COLOUR_MAP_VERSION else 0)
               | (_OFFSET_GRID_FLAG if version >= _OFFSET_GRID_VERSION else 0))
    if flags & ~allowed or (flags >> 4) & 0x3 not in PADDING_MODES:
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
    colour_map = None
    if flags & _COLOUR_MAP_FLAG:
        values = []
        for i in range(COLOUR_MAP_LENGTH):
            v, pos = _read_varint(record, pos, f"colour map value {i}")
            values.append(unzigzag(v))
        if not _plausible_colour_map(values):
            raise BitstreamError(f"corrupt record: implausible colour map {values}", status="corrupt")
        colour_map = tuple(values)
    offset_grid = None
    if flags & _OFFSET_GRID_FLAG:
        offset_grid, pos = _read_offset_grid(record, pos)
    lengths: list[int] = []
    while num_strings is None or len(lengths) < num_strings:
        n, pos = _read_varint(record, pos, f"length of string {len(lengths)}")
        lengths.append(n)
        if num_strings is None and pos + sum(lengths) + _CRC_BYTES >= len(record):
            break
    header = RecordHeader(width=width_m1 + 1, height=height_m1 + 1, timestep=timestep,
                          rate_id=flags & 0xF, fingerprint_tag=tag, padding=PADDING_MODES[(flags >> 4) & 0x3],
                          version=version, string_lengths=tuple(lengths), colour_map=colour_map,
                          offset_grid=offset_grid)
    return header, pos


def _read_offset_grid(record: bytes, pos: int) -> tuple[CodedOffsetGrid, int]:
    rows_m1, pos = _read_varint(record, pos, "offset grid rows")
    cols_m1, pos = _read_varint(record, pos, "offset grid columns")
    if pos + 3 > len(record):
        raise BitstreamError("truncated record: it ends inside the offset grid's scale indexes", status="truncated")
    scale_indexes = tuple(record[pos:pos + 3])
    length, pos = _read_varint(record, pos + 3, "offset grid length")
    if pos + length > len(record):
        raise BitstreamError("truncated record: it ends inside the offset grid", status="truncated")
    grid = CodedOffsetGrid(rows=rows_m1 + 1, cols=cols_m1 + 1, scale_indexes=scale_indexes,  # type: ignore[arg-type]
                           string=record[pos:pos + length])
    if grid.problem():
        raise BitstreamError(f"corrupt record: {grid.problem()}", status="corrupt")
    return grid, pos + length


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
