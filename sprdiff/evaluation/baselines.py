"""Classical baselines at matched bytes: downscale, encode with JPEG/WebP/AVIF (Pillow), decode, upscale.

For one image and one byte budget (the size of our record for that image), every scale in
``scales`` is tried; at each scale a binary search over the codec's quality range finds the highest
quality whose file fits the budget. Of the settings that fit, the one with the best PSNR against the
original is kept (criterion: PSNR, stated in the report). A setting is only ever accepted after its
bytes were measured, so a baseline never uses more bytes than our record. When even the lowest
quality at the smallest scale is too big, the result says so (``cannot_meet_budget``).

Bytes counted: the whole file Pillow writes (container and headers included, e.g. ~280 B of
JPEG tables, ~300 B of AVIF boxes), plus, when the image was downscaled, the original width and
height as two LEB128 varints (the decoder needs them to upscale, as our record carries them).
Resampling: Pillow's Lanczos filter both ways (antialiased when reducing).
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, features


@dataclass(frozen=True)
class ClassicalCodec:
    name: str  # our method name: "jpeg", "webp", "avif"
    pil_format: str
    quality_min: int
    quality_max: int
    options: dict = field(default_factory=dict)  # passed to Image.save

    def available(self) -> str | None:
        """Why this codec cannot run in this Pillow build (None when it can)."""
        feature = {"WEBP": "webp", "AVIF": "avif", "JPEG": "jpg"}[self.pil_format]
        if not features.check(feature):
            return f"{self.name}: this Pillow build has no {self.pil_format} support ({feature} feature missing)"
        return None

    def encode(self, image: Image.Image, quality: int) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format=self.pil_format, quality=quality, **self.options)
        return buf.getvalue()


CODECS: dict[str, ClassicalCodec] = {
    # optimize=True: optimal Huffman tables (fewer bytes at the same quality); 4:2:0 chroma (Pillow's default)
    "jpeg": ClassicalCodec("jpeg", "JPEG", 1, 100, {"optimize": True}),
    # method=6: libwebp's slowest, most compact setting
    "webp": ClassicalCodec("webp", "WEBP", 0, 100, {"method": 6}),
    # speed=6 is libavif's default trade-off; 4:2:0 chroma (Pillow's default)
    "avif": ClassicalCodec("avif", "AVIF", 0, 100, {"speed": 6}),
}
DEFAULT_BASELINES = ("webp", "avif", "jpeg")
DEFAULT_SCALES = (1.0, 3 / 4, 1 / 2, 1 / 3, 1 / 4, 1 / 6, 1 / 8, 1 / 12, 1 / 16)
RESAMPLE = Image.Resampling.LANCZOS


@dataclass(frozen=True)
class BaselineResult:
    codec: str
    budget_bytes: int
    status: str  # "ok" or "cannot_meet_budget"
    message: str = ""
    data: bytes = b""  # the encoded file (at the reduced size)
    side_info_bytes: int = 0  # original width/height varints, when downscaled
    scale: float = 1.0
    quality: int | None = None
    coded_size: tuple[int, int] | None = None  # (width, height) of the encoded picture
    reconstruction: np.ndarray | None = None  # (H, W, 3) uint8 at the original size
    tried: int = 0  # how many encodes the search ran

    @property
    def num_bytes(self) -> int:
        return len(self.data) + self.side_info_bytes


def varint_length(value: int) -> int:
    """Bytes of ``value`` as an unsigned LEB128 varint."""
    length = 1
    while value >= 0x80:
        value >>= 7
        length += 1
    return length


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, round(width * scale)), max(1, round(height * scale))


def decode_and_upscale(codec: ClassicalCodec, data: bytes, width: int, height: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        if img.size != (width, height):
            img = img.resize((width, height), RESAMPLE)
        return np.asarray(img, dtype=np.uint8).copy()


def _best_quality_within(codec: ClassicalCodec, picture: Image.Image, budget: int) -> tuple[int, bytes, int] | None:
    """Highest quality whose file is <= budget bytes: (quality, data, encodes run); None if none fits."""
    lo_q, hi_q = codec.quality_min, codec.quality_max
    data = codec.encode(picture, lo_q)
    tried = 1
    if len(data) > budget:
        return None
    best = (lo_q, data)
    top = codec.encode(picture, hi_q)
    tried += 1
    if len(top) <= budget:
        return hi_q, top, tried
    # invariant: lo_q fits (best holds its bytes), hi_q does not
    while hi_q - lo_q > 1:
        mid = (lo_q + hi_q) // 2
        data = codec.encode(picture, mid)
        tried += 1
        if len(data) <= budget:
            lo_q, best = mid, (mid, data)
        else:
            hi_q = mid
    return best[0], best[1], tried


def encode_at_budget(image: np.ndarray, codec: ClassicalCodec | str, budget_bytes: int,
                     scales: tuple[float, ...] = DEFAULT_SCALES) -> BaselineResult:
    """The best-PSNR setting of ``codec`` over ``scales`` x quality using at most ``budget_bytes``."""
    from sprdiff.evaluation.metrics import psnr  # torch: here, so the CLI's parser reads CODECS without it

    if isinstance(codec, str):
        codec = CODECS[codec]
    if not scales or any(not 0 < s <= 1 for s in scales):
        raise ValueError(f"scales must be in (0, 1], got {scales}")
    height, width = image.shape[:2]
    original = Image.fromarray(image)
    best: BaselineResult | None = None
    best_psnr = -np.inf
    tried = 0
    seen_sizes = set()
    for scale in scales:
        size = scaled_size(width, height, scale)
        if size in seen_sizes:
            continue
        seen_sizes.add(size)
        downscaled = size != (width, height)
        side = varint_length(width) + varint_length(height) if downscaled else 0
        picture = original.resize(size, RESAMPLE) if downscaled else original
        found = _best_quality_within(codec, picture, budget_bytes - side) if budget_bytes - side > 0 else None
        if found is None:
            tried += 1
            continue
        quality, data, n = found
        tried += n
        recon = decode_and_upscale(codec, data, width, height)
        score = psnr(image, recon)
        if score > best_psnr:
            best_psnr = score
            best = BaselineResult(codec.name, budget_bytes, "ok", data=data, side_info_bytes=side, scale=scale,
                                  quality=quality, coded_size=size, reconstruction=recon)
    if best is None:
        smallest = scaled_size(width, height, min(scales))
        return BaselineResult(codec.name, budget_bytes, "cannot_meet_budget", tried=tried,
                              message=f"{codec.name} cannot meet the budget of {budget_bytes} bytes: even quality "
                                      f"{codec.quality_min} at {smallest[0]}x{smallest[1]} is larger")
    assert best.num_bytes <= budget_bytes, (best.num_bytes, budget_bytes)  # guaranteed by construction
    return dataclasses.replace(best, tried=tried)
