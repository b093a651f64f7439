"""The names and limits of the settings that change how the neural stages run but never the byte
format (precision, tile size). Light (no torch), so job configs and CPU-only tasks can check them
without importing the model; ``sprdiff.precision`` and ``sprdiff.tiling`` act on them.
"""

from __future__ import annotations

PRECISIONS = ("fp32", "bf16")
DEFAULT_TILE_SIZE = 2048  # px; above every photo in shared/data (so their figures are unchanged); None: never tile
TILE_MULTIPLE = 64  # tile sides are multiples of the model's pad multiple, so every grid stays aligned


def check_precision_name(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def check_tile_size(tile_size: int | None) -> int | None:
    """``tile_size`` (None or 0: no tiling) or a ``ValueError`` that says what is allowed."""
    if not tile_size:
        return None
    if tile_size < 2 * TILE_MULTIPLE or tile_size % TILE_MULTIPLE:
        raise ValueError(f"tile_size must be a multiple of {TILE_MULTIPLE} and at least {2 * TILE_MULTIPLE} px "
                         f"(or None for no tiling), got {tile_size}")
    return tile_size
