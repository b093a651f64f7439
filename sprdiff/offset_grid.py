"""Per-image offset grid: a coarse field of RGB offsets, fitted by the encoder, sent in the record.

What the colour map (``sprdiff.colour``) leaves at < 0.03 bpp is mostly low-frequency: a
brighter or bluer blob across a sky's gradient, a region a few levels too dark. The encoder,
which has the original, fits a grid of RGB offsets (``rows x cols`` nodes over the image) whose
bilinear upsampling takes the decoded image closest to the original (least squares), rounds
them to steps of 1/``OFFSET_STEP_INVERSE`` of full scale, and entropy-codes them with
CompressAI's Gaussian conditional (one zero-mean scale per channel) into one rANS string. The
decoder adds the upsampled grid to x̂ after the colour map. It is the idea of a codec's
encoder-side low-pass residual, in the spirit of the colour map.

The coder's integer CDF tables decide whether a record decodes, so they are not recomputed in
floating point at run time: they are stored in ``tables/offset_grid_cdfs.npz`` (what CompressAI
1.2.8 computes for its standard 64-scale table, the tables every version-3 record was written
with) and checked against ``TABLES_SHA256`` when loaded.

The encoder tries grids of ``CELLS_ALONG_SHORT_SIDE`` cells; ``sprdiff.side_channels`` keeps the
one whose PSNR gain best pays for its bytes, or none.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from compressai.entropy_models import GaussianConditional

from sprdiff import bands
from sprdiff.bitstream import GRID_SCALE_INDEXES, MAX_GRID_SIDE, CodedOffsetGrid

OFFSET_STEP_INVERSE = 64  # offsets on a grid of 1/64 of full scale (4 of 255 levels)
CELLS_ALONG_SHORT_SIDE = (2, 3, 4, 6, 8, 12, 16)
MIN_CELL_PIXELS = 16  # no cell narrower than this: finer detail is the codec's job, not a side channel's
TABLES = Path(__file__).parent / "tables" / "offset_grid_cdfs.npz"
TABLE_ARRAYS = ("quantized_cdf", "cdf_length", "offset", "scale_table")
TABLES_SHA256 = "c596e7faa09e1d545afa79125dd8a03e04ec74c13045c5376c4822fd1e47e1e1"  # of the three integer tables


def tables_digest(quantized_cdf: np.ndarray, cdf_length: np.ndarray, offset: np.ndarray) -> str:
    h = hashlib.sha256()
    for table in (quantized_cdf, cdf_length, offset):
        h.update(np.ascontiguousarray(table, dtype=np.int32).tobytes())
    return h.hexdigest()


@cache
def _gaussian_conditional() -> GaussianConditional:
    """CompressAI's zero-mean Gaussian coder over the stored tables; no learned parameters."""
    stored = np.load(TABLES)
    tables = {name: stored[name] for name in TABLE_ARRAYS}
    if tables_digest(tables["quantized_cdf"], tables["cdf_length"], tables["offset"]) != TABLES_SHA256:
        raise RuntimeError(f"{TABLES} is damaged (its CDF tables do not match their SHA-256): reinstall sprdiff")
    if len(tables["scale_table"]) != GRID_SCALE_INDEXES:  # the record spends one byte per index
        raise RuntimeError(f"{TABLES} has {len(tables['scale_table'])} scales, the record format {GRID_SCALE_INDEXES}")
    coder = GaussianConditional(scale_table=tables["scale_table"].tolist())
    coder._quantized_cdf = torch.from_numpy(tables["quantized_cdf"])
    coder._cdf_length = torch.from_numpy(tables["cdf_length"])
    coder._offset = torch.from_numpy(tables["offset"])
    return coder


def grid_shape(height: int, width: int, cells: int) -> tuple[int, int] | None:
    """Rows and columns of a grid with ``cells`` cells along the image's shorter side and square-ish
    cells along the other, or None if its cells would be narrower than ``MIN_CELL_PIXELS``."""
    short, long = min(height, width), max(height, width)
    if short < cells * MIN_CELL_PIXELS:
        return None
    along_long = min(MAX_GRID_SIDE, max(1, round(cells * long / short)))
    return (cells, along_long) if height <= width else (along_long, cells)


def interpolation_matrix(size: int, nodes: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(size, nodes) float64: column j is node j's weight at each pixel under ``upsample``'s
    interpolation (linear, half-pixel centres), so the fit and the decoder share one operator."""
    eye = torch.eye(nodes, dtype=torch.float64, device=device)[:, None, :]
    return F.interpolate(eye, size=size, mode="linear", align_corners=False)[:, 0, :].T


def upsample(offsets: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(3, rows, cols) offsets -> (3, height, width), bilinear, half-pixel centres."""
    return F.interpolate(offsets[None], size=(height, width), mode="bilinear", align_corners=False)[0]


@cache
def _operators(size: int, nodes: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The interpolation matrix (size, nodes) and its pseudo-inverse, per size and device."""
    matrix = interpolation_matrix(size, nodes, device)
    return matrix, torch.linalg.pinv(matrix)


class ResidualProjections:
    """What the grid fits need from a residual r (..., 3, H, W) = original - decoded: Σr² and, for
    each grid row count, R⁺r and Rᵀr (..., 3, rows, W), with R the rows' interpolation matrix.
    Gathered band by band (``sprdiff.bands``), so no whole-image float64 residual is ever held;
    every grid shape's fit and error then take only these small arrays."""

    def __init__(self, original: torch.Tensor, decoded: torch.Tensor | None, row_counts: Iterable[int]):
        """``decoded`` None: ``original`` is the residual itself."""
        counts = sorted(set(row_counts))  # read once: the bands below each use every count
        self.height, self.width = original.shape[-2:]
        self.numel = original.numel()
        self.device = str(original.device)
        self.square_sum: torch.Tensor | None = None
        self._pinv_r: dict[int, torch.Tensor] = {}
        self._transpose_r: dict[int, torch.Tensor] = {}
        images = (original,) if decoded is None else (original, decoded)
        for band, rows in bands.bands_of(*images):
            residual = rows[0] if decoded is None else rows[0] - rows[1]
            self.square_sum = _add(self.square_sum, residual.square().sum())
            for count in counts:
                matrix, pinv = _operators(self.height, count, self.device)
                self._pinv_r[count] = _add(self._pinv_r.get(count), pinv[:, band] @ residual)
                self._transpose_r[count] = _add(self._transpose_r.get(count), matrix[band].T @ residual)

    def fit(self, rows: int, cols: int) -> torch.Tensor:
        """The grid(s) ``(..., 3, rows, cols)`` whose upsampling is closest to the residual in the
        least-squares sense. Bilinear upsampling is separable, so the fit is two small
        pseudo-inverses, shared by every image and channel."""
        _, cols_pinv = _operators(self.width, cols, self.device)
        return self._pinv_r[rows] @ cols_pinv.T

    def error_after(self, values: torch.Tensor) -> float:
        """Mean square of the residual (3, H, W) minus the grid ``values``' upsampled offsets, without
        upsampling: with U = R g Cᵀ, |r - U|² = |r|² - 2<RᵀrC, g> + <RᵀR g CᵀC, g>, all on the grid.
        (The decoder also clips to [0, 1]; this ignores that, which only matters where offsets push
        pixels past black or white.)"""
        rows, cols = values.shape[-2:]
        row_matrix, _ = _operators(self.height, rows, self.device)
        col_matrix, _ = _operators(self.width, cols, self.device)
        g = values.to(torch.float64) / OFFSET_STEP_INVERSE
        projected = self._transpose_r[rows] @ col_matrix  # (3, rows, cols)
        energy = (row_matrix.T @ row_matrix) @ g @ (col_matrix.T @ col_matrix)
        total = self.square_sum - 2 * (projected * g).sum() + (energy * g).sum()
        return float(total) / self.numel


def _add(total: torch.Tensor | None, part: torch.Tensor) -> torch.Tensor:
    return part if total is None else total + part


def fit_offsets(residual: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The grid(s) ``(..., 3, rows, cols)`` closest to ``residual`` ``(..., 3, H, W)`` (least squares),
    on the residual's device: :meth:`ResidualProjections.fit`."""
    return ResidualProjections(residual, None, [rows]).fit(rows, cols)


def residual_after(residual: torch.Tensor, values: torch.Tensor) -> float:
    """Mean square of ``residual`` (3, H, W) minus the grid ``values``' upsampled offsets:
    :meth:`ResidualProjections.error_after`."""
    return ResidualProjections(residual, None, [values.shape[-2]]).error_after(values)


def encode_values(values: np.ndarray | torch.Tensor) -> CodedOffsetGrid:
    """(3, rows, cols) integers -> the record's field: each channel coded with the scale that
    makes it shortest (estimated from the Gaussian's likelihoods), all in one rANS string."""
    coder = _gaussian_conditional()
    v = torch.as_tensor(values).cpu().to(torch.float32)
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


def offset_image(values: np.ndarray | torch.Tensor, height: int, width: int,
                 like: torch.Tensor | None = None) -> torch.Tensor:
    """(3, rows, cols) integers -> the (3, height, width) offsets they add (dtype and device of ``like``)."""
    dtype, device = (like.dtype, like.device) if like is not None else (torch.float64, "cpu")
    return upsample(torch.as_tensor(values).to(dtype=dtype, device=device) / OFFSET_STEP_INVERSE, height, width)


def apply_offsets(x: torch.Tensor, grid: CodedOffsetGrid) -> torch.Tensor:
    """x (3, H, W) in [0, 1] plus the grid's upsampled offsets, clipped to [0, 1]."""
    return (x + offset_image(decode_values(grid), x.shape[1], x.shape[2], like=x)).clamp(0, 1)


def candidate_grids(decoded: torch.Tensor, original: torch.Tensor
                    ) -> list[tuple[CodedOffsetGrid, float, Callable[[], torch.Tensor]]]:
    """Every grid worth weighing for ``decoded`` (3, H, W) against ``original``, both in [0, 1] on one
    device (fitted in float64, band by band), coarsest first: ``(grid, the mean square error left
    with it, a function giving what the decoder will have with it, float64)``. Only the chosen
    grid is ever upsampled."""
    height, width = decoded.shape[-2:]
    shapes = []
    for cells in CELLS_ALONG_SHORT_SIDE:
        shape = grid_shape(height, width, cells)
        if shape is None:
            break
        shapes.append(shape)
    projections = ResidualProjections(original, decoded, [rows for rows, _ in shapes])
    out = []
    for shape in shapes:
        values = torch.round(projections.fit(*shape) * OFFSET_STEP_INVERSE).to(torch.int64)
        if not bool(values.any()):
            continue

        def corrected(values=values) -> torch.Tensor:
            float64 = torch.empty(0, dtype=torch.float64, device=decoded.device)
            return offset_image(values, height, width, like=float64).add_(decoded).clamp_(0, 1)

        out.append((encode_values(values), projections.error_after(values), corrected))
    return out
