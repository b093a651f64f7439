"""Overlapping tiles for the full-resolution networks, so peak memory is bounded by the tile size
and grows linearly with the pixel count (only the 3-channel image buffers and the small latent
grids are ever held whole).

Which network gets which tiling (``SPRDiff.analysis`` / ``SPRDiff.synthesis``):

* VAE encoder and decoder: diffusers' own tiled encode/decode (``AutoencoderKL.use_tiling``,
  ``tile_sample_min_size``, ``tile_overlap_factor``: overlapping tiles, linear blending of the
  overlaps), switched on for one call by :func:`vae_tiles`. Its GroupNorm statistics are per tile,
  so tiled output differs slightly from whole-image output; the blend hides the seams.
* UNet: :func:`blend_tiled`, overlap-and-blend on the latent grid, every tile conditioned on the
  same F_s (the semantic encoder keeps its global view of the whole x̄). Its GroupNorm and
  self-attention are global, so an exact crop is impossible; overlaps are blended with linear ramps.
* g_a, g_s (the distortion codec) and the projector P: :func:`crop_tiled`, overlap-and-crop. They
  are pure convolution stacks (GDN is per pixel), so with a margin at least their receptive radius
  each kept core equals the whole-image output up to float rounding.
* Fusion, E_l, D_l, T and the entropy model work on the H/16 (or H/8, 4-channel) grid, 256 (64)
  times fewer positions than the image: not tiled. DINOv2 sees the image resized to
  ``semantic_resolution`` (``SPRDiff.semantic_input``): bounded already.

Why hand-written: diffusers tiles only its VAE (the UNet has no tiled forward; MultiDiffusion-style
tiling exists only inside its sampling pipelines, not as a function of one UNet call), and neither
torch nor CompressAI nor timm tiles a convolution stack. The two helpers below are the smallest
pieces that do.

The tile layout is a pure function of the padded image size (from the record header) and the
``tile_size`` setting, so a decoder needs nothing in the record to reproduce it. An image whose
padded sides are both at most ``tile_size`` takes the untiled path exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from sprdiff.run_settings import DEFAULT_TILE_SIZE, TILE_MULTIPLE, check_tile_size  # noqa: F401 (re-exported)

OVERLAP_FACTOR = 0.25  # fraction of a tile shared with its neighbour (VAE and UNet blending)
# Receptive radii (input units) the crop margins must cover; cheng2020-anchor: g_a 57 px, g_s 7 latents, P 7 px.
G_A_MARGIN = 64  # px, a multiple of g_a's stride 16
G_S_MARGIN = 8  # H/16 latent positions
PROJECTOR_MARGIN = 16  # px, a multiple of P's stride 8


def latent_overlap(latent_tile: int) -> int:
    """UNet tile overlap on the latent grid: ``OVERLAP_FACTOR`` of a tile, a multiple of 8 (the
    largest UNet downsampling factor), at least 8."""
    return max(8, int(latent_tile * OVERLAP_FACTOR) // 8 * 8)


def needs_tiling(x: torch.Tensor, tile_size: int | None) -> bool:
    """Whether an image batch (B, C, H, W) is larger than one tile."""
    return bool(tile_size) and max(x.shape[-2:]) > tile_size


def _cores(length: int, core: int) -> list[tuple[int, int]]:
    """[0, length) cut into consecutive pieces of ``core`` (the last one shorter)."""
    return [(start, min(start + core, length)) for start in range(0, length, core)]


def crop_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, core: int, margin: int,
               scale: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """Overlap-and-crop: ``fn`` (a convolution stack whose output has ``scale[0] / scale[1]`` times
    the input's sides) applied to cores of ``core`` input positions widened by ``margin`` on every
    side that has a neighbour; each tile's output is cropped back to its core. ``core`` and
    ``margin`` must be multiples of ``scale[1]`` (the stride), so every tile samples the same grid."""
    num, den = scale
    height, width = x.shape[-2:]
    if height <= core and width <= core:
        return fn(x)
    if core % den or margin % den:
        raise ValueError(f"core {core} and margin {margin} must be multiples of the stride {den}")
    out = None
    for y0, y1 in _cores(height, core):
        for x0, x1 in _cores(width, core):
            a0, a1, b0, b1 = max(0, y0 - margin), min(height, y1 + margin), max(0, x0 - margin), min(width, x1 + margin)
            tile = fn(x[..., a0:a1, b0:b1])
            if out is None:
                out = tile.new_empty(*tile.shape[:-2], height * num // den, width * num // den)
            oy, ox = (y0 - a0) * num // den, (x0 - b0) * num // den
            h, w = (y1 - y0) * num // den, (x1 - x0) * num // den
            out[..., y0 * num // den:y0 * num // den + h, x0 * num // den:x0 * num // den + w] = \
                tile[..., oy:oy + h, ox:ox + w]
    return out


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts on [0, length): a stride of ``tile - overlap``, the last tile flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def _ramp(n: int, overlap: int, before: bool, after: bool, like: torch.Tensor) -> torch.Tensor:
    """Blend weights along one tile side: linear ramps over ``overlap`` where a neighbour shares it."""
    w = torch.ones(n, dtype=torch.float32, device=like.device)
    ramp = torch.arange(1, overlap + 1, dtype=torch.float32, device=like.device) / (overlap + 1)
    if before:
        w[:overlap] = torch.minimum(w[:overlap], ramp)
    if after:
        w[n - overlap:] = torch.minimum(w[n - overlap:], ramp.flip(0))
    return w


def blend_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """Overlap-and-blend: ``fn`` (same output size as its input) on ``tile``² windows of x that share
    ``overlap`` positions with each neighbour; the outputs are averaged with linear-ramp weights.
    Starts are multiples of ``tile - overlap`` (and the last is flush with the end), so with ``tile``,
    ``overlap`` and the sides multiples of a network's downsampling factor every window is valid."""
    height, width = x.shape[-2:]
    if height <= tile and width <= tile:
        return fn(x)
    out = weight = dtype = None
    ys, xs = _starts(height, tile, overlap), _starts(width, tile, overlap)
    for i, y0 in enumerate(ys):
        for j, x0 in enumerate(xs):
            y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
            piece = fn(x[..., y0:y1, x0:x1])
            dtype, piece = piece.dtype, piece.float()
            if out is None:
                out = piece.new_zeros(*piece.shape[:-2], height, width)
                weight = piece.new_zeros(height, width)
            w = (_ramp(y1 - y0, overlap, i > 0, i < len(ys) - 1, piece)[:, None]
                 * _ramp(x1 - x0, overlap, j > 0, j < len(xs) - 1, piece)[None, :])
            out[..., y0:y1, x0:x1] += piece * w
            weight[y0:y1, x0:x1] += w
    return (out / weight).to(dtype)


@contextlib.contextmanager
def vae_tiles(vae, tile_size: int | None) -> Iterator[None]:
    """diffusers' tiled encode/decode on ``vae`` for the calls inside, with ``tile_size`` px tiles
    (it tiles only inputs with a side above that); off (as before) for ``None``. Runtime attributes
    only: the VAE's config and weights, hence the model's fingerprint, are untouched."""
    names = ("use_tiling", "tile_sample_min_size", "tile_latent_min_size", "tile_overlap_factor")
    saved = {name: getattr(vae, name) for name in names}
    try:
        if tile_size:
            vae.use_tiling = True
            vae.tile_sample_min_size = tile_size
            vae.tile_latent_min_size = tile_size // 2 ** (len(vae.config.block_out_channels) - 1)
            vae.tile_overlap_factor = OVERLAP_FACTOR
        else:
            vae.use_tiling = False
        yield
    finally:
        for name, value in saved.items():
            setattr(vae, name, value)
