"""Helpers of the pipeline tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from webdataset import TarWriter

MAX_PIXELS = 256 * 256  # the test crops fit; the 300x300 'big.png' does not


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def make_tar(samples: list[dict]) -> bytes:
    buf = io.BytesIO()
    with TarWriter(buf, mtime=0) as w:
        for s in samples:
            w.write(s)
    return buf.getvalue()
