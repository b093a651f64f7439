"""Per-image offset grid: a coarse field of RGB offsets, fitted by the encoder, sent in the record.

What the colour map (``sprdiff.colour``) leaves at < 0.03 bpp is mostly low-frequency: a
brighter or bluer blob across a sky's gradient, a region a few levels too dark. The encoder,
which has the original, fits a grid of RGB offsets (``rows x cols`` nodes over the image) whose
bilinear upsampling takes the decoded image closest to the original (least squares), rounds
them to steps of 1/``OFFSET_STEP_INVERSE`` of full scale, and entropy-codes them with
CompressAI's Gaussian conditional (one zero-mean scale per channel, from CompressAI's standard
scale table) into one rANS string. The decoder adds the upsampled grid to x̂ after the colour
map. It is the idea of a codec's encoder-side low-pass residual, in the spirit of the colour map.

The encoder tries grids of ``CELLS_ALONG_SHORT_SIDE`` cells and sends the one whose PSNR gain
best pays for its bytes, by the colour map's rule (at least ``MIN_DB_PER_RATE_DOUBLING`` dB per
doubling of the record), or none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from compressai.entropy_models import GaussianConditional
from compressai.models.google import get_scale_table

from sprdiff.bitstream import GRID_SCALE_INDEXES, MAX_GRID_SIDE, CodedOffsetGrid
from sprdiff.colour import net_gain_db

OFFSET_STEP_INVERSE = 64  # offsets on a grid of 1/64 of full scale (4 of 255 levels)
CELLS_ALONG_SHORT_SIDE = (2, 3, 4, 6, 8, 12, 16)
MIN_CELL_PIXELS = 16  # no cell narrower than this: finer detail is the codec's job, not a side channel's


@cache
def _gaussian_conditional() -> GaussianConditional:
    """CompressAI's zero-mean Gaussian coder over its standard 64-scale table; no learned parameters,
    so encoder and decoder build the same CDF tables from the compressai version alone."""
    coder = GaussianConditional(None)
    coder.update_scale_table(get_scale_table())
    if coder.scale_table.numel() != GRID_SCALE_INDEXES:  # the record spends one byte per index
        raise RuntimeError(f"compressai's scale table has {coder.scale_table.numel()} scales; the record format "
                           f"expects {GRID_SCALE_INDEXES}: pin the compressai version in pyproject.toml")
    return coder


def grid_shape(height: int, width: int, cells: int) -> tuple[int, int] | None:
    """Rows and columns of a grid with ``cells`` cells along the image's shorter side and square-ish
    cells along the other, or None if its cells would be narrower than ``MIN_CELL_PIXELS``."""
    short, long = min(height, width), max(height, width)
    if short < cells * MIN_CELL_PIXELS:
        return None
    along_long = min(MAX_GRID_SIDE, max(1, round(cells * long / short)))
    return (cells, along_long) if height <= width else (along_long, cells)


def interpolation_matrix(size: int, nodes: int) -> np.ndarray:
    """(size, nodes) float64: column j is node j's weight at each pixel under ``upsample``'s
    interpolation (linear, half-pixel centres), so the fit and the decoder share one operator."""
    eye = torch.eye(nodes, dtype=torch.float64)[:, None, :]
    return F.interpolate(eye, size=size, mode="linear", align_corners=False)[:, 0, :].T.numpy()


def upsample(offsets: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(3, rows, cols) offsets -> (3, height, width), bilinear, half-pixel centres."""
    return F.interpolate(offsets[None], size=(height, width), mode="bilinear", align_corners=False)[0]


def fit_offsets(residual: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The (3, rows, cols) grid whose upsampling is closest to ``residual`` (H, W, 3) in the least
    squares sense. Bilinear upsampling is separable, so the fit is two small pseudo-inverses."""
    rows_pinv = np.linalg.pinv(interpolation_matrix(residual.shape[0], rows))
    cols_pinv = np.linalg.pinv(interpolation_matrix(residual.shape[1], cols))
    return np.stack([rows_pinv @ residual[..., c] @ cols_pinv.T for c in range(3)])


def encode_values(values: np.ndarray) -> CodedOffsetGrid:
    """(3, rows, cols) integers -> the record's field: each channel coded with the scale that
    makes it shortest (estimated from the Gaussian's likelihoods), all in one rANS string."""
    coder = _gaussian_conditional()
    v = torch.as_tensor(values, dtype=torch.float32)
    scales = coder.scale_table.to(torch.float32)[:, None, None, None]  # (scales, 1, 1, 1) against (3, rows, cols)
    bits = -torch.log2(coder._likelihood(v[None], scales).clamp_min(1e-9)).sum(dim=(2, 3))  # (scales, 3)
    scale_indexes = [int(i) for i in bits.argmin(dim=0)]
    indexes = torch.tensor(scale_indexes, dtype=torch.int32)[:, None, None].expand_as(v)
    [string] = coder.compress(v.reshape(1, 1, -1), indexes.reshape(1, 1, -1).contiguous())
    return CodedOffsetGrid(rows=v.shape[1], cols=v.shape[2], scale_indexes=tuple(scale_indexes), string=string)


def decode_values(grid: CodedOffsetGrid) -> np.ndarray:
    """The record's field -> (3, rows, cols) integers."""
    coder = _gaussian_conditional()
    indexes = torch.tensor(grid.scale_indexes, dtype=torch.int32)[:, None, None].expand(3, grid.rows, grid.cols)
    values = coder.decompress([grid.string], indexes.reshape(1, 1, -1).contiguous())
    return values.reshape(3, grid.rows, grid.cols).round().to(torch.int64).numpy()


def offset_image(values: np.ndarray, height: int, width: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """(3, rows, cols) integers -> the (3, height, width) offsets they add (dtype and device of ``like``)."""
    dtype, device = (like.dtype, like.device) if like is not None else (torch.float64, "cpu")
    return upsample(torch.as_tensor(values, dtype=dtype, device=device) / OFFSET_STEP_INVERSE, height, width)


def apply_offsets(x: torch.Tensor, grid: CodedOffsetGrid) -> torch.Tensor:
    """x (3, H, W) in [0, 1] plus the grid's upsampled offsets, clipped to [0, 1]."""
    return (x + offset_image(decode_values(grid), x.shape[1], x.shape[2], like=x)).clamp(0, 1)


@dataclass(frozen=True)
class GridChoice:
    grid: CodedOffsetGrid
    corrected: np.ndarray  # (H, W, 3) float64, what the decoder will have before rounding
    net_gain_db: float


def choose_grid(decoded: np.ndarray, original: np.ndarray, record_bytes: int,
                grid_bytes: Callable[[CodedOffsetGrid], int]) -> GridChoice | None:
    """The grid that best pays for its bytes on ``decoded`` (H, W, 3) in [0, 1] against
    ``original``, or None if none does. ``grid_bytes(grid)`` says how many bytes the grid adds to
    a record of ``record_bytes`` (the record format's own count, container fields included)."""
    height, width = decoded.shape[:2]
    residual = original - decoded
    mse_before = float(np.mean(residual ** 2))
    best: GridChoice | None = None
    for cells in CELLS_ALONG_SHORT_SIDE:
        shape = grid_shape(height, width, cells)
        if shape is None:
            break
        values = np.rint(fit_offsets(residual, *shape) * OFFSET_STEP_INVERSE).astype(np.int64)
        if not values.any():
            continue
        grid = encode_values(values)
        corrected = np.clip(decoded + offset_image(values, height, width).permute(1, 2, 0).numpy(), 0, 1)
        gain = net_gain_db(mse_before, float(np.mean((corrected - original) ** 2)), record_bytes, grid_bytes(grid))
        if gain > 0 and (best is None or gain > best.net_gain_db):
            best = GridChoice(grid=grid, corrected=corrected, net_gain_db=gain)
    return best
