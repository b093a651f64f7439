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

from sprdiff.bitstream import COLOUR_MAP_LENGTH, MAX_COLOUR_VALUE

COLOUR_MAP_SCALE = 128  # grid 1/128: a coefficient's rounding moves a pixel by at most 1/256 of full scale
# A map is sent only if its PSNR gain is worth its bytes: at least this many dB per doubling of
# the record, a conservative stand-in for the rate-distortion slope at these rates. On a photo
# (~2 KB) a map is sent from ~0.04 dB of gain; on a crop of a few hundred bytes from ~0.3 dB.
MIN_DB_PER_RATE_DOUBLING = 3.0

_IDENTITY = np.concatenate([np.eye(3), np.zeros((3, 1))], axis=1)  # (3, 4): out = W @ rgb + b


def fit_colour_map(decoded: np.ndarray, original: np.ndarray) -> np.ndarray:
    """The (3, 4) affine map ``[W | b]`` (float64, images in [0, 1]) that takes ``decoded``'s RGB
    closest to ``original``'s in the least-squares sense. Both are (H, W, 3) arrays in [0, 1]."""
    if decoded.shape != original.shape or decoded.ndim != 3 or decoded.shape[2] != 3:
        raise ValueError(f"fit_colour_map needs two (H, W, 3) images of one size, got {decoded.shape} "
                         f"and {original.shape}")
    pixels = decoded.reshape(-1, 3).astype(np.float64)
    design = np.concatenate([pixels, np.ones((pixels.shape[0], 1))], axis=1)
    solution, *_ = np.linalg.lstsq(design, original.reshape(-1, 3).astype(np.float64), rcond=None)
    return solution.T


def quantize_colour_map(colour_map: np.ndarray) -> tuple[int, ...]:
    """(3, 4) float map -> the record's 12 integers (deviation from identity, 1/128 grid)."""
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


def correct_on_grid(decoded: np.ndarray, original: np.ndarray) -> tuple[tuple[int, ...], np.ndarray]:
    """Fit the map of ``decoded`` (H, W, 3) in [0, 1] to ``original``, put it on the record's grid and
    apply it: the record's 12 integers and the corrected image (float64, what the decoder gets)."""
    values = quantize_colour_map(fit_colour_map(decoded, original))
    corrected = apply_colour_map(torch.from_numpy(np.asarray(decoded, dtype=np.float64)).permute(2, 0, 1),
                                 dequantize_colour_map(values))
    return values, corrected.permute(1, 2, 0).numpy()


def net_gain_db(mse_before: float, mse_after: float, record_bytes: int, extra_bytes: int) -> float:
    """The PSNR gain of a side channel that lowers the MSE from ``mse_before`` to ``mse_after``, less
    what its ``extra_bytes`` on a record of ``record_bytes`` must buy (``MIN_DB_PER_RATE_DOUBLING``
    per doubling): positive when it pays for its bytes."""
    if mse_after >= mse_before:
        return -np.inf
    if mse_after <= 0:
        return np.inf
    gain_db = 10 * np.log10(mse_before / mse_after)
    return float(gain_db - MIN_DB_PER_RATE_DOUBLING * np.log2((record_bytes + extra_bytes) / record_bytes))


def worth_sending(mse_before: float, mse_after: float, record_bytes: int, map_bytes: int) -> bool:
    """Whether a map that lowers the MSE from ``mse_before`` to ``mse_after`` pays for its bytes."""
    return net_gain_db(mse_before, mse_after, record_bytes, map_bytes) >= 0
