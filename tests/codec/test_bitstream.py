"""The record format: layout, overhead, and one clear error per kind of damage."""

from __future__ import annotations

import hashlib

import pytest

from sprdiff import bitstream
from sprdiff.bitstream import RecordHeader, encode_varint, pack, read_header, unpack
from sprdiff.errors import BitstreamError

FP = hashlib.sha256(b"model-a").digest()
OTHER_FP = hashlib.sha256(b"model-b").digest()
assert FP[0] != OTHER_FP[0]


COLOUR_MAP = (91, -163, 83, -2, 105, -225, 130, -4, -33, 35, -1, 1)  # a real one (photo 045, demo model)


GRID = bitstream.CodedOffsetGrid(rows=8, cols=12, scale_indexes=(21, 20, 63), string=bytes(range(7, 107)))


def _record(width=512, height=512, strings=(b"\x01" * 1000,), timestep=999, rate_id=3, fp=FP,
            colour_map=None, offset_grid=None, version=bitstream.FORMAT_VERSION, extensions=()) -> bytes:
    header = RecordHeader(width=width, height=height, timestep=timestep, rate_id=rate_id, fingerprint_tag=0,
                          colour_map=colour_map, offset_grid=offset_grid, extensions=extensions)
    return pack(header, list(strings), fp, version=version)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 2**32 - 1])
def test_varint_round_trip(value):
    data = encode_varint(value) + b"tail"
    parsed, pos = bitstream._read_varint(data, 0, "x")
    assert parsed == value and data[pos:] == b"tail"


def test_pack_unpack_round_trip():
    strings = [b"abc", b"", b"\x00" * 300]
    rec = _record(width=37, height=1, strings=strings, timestep=5, rate_id=15)
    header, out = unpack(rec, FP, num_strings=3)
    assert out == strings
    assert (header.width, header.height, header.timestep, header.rate_id) == (37, 1, 5, 15)
    assert header.fingerprint_tag == FP[0] and header.version == bitstream.FORMAT_VERSION == 4
    assert header.colour_map is None and header.extensions == ()


def test_container_overhead_is_at_most_16_bytes_for_512px():
    rec = _record()
    overhead = bitstream.container_overhead(rec)
    print(f"container overhead for a 512x512 record with one 1000-byte string: {overhead} bytes")
    assert overhead == len(rec) - 1000 <= 16


def test_header_is_readable_without_the_model():
    header, offset = read_header(_record(width=640, height=480))
    assert (header.width, header.height, header.rate_id, header.timestep) == (640, 480, 3, 999)
    assert header.string_lengths == (1000,)


def test_every_flipped_byte_is_refused():
    rec = _record(strings=(bytes(range(256)),))
    for i in range(len(rec)):
        for bit in (0, 7):
            damaged = bytearray(rec)
            damaged[i] ^= 1 << bit
            with pytest.raises(BitstreamError):
                unpack(bytes(damaged), FP, num_strings=1)


def test_flipped_payload_byte_says_corrupt():
    rec = bytearray(_record())
    rec[20] ^= 0x10
    with pytest.raises(BitstreamError, match="corrupt") as e:
        unpack(bytes(rec), FP, num_strings=1)
    assert e.value.status == "corrupt"


def test_every_truncation_is_refused_and_payload_cuts_say_truncated():
    rec = _record()
    for n in range(len(rec)):
        with pytest.raises(BitstreamError) as e:
            unpack(rec[:n], FP, num_strings=1)
        if n > 16:  # past the header: the declared length tells truncation from corruption
            assert e.value.status == "truncated", (n, str(e.value))
            assert "truncated" in str(e.value)


def test_trailing_bytes_are_refused():
    with pytest.raises(BitstreamError, match="trailing"):
        unpack(_record() + b"\x00", FP, num_strings=1)


def test_other_model_is_refused_by_name():
    with pytest.raises(BitstreamError, match="different model") as e:
        unpack(_record(fp=OTHER_FP), FP, num_strings=1)
    assert e.value.status == "model_mismatch"


def test_tag_collision_is_still_caught_by_the_keyed_crc():
    colliding = next(hashlib.sha256(str(i).encode()).digest() for i in range(10_000)
                     if hashlib.sha256(str(i).encode()).digest()[0] == FP[0]
                     and hashlib.sha256(str(i).encode()).digest() != FP)
    with pytest.raises(BitstreamError, match="checksum"):
        unpack(_record(fp=colliding), FP, num_strings=1)


def test_future_version_says_upgrade():
    rec = bytearray(_record())
    rec[1] = bitstream.FORMAT_VERSION + 1
    with pytest.raises(BitstreamError, match="future format version") as e:
        unpack(bytes(rec), FP, num_strings=1)
    assert e.value.status == "future_version" and "upgrade" in str(e.value)


def test_not_a_record():
    with pytest.raises(BitstreamError, match="not an SPRDiff record") as e:
        unpack(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, FP, num_strings=1)
    assert e.value.status == "not_sprdiff"
    with pytest.raises(BitstreamError, match="empty"):
        unpack(b"", FP, num_strings=1)


def test_programmer_errors_are_not_bitstream_errors():
    with pytest.raises(ValueError, match="32-byte"):
        unpack(_record(), b"short", num_strings=1)
    with pytest.raises(ValueError, match="rate_id"):
        _record(rate_id=16)
    with pytest.raises(TypeError):
        read_header("not bytes")  # type: ignore[arg-type]


def test_a_legacy_version_2_record_with_a_colour_map_round_trips():
    plain = _record(strings=(b"abc", b"\x00" * 300), version=1)
    rec = _record(strings=(b"abc", b"\x00" * 300), colour_map=COLOUR_MAP, version=2)
    header, strings = unpack(rec, FP, num_strings=2)
    assert header.version == 2 and header.colour_map == COLOUR_MAP
    assert strings == [b"abc", b"\x00" * 300]
    assert read_header(rec)[0].colour_map == COLOUR_MAP
    print(f"colour map: {len(rec) - len(plain)} bytes")
    assert len(plain) < len(rec) <= len(plain) + 24  # 12 zigzag varints of at most 2 bytes


@pytest.mark.parametrize("value", [0, -1, 1, -64, 63, -4095, 4095])
def test_zigzag_round_trip(value):
    assert bitstream.unzigzag(bitstream.zigzag(value)) == value
    assert bitstream.zigzag(value) >= 0


@pytest.mark.parametrize("version", [2, 3, 4])
def test_colour_map_damage_is_refused(version):
    rec = _record(strings=(bytes(range(256)),), colour_map=COLOUR_MAP, version=version)
    for i in range(len(rec)):  # flips inside the map too
        damaged = bytearray(rec)
        damaged[i] ^= 0x01
        with pytest.raises(BitstreamError):
            unpack(bytes(damaged), FP, num_strings=1)
    for cut in range(len(rec)):
        with pytest.raises(BitstreamError):
            unpack(rec[:cut], FP, num_strings=1)


def test_a_record_cannot_claim_a_field_its_version_lacks():
    rec = bytearray(_record(version=1))
    rec[2] |= 0x40  # the colour-map flag, which version 1 does not have
    with pytest.raises(BitstreamError, match="flags") as e:
        read_header(bytes(rec))
    assert e.value.status == "corrupt"
    rec = bytearray(_record(colour_map=COLOUR_MAP, version=2))
    rec[2] |= 0x80  # the offset-grid flag, which version 2 does not have
    with pytest.raises(BitstreamError, match="flags"):
        read_header(bytes(rec))
    rec = bytearray(_record())
    rec[2] |= 0x80  # reserved from version 4
    with pytest.raises(BitstreamError, match="flags"):
        read_header(bytes(rec))
    with pytest.raises(ValueError, match="cannot hold a offset_grid"):
        _record(offset_grid=GRID, version=2)


def test_a_bad_colour_map_is_a_programmer_error():
    with pytest.raises(ValueError, match="colour_map"):
        _record(colour_map=(1, 2, 3))
    with pytest.raises(ValueError, match="colour_map"):
        _record(colour_map=(5000,) + (0,) * 11)


@pytest.mark.parametrize("colour_map", [None, COLOUR_MAP])
def test_a_legacy_version_3_record_with_an_offset_grid_round_trips(colour_map):
    plain = _record(strings=(b"abc", b"\x00" * 300), colour_map=colour_map, version=3)
    rec = _record(strings=(b"abc", b"\x00" * 300), colour_map=colour_map, offset_grid=GRID, version=3)
    header, strings = unpack(rec, FP, num_strings=2)
    assert header.version == 3 and header.offset_grid == GRID and header.colour_map == colour_map
    assert strings == [b"abc", b"\x00" * 300]
    assert read_header(rec)[0].offset_grid == GRID
    # rows, cols: 1 byte each; 3 scale indexes; the string's length (1 byte) and the string
    assert len(rec) - len(plain) == 2 + 3 + 1 + len(GRID.string)


@pytest.mark.parametrize("version", [3, 4])
def test_offset_grid_damage_is_refused(version):
    rec = _record(strings=(bytes(range(256)),), colour_map=COLOUR_MAP, offset_grid=GRID, version=version)
    for i in range(len(rec)):
        damaged = bytearray(rec)
        damaged[i] ^= 0x01
        with pytest.raises(BitstreamError):
            unpack(bytes(damaged), FP, num_strings=1)
    for cut in range(len(rec)):
        with pytest.raises(BitstreamError) as e:
            unpack(rec[:cut], FP, num_strings=1)
        assert e.value.status == "truncated" or cut < 3, (cut, e.value)


@pytest.mark.parametrize("version", [3, 4])
def test_an_implausible_offset_grid_is_corrupt_and_a_bad_one_a_programmer_error(version):
    rec = bytearray(_record(offset_grid=GRID, version=version))
    start = rec.index(bytes([GRID.rows - 1, GRID.cols - 1]) + bytes(GRID.scale_indexes))
    rec[start + 2] = bitstream.GRID_SCALE_INDEXES  # a scale index past the table
    with pytest.raises(BitstreamError, match="scale indexes") as e:
        read_header(bytes(rec))
    assert e.value.status == "corrupt"
    with pytest.raises(ValueError, match="rows and columns"):
        _record(offset_grid=bitstream.CodedOffsetGrid(rows=0, cols=3, scale_indexes=(1, 1, 1), string=b"x"))
    with pytest.raises(ValueError, match="scale indexes"):
        _record(offset_grid=bitstream.CodedOffsetGrid(rows=2, cols=3, scale_indexes=(1, 1), string=b"x"))


# ---- version 4: the extension area

def test_version_4_carries_both_side_channels_as_extensions():
    plain = _record(strings=(b"abc", b"\x00" * 300))
    rec = _record(strings=(b"abc", b"\x00" * 300), colour_map=COLOUR_MAP, offset_grid=GRID)
    header, strings = unpack(rec, FP, num_strings=2)
    assert header.version == 4 and header.colour_map == COLOUR_MAP and header.offset_grid == GRID
    assert strings == [b"abc", b"\x00" * 300]
    legacy = _record(strings=(b"abc", b"\x00" * 300), colour_map=COLOUR_MAP, offset_grid=GRID, version=3)
    # the count (1 byte) and per entry a tag and a length (1 byte each) beyond version 3's inline fields
    assert len(rec) - len(legacy) == 1 + 2 * 2
    assert bitstream.record_length(RecordHeader(512, 512, 999, 3, 0, colour_map=COLOUR_MAP, offset_grid=GRID),
                                   [3, 300]) == len(rec)
    assert len(plain) == len(_record(strings=(b"abc", b"\x00" * 300), version=1))  # nothing optional: no cost


def test_an_unknown_non_critical_extension_is_skipped_and_kept():
    note = bitstream.Extension(id=40, critical=False, payload=b"encoder=test")
    rec = _record(colour_map=COLOUR_MAP, extensions=(note,))
    header, strings = unpack(rec, FP, num_strings=1)
    assert header.extensions == (note,) and header.colour_map == COLOUR_MAP and strings == [b"\x01" * 1000]
    assert pack(header, strings, FP) == rec  # written back unchanged


def test_an_unknown_critical_extension_is_refused_with_upgrade():
    rec = _record(extensions=(bitstream.Extension(id=41, critical=True, payload=b"\x00\x01"),))
    with pytest.raises(BitstreamError, match="extension 41.*upgrade") as e:
        unpack(rec, FP, num_strings=1)
    assert e.value.status == "future_version"


def test_a_damaged_extension_area_is_corrupt():
    one = bitstream.Extension(id=40, critical=False, payload=b"x")
    rec = bytearray(_record(strings=(b"ab",), extensions=(one,)))
    area = rec.index(bytes([1, 40 << 1, 1]) + b"x")  # count, tag, length, payload
    for offset, value, match in [(0, 0, "0 extensions"), (1, 2 << 1, "offset_grid extension is damaged"),
                                 (2, 0x7F, "truncated record: it ends inside extension 40")]:
        damaged = bytearray(rec)
        damaged[area + offset] = value
        with pytest.raises(BitstreamError, match=match):
            unpack(bytes(damaged), FP, num_strings=1)
    two = bytearray(_record(extensions=(one, bitstream.Extension(id=41, critical=False, payload=b"y"))))
    start = two.index(bytes([40 << 1, 1]) + b"x")
    two[start:start + 6] = bytes([41 << 1, 1]) + b"y" + bytes([40 << 1, 1]) + b"x"
    with pytest.raises(BitstreamError, match="out of order") as e:
        read_header(bytes(two))
    assert e.value.status == "corrupt"
    with pytest.raises(ValueError, match="unique"):
        _record(extensions=(bitstream.Extension(id=1, critical=False, payload=b""),))


def test_a_hand_written_version_4_record():
    """The layout spelled out byte by byte (not produced by pack), so the writer cannot drift unnoticed."""
    fp = bytes(range(32))
    plain = bytes.fromhex("d5 04 01 02 01 e7 07 00 02 01 02 baa9b2cd")
    #                      magic, version 4, flags (rate 1, replicate), width-1 = 2, height-1 = 1,
    #                      timestep 999 (varint e7 07), tag fp[0], one string of 2 bytes, CRC-32 LE
    header, strings = unpack(plain, fp, num_strings=1)
    assert (header.width, header.height, header.timestep, header.rate_id, header.version) == (3, 2, 999, 1, 4)
    assert strings == [b"\x01\x02"] and header.colour_map is None
    assert pack(RecordHeader(3, 2, 999, 1, 0), [b"\x01\x02"], fp) == plain
    mapped = bytes.fromhex("d5 04 41 02 01 e7 07 00 01 03 0c 02 01 00 04 00 00 00 00 00 00 00 05 02 01 02 7ebddd16")
    #                       flags bit 6: an extension area of 1 entry, tag 3 (id 1 = colour map, critical),
    #                       12 bytes: the map (1, -1, 0, 2, 0, ..., -3) in zigzag varints
    header, _ = unpack(mapped, fp, num_strings=1)
    assert header.colour_map == (1, -1, 0, 2, 0, 0, 0, 0, 0, 0, 0, -3)
    assert pack(RecordHeader(3, 2, 999, 1, 0, colour_map=header.colour_map), [b"\x01\x02"], fp) == mapped
