"""What a reading task yields: one :class:`SourceItem` per archive row, bad ones included."""

from __future__ import annotations

from dataclasses import dataclass

BYTES_PER_PIXEL_READ = 16  # an uncompressed 4-channel float image: no image file within the pixel limit is larger


def max_file_bytes(max_pixels: int) -> int:
    """The largest file (or tar member) read into memory for a pixel limit: 16 bytes per pixel + 1 MiB."""
    return BYTES_PER_PIXEL_READ * max_pixels + (1 << 20)


def too_large_message(what: str, size: int, max_bytes: int) -> str:
    return (f"too large: {what} is {size:,} bytes, over the {max_bytes:,}-byte read limit "
            f"({BYTES_PER_PIXEL_READ} bytes per pixel of --max-pixels): not read")


@dataclass
class SourceItem:
    """One input read from storage: bytes, or a status saying why there are none."""

    key: str
    source_uri: str
    data: bytes | None
    status: str = "ok"
    error: str | None = None
    read_s: float = 0.0
