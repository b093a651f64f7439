"""A corpus of hostile and awkward inputs, crafted in memory at test time (nothing is read from disk).

:func:`image_files` gives the files of an image-folder input, :func:`tar_shards` the shards of a
WebDataset input and :func:`parquet_files` the tables of a Parquet input. Every case says which
status the encode job must give it and, where the image is legitimately convertible, the exact
pixels the conversion rule (``sprdiff.images``) must produce, or ``None`` when the pixels come
from a lossy decoder and only the shape is known.

Headers that declare huge sizes are written byte by byte with valid checksums, so the file gets
past the format's own integrity checks and only a size limit can stop it.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pipeline_testing import make_tar, png_bytes

from pipeline.keys import file_keys

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Case:
    name: str  # file name under the input prefix (its key is the name without the extension)
    data: bytes
    status: str  # the status the job must write
    what: str  # one line for the docs table
    pixels: np.ndarray | None = None  # ok cases: the exact (H, W, 3) array the conversion rule gives
    shape: tuple[int, int] | None = None  # ok cases from lossy decoders: (H, W) only


def save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int, *, bit_depth: int = 8, color_type: int = 2) -> bytes:
    """A well-formed PNG (valid CRCs) whose IHDR declares ``width x height`` over a few bytes of IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + png_chunk(b"IEND", b""))


def png_bomb(side: int) -> bytes:
    """A real, complete grayscale PNG of ``side x side`` zeros: ~1000x smaller than its pixels."""
    row = b"\x00" * (side + 1)  # filter byte + pixels
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A baseline JPEG whose SOF0 declares ``width x height``, spliced into a real small JPEG."""
    real = save(Image.new("RGB", (16, 16), (90, 120, 150)), "JPEG", quality=90)
    at = real.index(b"\xff\xc0")
    sof = bytearray(real[at:at + 2 + struct.unpack(">H", real[at + 2:at + 4])[0]])
    sof[5:9] = struct.pack(">HH", height, width)
    return real[:at] + bytes(sof) + real[at + len(sof):]


def webp_declaring(width: int, height: int) -> bytes:
    """A lossless WebP (VP8L) whose header declares ``width x height`` (14 bits each, so <= 16384)."""
    bits = (width - 1) | ((height - 1) << 14)  # alpha hint 0, version 0
    vp8l = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 16
    riff = b"WEBP" + b"VP8L" + struct.pack("<I", len(vp8l)) + vp8l
    return b"RIFF" + struct.pack("<I", len(riff)) + riff


def gif_declaring(width: int, height: int) -> bytes:
    """A GIF whose logical screen and only frame declare ``width x height``."""
    real = save(Image.new("P", (2, 2)), "GIF")
    data = bytearray(real)
    data[6:10] = struct.pack("<HH", width, height)
    frame = data.index(b"\x2c")  # image descriptor: left, top, width, height
    data[frame + 5:frame + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def bmp_declaring(width: int, height: int) -> bytes:
    data = bytearray(save(Image.new("RGB", (2, 2)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def _rng() -> np.random.Generator:
    return np.random.default_rng(2026)


def _noise(h: int, w: int, c: int = 3) -> np.ndarray:
    return _rng().integers(0, 256, (h, w, c) if c else (h, w), dtype=np.uint8)


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Compositing over white for alpha in {0, 255} (exact whatever the rounding)."""
    return np.where(alpha[..., None] == 255, rgb, 255).astype(np.uint8)


def convertible_cases() -> list[Case]:
    """Awkward but valid images: each must become a row with status ``ok`` and these pixels."""
    cases = []
    rgb = _noise(24, 40)
    jpeg = save(Image.fromarray(rgb), "JPEG", quality=90)
    cases.append(Case("wrong-ext-jpeg.png", jpeg, "ok", "JPEG bytes named .png", shape=(24, 40)))
    cases.append(Case("wrong-ext-png.jpg", png_bytes(rgb), "ok", "PNG bytes named .jpg", pixels=rgb))
    cases.append(Case("no-extension", png_bytes(rgb[:8]), "ok", "PNG with no file extension", pixels=rgb[:8]))
    cases.append(Case("one-by-one.png", png_bytes(rgb[:1, :1]), "ok", "1x1 pixel", pixels=rgb[:1, :1]))
    cases.append(Case("one-row.png", png_bytes(np.ascontiguousarray(np.tile(rgb[:1], (1, 8, 1)))), "ok",
                      "one row: 320 wide, 1 high", pixels=np.tile(rgb[:1], (1, 8, 1))))
    column = np.ascontiguousarray(np.tile(rgb[:, :1], (8, 1, 1)))
    cases.append(Case("one-column.png", png_bytes(column), "ok", "one column: 1 wide, 192 high", pixels=column))

    g16 = _rng().integers(0, 65536, (20, 30), dtype=np.uint16)
    g16[0, :3] = (0, 257 * 128, 65535)
    expected16 = np.rint(g16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    cases.append(Case("gray-16bit.png", save(Image.fromarray(g16), "PNG"), "ok", "16-bit grayscale PNG",
                      pixels=np.repeat(expected16[..., None], 3, axis=2)))
    rgb48 = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in np.repeat(g16[..., None], 3, axis=2))
    png48 = (PNG_SIGNATURE + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 30, 20, 16, 2, 0, 0, 0))
             + png_chunk(b"IDAT", zlib.compress(rgb48)) + png_chunk(b"IEND", b""))
    cases.append(Case("rgb-48bit.png", png48, "ok", "16-bit-per-channel RGB PNG (Pillow keeps the high byte)",
                      pixels=np.repeat((g16 >> 8).astype(np.uint8)[..., None], 3, axis=2)))
    i32 = np.full((6, 7), 40000, dtype=np.int32)
    i32[0, 0] = 0
    expected32 = np.rint(np.clip(i32, 0, 65535) * 255 / 65535).astype(np.uint8)
    cases.append(Case("int32.tif", save(Image.fromarray(i32, "I"), "TIFF"), "ok", "32-bit integer TIFF",
                      pixels=np.repeat(expected32[..., None], 3, axis=2)))
    f32 = np.linspace(-0.5, 1.5, 6 * 7, dtype=np.float32).reshape(6, 7)
    expectedf = np.rint(np.clip(f32, 0, 1).astype(np.float64) * 255).astype(np.uint8)
    cases.append(Case("float32.tif", save(Image.fromarray(f32, "F"), "TIFF"), "ok", "32-bit float TIFF",
                      pixels=np.repeat(expectedf[..., None], 3, axis=2)))

    cmyk = Image.fromarray(_noise(16, 24, 4), "CMYK")
    cases.append(Case("cmyk.jpg", save(cmyk, "JPEG", quality=90), "ok", "CMYK JPEG", shape=(16, 24)))
    gray = _noise(16, 24, 0)
    cases.append(Case("gray.jpg", save(Image.fromarray(gray, "L"), "JPEG"), "ok", "grayscale JPEG",
                      shape=(16, 24)))

    palette = (np.arange(256 * 3, dtype=np.int64).reshape(256, 3) * 7 % 256).astype(np.uint8)
    index = _noise(12, 20, 0)
    p_img = Image.fromarray(index, "P")
    p_img.putpalette(palette.tobytes())
    cases.append(Case("palette.png", save(p_img, "PNG"), "ok", "palette (P) PNG", pixels=palette[index]))
    cases.append(Case("palette-alpha.png", save(p_img, "PNG", transparency=0), "ok",
                      "palette PNG with a transparent index", pixels=_over_white(palette[index],
                                                                                  np.where(index == 0, 0, 255))))
    alpha = np.where(_noise(12, 20, 0) > 100, 255, 0).astype(np.uint8)
    la = np.stack([gray[:12, :20], alpha], axis=-1)
    cases.append(Case("gray-alpha.png", save(Image.fromarray(la, "LA"), "PNG"), "ok", "LA (gray + alpha) PNG",
                      pixels=_over_white(np.repeat(gray[:12, :20, None], 3, axis=2), alpha)))
    rgba = np.concatenate([rgb[:12, :20], alpha[..., None]], axis=-1)
    cases.append(Case("rgba.png", save(Image.fromarray(rgba, "RGBA"), "PNG"), "ok", "RGBA PNG",
                      pixels=_over_white(rgb[:12, :20], alpha)))

    upright = np.ascontiguousarray(rgb[:16, :32])
    tagged = Image.fromarray(np.rot90(upright, k=1))  # stored turned left: orientation 6 turns it back
    exif = tagged.getexif()
    exif[EXIF_ORIENTATION] = 6
    cases.append(Case("exif-rotated.png", save(tagged, "PNG", exif=exif.tobytes()), "ok",
                      "EXIF orientation 6 (PNG eXIf): stored 16x32, upright 32x16 (W x H)", pixels=upright))
    cases.append(Case("exif-rotated.jpg", save(tagged, "JPEG", quality=95, exif=exif.tobytes()), "ok",
                      "EXIF orientation 6 (JPEG): stored 16x32, upright 32x16 (W x H)", shape=(16, 32)))

    frames = [Image.fromarray(np.full((10, 14, 3), c, np.uint8)) for c in ((200, 30, 30), (30, 30, 200), (9, 9, 9))]
    first = np.full((10, 14, 3), (200, 30, 30), np.uint8)
    for name, fmt, what, kw in (("animated.gif", "GIF", "animated GIF, 3 frames", {}),
                                ("animated.png", "PNG", "animated PNG (APNG), 3 frames", {}),
                                ("animated.webp", "WEBP", "animated lossless WebP, 3 frames", {"lossless": True})):
        data = save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, **kw)
        cases.append(Case(name, data, "ok", what, pixels=first))
    return cases


def broken_cases(good_png: bytes) -> list[Case]:
    """Files that are not usable images: each must become a row with this status and a message."""
    rgb = _noise(64, 64)
    jpeg = save(Image.fromarray(rgb), "JPEG", quality=90)
    webp = save(Image.fromarray(rgb), "WEBP", quality=80)
    gif = save(Image.fromarray(rgb).convert("P"), "GIF")
    corrupt_png = bytearray(good_png)
    idat = corrupt_png.index(b"IDAT") + 4
    corrupt_png[idat + 2:idat + 40] = bytes(38)  # zlib stream damaged, CRC left stale
    return [
        Case("zero-bytes.png", b"", "empty", "0 bytes"),
        Case("zero-bytes.jpg", b"", "empty", "0 bytes, .jpg"),
        Case("text.png", b"this is not an image\n" * 10, "not_image", "text named .png"),
        Case("notes.txt", "plain text, UTF-8: é ü\n".encode() * 4, "not_image", "text file (.txt)"),
        Case("page.jpg", b"<!doctype html><html><body>404 Not Found</body></html>", "not_image",
             "an HTML error page saved as .jpg"),
        Case("random.webp", _rng().bytes(2048), "not_image", "random bytes named .webp"),
        Case("svg.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "not_image",
             "SVG (not a raster format Pillow reads)"),
        Case("png-signature-only.png", PNG_SIGNATURE, "unreadable", "the 8-byte PNG signature alone"),
        Case("cut-in-header.png", good_png[:20], "truncated", "PNG cut inside its IHDR chunk"),
        Case("cut-half.png", good_png[: len(good_png) // 2], "truncated", "PNG cut in half"),
        Case("cut-half.jpg", jpeg[: len(jpeg) // 2], "truncated", "JPEG cut in half"),
        Case("cut-half.webp", webp[: len(webp) // 2], "truncated", "WebP cut in half"),
        Case("cut-half.gif", gif[: len(gif) // 2], "truncated", "GIF cut in half"),
        Case("corrupt-idat.png", bytes(corrupt_png), "unreadable", "PNG with a damaged zlib stream (bad CRC)"),
        Case("zero-width.png", png_declaring(0, 10), "unreadable", "PNG whose IHDR declares 0x10"),
        Case("huge-ihdr.png", png_declaring(100_000, 100_000), "too_large",
             "PNG header declaring 100000x100000 (10 gigapixels), valid CRCs"),
        Case("gigapixel-16bit.png", png_declaring(40_000, 25_000, bit_depth=16, color_type=6), "too_large",
             "PNG header declaring 40000x25000 16-bit RGBA (1 GP, 8 GB of pixels)"),
        Case("bomb-81mp.png", png_bomb(9000), "too_large",
             "decompression bomb: complete 9000x9000 PNG (81 MP) in ~80 kB"),
        Case("huge-sof.jpg", jpeg_declaring(65_000, 65_000), "too_large", "JPEG SOF declaring 65000x65000"),
        Case("huge.webp", webp_declaring(16_384, 16_384), "too_large", "WebP (VP8L) declaring 16384x16384"),
        Case("huge.gif", gif_declaring(65_535, 65_535), "too_large", "GIF declaring 65535x65535"),
        Case("huge.bmp", bmp_declaring(30_000, 30_000), "too_large", "BMP declaring 30000x30000"),
    ]


def image_files(good: dict[str, np.ndarray]) -> tuple[dict[str, bytes], dict[str, Case]]:
    """The files of one image-folder input: the good images as PNG, then every crafted case.

    Returns ``(files by name, cases by key)``; good images are cases with status ``ok`` too.
    """
    cases = [Case(f"{key}.png", png_bytes(pixels), "ok", "good photo crop", pixels=pixels)
             for key, pixels in good.items()]
    cases += convertible_cases() + broken_cases(png_bytes(next(iter(good.values()))))
    files = {c.name: c.data for c in cases}
    assert len(files) == len(cases), "two cases share a file name"
    names = sorted(files)  # keys as the job derives them (stems, or full names where stems collide)
    return files, {key: next(c for c in cases if c.name == name) for key, name in zip(file_keys(names), names)}


# ---- WebDataset shards

def tar_with_huge_member(first: bytes) -> bytes:
    """A tar whose second member's header (valid checksum) declares 4 GiB of data that is not there."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        info = tarfile.TarInfo("a.png")
        info.size = len(first)
        t.addfile(info, io.BytesIO(first))
    end = 512 + -(-len(first) // 512) * 512  # the first member: its header block, then its padded data
    big = tarfile.TarInfo("b.png")
    big.size = 4 << 30
    return buf.getvalue()[:end] + big.tobuf(tarfile.USTAR_FORMAT) + b"\x00" * 4096


def corrupt_header(tar: bytes, member_index: int) -> bytes:
    """The tar with the header of member ``member_index`` overwritten (its checksum no longer matches)."""
    offsets = []
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        offsets = [m.offset for m in t.getmembers()]
    data = bytearray(tar)
    data[offsets[member_index]:offsets[member_index] + 100] = b"\xff" * 100  # the name field
    return bytes(data)


@dataclass(frozen=True)
class ShardCase:
    name: str  # the .tar file
    data: bytes
    rows: dict[str, str]  # key -> expected status
    what: str
    pixels: dict[str, np.ndarray] | None = None  # ok keys -> exact pixels


def tar_shards(good: dict[str, np.ndarray]) -> list[ShardCase]:
    items = list(good.items())
    pngs = {k: png_bytes(v) for k, v in items}
    (k0, p0), (k1, p1), (k2, p2) = items[:3]
    fine = make_tar([{"__key__": k0, "png": pngs[k0], "json": b"{}"}, {"__key__": "cut", "png": pngs[k1][:100]},
                     {"__key__": "caption-only", "txt": b"no image here"}, {"__key__": k1, "jpg": pngs[k1]}])
    three = make_tar([{"__key__": k, "png": pngs[k]} for k in (k0, k1, k2)])
    with tarfile.open(fileobj=io.BytesIO(three)) as t:
        last = t.getmembers()[-1]
        split = last.offset_data + last.size // 2  # inside the last member's data
    return [
        ShardCase("a-fine.tar", fine, {f"a-fine/{k0}": "ok", "a-fine/cut": "truncated",
                                       "a-fine/caption-only": "no_image", f"a-fine/{k1}": "ok"},
                  "good samples, a truncated member, a sample with no image", {f"a-fine/{k0}": p0,
                                                                                 f"a-fine/{k1}": p1}),
        ShardCase("b-truncated.tar", three[:split], {f"b-truncated/{k0}": "ok", f"b-truncated/{k1}": "ok",
                                                     f"b-truncated/{k2}": "read_error", "b-truncated": "read_error"},
                  "tar cut inside its last member", {f"b-truncated/{k0}": p0, f"b-truncated/{k1}": p1}),
        ShardCase("c-garbage.tar", _rng().bytes(3000), {"c-garbage": "read_error"}, "random bytes named .tar"),
        ShardCase("d-empty.tar", b"", {"d-empty": "read_error"}, "0-byte .tar"),
        ShardCase("e-bad-header.tar", corrupt_header(three, 1),
                  {f"e-bad-header/{k0}": "ok", "e-bad-header": "read_error"},
                  "second member's header damaged (checksum mismatch)", {f"e-bad-header/{k0}": p0}),
        ShardCase("f-huge-member.tar", tar_with_huge_member(pngs[k2]),
                  {"f-huge-member/a": "ok", "f-huge-member/b": "too_large", "f-huge-member": "read_error"},
                  "a member header declaring 4 GiB that the file does not hold", {"f-huge-member/a": p2}),
        ShardCase("g-duplicate-key.tar", make_tar([{"__key__": "x", "png": pngs[k0]}, {"__key__": "y", "png": pngs[k1]},
                                                   {"__key__": "x", "png": pngs[k2]}]),
                  {"g-duplicate-key/x": "ok", "g-duplicate-key/y": "ok", "g-duplicate-key/x~2": "duplicate_key"},
                  "sample key 'x' appears twice (not adjacent)", {"g-duplicate-key/x": p0, "g-duplicate-key/y": p1}),
    ]


# ---- Parquet tables

@dataclass(frozen=True)
class TableCase:
    name: str
    data: bytes
    rows: dict[str, str]
    what: str
    pixels: dict[str, np.ndarray] | None = None


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def parquet_files(good: dict[str, np.ndarray]) -> list[TableCase]:
    items = list(good.items())[:2]
    pngs = [png_bytes(v) for _, v in items]
    fine = _parquet(pa.table({"id": ["p0", "p1", "junk", "null"], "image": [*pngs, b"junk", None]}))
    ints = _parquet(pa.table({"id": ["i0", "i1"], "image": pa.array([10**12, 7], pa.int64())}))
    strings = _parquet(pa.table({"id": ["s0"], "image": ["iVBORw0KGgo= (base64, not bytes)"]}))
    struct_ints = _parquet(pa.table({"img": pa.array([{"bytes": 10**12, "path": "a.png"}],
                                                     pa.struct([("bytes", pa.int64()), ("path", pa.string())]))}))
    return [
        TableCase("a-fine.parquet", fine, {"a-fine/p0": "ok", "a-fine/p1": "ok", "a-fine/junk": "not_image",
                                           "a-fine/null": "empty"}, "good rows, a junk row, a null row",
                  {"a-fine/p0": items[0][1], "a-fine/p1": items[1][1]}),
        TableCase("b-int-images.parquet", ints, {"b-int-images/i0": "wrong_type", "b-int-images/i1": "wrong_type"},
                  "'image' column of int64"),
        TableCase("c-string-images.parquet", strings, {"c-string-images/s0": "wrong_type"},
                  "'image' column of strings (base64 text)"),
        TableCase("d-struct-ints.parquet", struct_ints, {"d-struct-ints/00000000": "wrong_type"},
                  "Hugging Face style struct whose 'bytes' field is int64"),
        TableCase("e-not-parquet.parquet", b"PAR1 this is not a Parquet file PAR1", {"e-not-parquet": "read_error"},
                  "garbage named .parquet"),
        TableCase("f-truncated.parquet", fine[: len(fine) // 2], {"f-truncated": "read_error"},
                  "Parquet file cut in half (no footer)"),
    ]
