"""Per-image colour correction: an affine colour map fitted by the encoder, sent in the record.

At < 0.03 bpp the decoder's colours drift (the VAE decoder desaturates; whole images shift
hue), and no decoder-side training removed it (docs/demo-model.md). The encoder, which has
the original, fits the 3x4 affine map that takes the decoded image's RGB closest to the
original's (least squares), the way a video codec's adaptive loop filter sends Wiener
coefficients. The record carries it in 12 small integers, 12-18 bytes; the decoder
applies it to x̂ before rounding to 8 bits.

The integers are the map's deviation from identity on a grid of 1/``COLOUR_MAP_SCALE``,
row by row: for each output channel R, G, B, its weights on input R, G, B and its offset
(images in [0, 1]).
"""

from __future__ import annotations

import numpy as np
import torch

from sprdiff import bands
from sprdiff.bitstream import COLOUR_MAP_LENGTH, MAX_COLOUR_VALUE

COLOUR_MAP_SCALE = 128  # grid 1/128: a coefficient's rounding moves a pixel by at most 1/256 of full scale

_IDENTITY = np.concatenate([np.eye(3), np.zeros((3, 1))], axis=1)  # (3, 4): out = W @ rgb + b


def fit_colour_map(decoded: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """The affine map(s) ``[W | b]`` ``(..., 3, 4)`` (float64) that take ``decoded``'s RGB closest to
    ``original``'s in the least-squares sense; both ``(..., 3, H, W)`` in [0, 1] on one device, the
    fit runs there. Normal equations (a 4x4 system per image, gathered band by band: ``sprdiff.bands``)
    solved through a pseudo-inverse, so a flat image (a singular system) gets the smallest map that
    fits it instead of an error."""
    if decoded.shape != original.shape or decoded.dim() < 3 or decoded.shape[-3] != 3:
        raise ValueError(f"fit_colour_map needs two (..., 3, H, W) images of one size, got {tuple(decoded.shape)} "
                         f"and {tuple(original.shape)}")
    gram = rhs = None
    for _, (decoded_rows, original_rows) in bands.bands_of(decoded, original):  # bounded float64 work
        pixels = decoded_rows.flatten(-2)  # (..., 3, n)
        design = torch.cat([pixels, torch.ones_like(pixels[..., :1, :])], dim=-2)  # (..., 4, n)
        band_gram = design @ design.transpose(-1, -2)  # (..., 4, 4)
        band_rhs = design @ original_rows.flatten(-2).transpose(-1, -2)  # (..., 4, 3)
        gram, rhs = (band_gram, band_rhs) if gram is None else (gram + band_gram, rhs + band_rhs)
    return (torch.linalg.pinv(gram, rtol=1e-12, hermitian=True) @ rhs).transpose(-1, -2)


def quantize_colour_map(colour_map: np.ndarray) -> tuple[int, ...]:
    """(3, 4) float map -> the record's 12 integers (deviation from identity, 1/128 grid)."""
    colour_map = colour_map.cpu().numpy() if isinstance(colour_map, torch.Tensor) else colour_map
    steps = np.rint((np.asarray(colour_map, dtype=np.float64) - _IDENTITY) * COLOUR_MAP_SCALE)
    return tuple(int(v) for v in np.clip(steps, 1 - MAX_COLOUR_VALUE, MAX_COLOUR_VALUE - 1).reshape(-1))


def dequantize_colour_map(values: tuple[int, ...]) -> np.ndarray:
    """The record's 12 integers -> the (3, 4) float map the decoder applies."""
    if len(values) != COLOUR_MAP_LENGTH:
        raise ValueError(f"a colour map has {COLOUR_MAP_LENGTH} integers, got {len(values)}")
    return _IDENTITY + np.asarray(values, dtype=np.float64).reshape(3, 4) / COLOUR_MAP_SCALE


def apply_colour_map(x: torch.Tensor, colour_map: np.ndarray) -> torch.Tensor:
    """x (3, H, W) or (B, 3, H, W) in [0, 1] through a (3, 4) map, clipped to [0, 1]."""
    m = torch.as_tensor(colour_map, dtype=x.dtype, device=x.device)
    return (torch.einsum("oc,...chw->...ohw", m[:, :3], x) + m[:, 3, None, None]).clamp(0, 1)


def candidate_maps(decoded: torch.Tensor, original: torch.Tensor) -> list[tuple[int, ...]]:
    """The maps worth weighing for ``decoded`` (3, H, W) against ``original`` (in [0, 1], fitted in
    float64): the record's 12 integers of each."""
    return [quantize_colour_map(fit_colour_map(decoded, original))]
