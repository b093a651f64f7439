"""Row bands: the side-information fits' float64 arithmetic on a few rows of a full-size image at a
time, so a large photo never holds whole-image float64 temporaries.

The fits (``sprdiff.colour``, ``sprdiff.offset_grid``, ``sprdiff.side_channels``) take float64 for
accuracy; at 16 MP one (3, H, W) float64 copy is 384 MiB and a naive ``mean((a - b) ** 2)`` makes
two more beside the two inputs' copies. Here every sum runs band by band over rows, each band
converted to float64 only while it is used, and results are accumulated. An image of at most
``BAND_PIXELS`` pixels is one band, so it goes through exactly the whole-image arithmetic (same
operations, same rounding) it always did; larger ones differ only in float64 summation order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

BAND_PIXELS = 1 << 22  # 4 Mpx per band: 96 MiB per 3-channel float64 band


def row_bands(height: int, width: int) -> list[slice]:
    """[0, height) in consecutive slices of rows, each at most ``BAND_PIXELS`` pixels (at least one row)."""
    rows = max(1, BAND_PIXELS // max(1, width))
    return [slice(start, min(start + rows, height)) for start in range(0, height, rows)]


def bands_of(*images: torch.Tensor) -> Iterator[tuple[slice, list[torch.Tensor]]]:
    """For images (..., H, W) of one size: each row band and the images' rows in it, in float64."""
    height, width = images[0].shape[-2:]
    for band in row_bands(height, width):
        yield band, [image[..., band, :].double() for image in images]


def mean_square_error(a: torch.Tensor, b: torch.Tensor,
                      transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Mean of ``(transform(a) - b)²`` in float64 over images (..., H, W) of one size, band by band;
    ``transform`` (a per-pixel map such as a colour map) is applied to each float64 band of ``a``."""
    total = None
    for _, (a_band, b_band) in bands_of(a, b):
        if transform is not None:
            a_band = transform(a_band)
        part = ((a_band - b_band) ** 2).sum()
        total = part if total is None else total + part
    return float(total) / a.numel()


def mapped(image: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``transform`` (per pixel) of ``image`` (..., H, W) as one float64 tensor, computed band by band."""
    out = torch.empty(image.shape, dtype=torch.float64, device=image.device)
    for band, (rows,) in bands_of(image):
        out[..., band, :] = transform(rows)
    return out
