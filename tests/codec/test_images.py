"""Input conversion: every mode becomes 8-bit RGB by the documented rule; bad files get a status."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sprdiff.errors import ImageError
from sprdiff.images import load_image


def _save(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_rgb_png_is_lossless():
    arr = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    out = load_image(_save(Image.fromarray(arr)))
    assert out.dtype == np.uint8 and np.array_equal(out, arr)


def test_grayscale_is_replicated():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = load_image(_save(Image.fromarray(gray, "L")))
    assert out.shape == (3, 4, 3) and all(np.array_equal(out[..., c], gray) for c in range(3))


def test_alpha_is_composited_over_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red stays red
    rgba[0, 1] = (0, 0, 0, 0)  # transparent becomes white
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black becomes mid gray
    out = load_image(_save(Image.fromarray(rgba, "RGBA")))
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert all(abs(int(v) - 127) <= 1 for v in out[1, 0])
    la = Image.fromarray(rgba[..., [0, 3]], "LA")
    assert tuple(load_image(_save(la))[0, 1]) == (255, 255, 255)


def test_palette_with_transparency():
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 1
    out = load_image(_save(img, transparency=1))
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[0, 1]) == (255, 255, 255)


def test_sixteen_bit_is_scaled_to_eight():
    arr = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    img = Image.fromarray(arr)  # Pillow opens 16-bit PNGs as I;16 or I
    out = load_image(_save(img))
    assert list(out[0, :, 0]) == [0, 128, 255]


def test_cmyk_jpeg_becomes_rgb():
    img = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    out = load_image(_save(img, "JPEG", quality=95))
    assert out.shape == (8, 8, 3) and out[..., 0].mean() > 200 and out[..., 1].mean() < 60


def test_exif_orientation_is_applied():
    arr = np.zeros((2, 3, 3), dtype=np.uint8)
    arr[0, 0] = 255  # white top-left pixel of a 3-wide, 2-high image
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    out = load_image(_save(img, exif=exif.tobytes()))
    assert out.shape == (3, 2, 3)
    assert out[0, 1].min() == 255  # top-left went to top-right


def test_animated_takes_first_frame():
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    out = load_image(buf.getvalue())
    assert tuple(out[0, 0]) == (255, 0, 0)


@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 1)])
def test_degenerate_sizes(size):
    out = load_image(_save(Image.new("RGB", size, (1, 2, 3))))
    assert out.shape == (size[1], size[0], 3)


def test_pixel_limit_is_checked_before_decoding():
    # A PNG whose header declares 100000 x 100000 pixels but carries almost no data.
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")
    with pytest.raises(ImageError, match="too large") as e:
        load_image(bomb)
    assert e.value.status == "too_large"
    small = _save(Image.new("RGB", (100, 100)))
    with pytest.raises(ImageError, match="limit of 5,000") as e:
        load_image(small, max_pixels=5000)
    assert load_image(small, max_pixels=10_000).shape == (100, 100, 3)


@pytest.mark.parametrize("data,status", [
    (b"", "empty"),
    (b"hello, this is text", "not_image"),
])
def test_not_images(data, status):
    with pytest.raises(ImageError) as e:
        load_image(data)
    assert e.value.status == status


def test_truncated_png_and_jpeg():
    arr = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for fmt in ("PNG", "JPEG"):
        data = _save(Image.fromarray(arr), fmt)
        with pytest.raises(ImageError) as e:
            load_image(data[: len(data) // 2])
        assert e.value.status in ("truncated", "unreadable"), fmt


def test_damaged_headers_say_what_the_file_claims_to_be():
    webp = _save(Image.new("RGB", (32, 32), (9, 99, 199)), "WEBP")
    with pytest.raises(ImageError, match="RIFF.*declares") as e:
        load_image(webp[: len(webp) // 2])  # Pillow only says "could not create decoder object"
    assert e.value.status == "truncated"
    with pytest.raises(ImageError, match="starts like a PNG") as e:
        load_image(b"\x89PNG\r\n\x1a\n")
    assert e.value.status == "unreadable"
    png = _save(Image.new("RGB", (32, 32)))
    with pytest.raises(ImageError, match="truncated image header") as e:
        load_image(png[:20])  # cut inside IHDR
    assert e.value.status == "truncated"
