"""Turning any input file into the 8-bit RGB array the codec takes.

Conversion rule (documented in the README, applied to every input):

* the EXIF orientation tag is applied, so pixels are stored upright;
* animated images (GIF, APNG, WebP): the first frame;
* 16-bit and 32-bit integer images are scaled to 8 bits (``round(v * 255 / max)``,
  max = 65535 for 16-bit modes); float images are clipped to [0, 1] and scaled; 16-bit-per-channel
  RGB(A) PNGs are the exception: Pillow's decoder keeps the high byte (``v >> 8``, within one level);
* grayscale is replicated to three channels; palette images are expanded;
  CMYK and YCbCr/LAB are converted to RGB by Pillow;
* any alpha channel is composited over opaque **white** (what a viewer shows on a page);
* the result is a ``(H, W, 3)`` ``uint8`` array, H, W >= 1.

Size is checked from the header *before* pixels are decoded, so a decompression bomb
never allocates its memory. Pillow's own guard refuses headers over ``2 * Image.MAX_IMAGE_PIXELS``
(178,956,970 pixels by default) whatever ``max_pixels`` says: that is the effective ceiling.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sprdiff.errors import ImageError

DEFAULT_MAX_PIXELS = 64_000_000  # 64 MP; a configurable limit, on by default

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def load_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, WebP, ...) into ``(H, W, 3) uint8``.

    Raises :class:`ImageError` with status ``empty``, ``not_image``, ``too_large`` or
    ``truncated``/``unreadable``.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"load_image takes the file's bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError("empty file (0 bytes)", status="empty")
    data = bytes(data)
    try:
        with warnings.catch_warnings():
            # Pillow warns, then raises, past its own bomb limit; we apply ours first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        kind, cut = _signature(data), _truncation(data)
        if cut:
            raise ImageError(cut, status="truncated") from None
        if kind is None:
            raise ImageError("not an image: no decoder recognises the bytes", status="not_image") from None
        raise ImageError(f"unreadable image header: the file starts like a {kind} but its header cannot be "
                         f"parsed (damaged or cut short)", status="unreadable") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"too large: {e}", status="too_large") from None
    except Exception as e:  # noqa: BLE001 - any parser failure is a property of the data
        cut = _truncation(data)
        status = "truncated" if cut or "truncated" in str(e).lower() else "unreadable"
        raise ImageError(cut or f"{status} image header: {e}", status=status) from None
    return to_rgb_array(img, max_pixels=max_pixels)


_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _signature(data: bytes) -> str | None:
    """The format a file's first bytes claim, for messages about files no decoder accepts."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)


def _truncation(data: bytes) -> str | None:
    """A message when the container declares more bytes than the file has (WebP's RIFF size)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 8:
        declared = struct.unpack("<I", data[4:8])[0] + 8
        if declared > len(data):
            return f"truncated: the WebP (RIFF) header declares {declared:,} bytes, the file has {len(data):,}"
    return None


def to_rgb_array(img: Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Apply the conversion rule to an opened (possibly not yet decoded) Pillow image."""
    width, height = img.size
    check_size(width, height, max_pixels=max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            return _convert(img)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e)
        status = "truncated" if "truncated" in msg.lower() or isinstance(e, EOFError) else "unreadable"
        raise ImageError(f"cannot decode image ({img.format}): {msg}", status=status) from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"too large: {e}", status="too_large") from None


def check_size(width: int, height: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})", status="unreadable")
    if width * height > max_pixels:
        raise ImageError(f"too large: {width}x{height} = {width * height:,} pixels exceeds the limit of "
                         f"{max_pixels:,} (raise max_pixels to accept it)", status="too_large")


def _convert(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        arr = np.asarray(img)
        if mode == "F":
            arr8 = np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0
        else:
            top = 65535.0 if (mode in _SIXTEEN_BIT_MODES or arr.max(initial=0) > 255) else 255.0
            arr8 = np.clip(arr.astype(np.float64), 0, top) * (255.0 / top)
        gray = np.rint(arr8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(arr)


def encode_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """An image's size once its sides are padded up to multiples of ``multiple`` (the model's pad multiple)."""
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple
