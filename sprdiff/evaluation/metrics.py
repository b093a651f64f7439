"""Image-quality metrics as pure functions of two ``(H, W, 3) uint8`` arrays.

Conventions (the same for our codec and every baseline, see docs/evaluation.md):

* ``bits_per_pixel`` is computed from the byte count of the file actually written.
* PSNR is on 8-bit RGB: MSE over all pixels and all three channels, ``10·log10(255² / MSE)``;
  identical images give ``inf`` (never clipped to a made-up maximum).
* MS-SSIM is ``pytorch_msssim.ms_ssim`` (Wang et al. 2003: 5 scales, 11x11 Gaussian window,
  sigma 1.5, the standard weights) on 0..255 values with ``data_range=255``, averaged over the RGB
  channels. Five scales need a shorter side of at least 161 px; smaller images get NaN and a
  reason (:func:`ms_ssim_unavailable`) rather than a padded, not-comparable score.
* HaarPSI (higher is better) and GMSD (lower is better) come from ``piq``; they need no weights,
  so a perceptual score exists on any machine.

A metric that cannot be computed for an image returns ``nan``; the ``*_unavailable`` helpers say why.
"""

from __future__ import annotations

import math

import numpy as np
import piq
import pytorch_msssim
import torch

MS_SSIM_WIN_SIZE = 11
MS_SSIM_SCALES = 5
# pytorch_msssim asserts: shorter side > (win_size - 1) * 2 ** (scales - 1)
MS_SSIM_MIN_SIDE = (MS_SSIM_WIN_SIZE - 1) * 2 ** (MS_SSIM_SCALES - 1) + 1  # 161
HAARPSI_SCALES = 3
HAARPSI_MIN_SIDE = 2 ** (HAARPSI_SCALES + 1)  # piq: the largest Haar kernel must fit the image
GMSD_MIN_SIDE = 2


def bits_per_pixel(num_bytes: int, width: int, height: int) -> float:
    """``8 · bytes / pixels`` of a real file. Pass ``len(the_bytes)``, never an estimate."""
    if num_bytes < 0 or width < 1 or height < 1:
        raise ValueError(f"bits_per_pixel needs bytes >= 0 and a non-empty image, got {num_bytes}, {width}x{height}")
    return 8 * num_bytes / (width * height)


def check_pair(reference: np.ndarray, test: np.ndarray) -> None:
    """Raise with a message unless both are ``(H, W, 3) uint8`` of the same shape."""
    for name, a in (("reference", reference), ("test", test)):
        if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            shape = getattr(a, "shape", None)
            raise ValueError(f"{name} must be an (H, W, 3) uint8 array, got {type(a).__name__} {shape} "
                             f"{getattr(a, 'dtype', '')}")
    if reference.shape != test.shape:
        raise ValueError(f"images differ in shape: {reference.shape} vs {test.shape}")


def mse(reference: np.ndarray, test: np.ndarray) -> float:
    check_pair(reference, test)
    diff = reference.astype(np.float64) - test.astype(np.float64)
    return float(np.mean(diff * diff))


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB on 8-bit RGB; ``inf`` for identical images."""
    error = mse(reference, test)
    if error == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / error)


def to_tensor(image: np.ndarray, *, scale: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(H, W, 3) uint8`` -> ``(1, 3, H, W)`` float, multiplied by ``scale``."""
    t = torch.from_numpy(np.array(image, order="C", copy=True)).permute(2, 0, 1).unsqueeze(0)
    return t.to(dtype) * scale


def ms_ssim_unavailable(height: int, width: int) -> str | None:
    """Why MS-SSIM cannot be computed for an image of this size (None if it can)."""
    if min(height, width) < MS_SSIM_MIN_SIDE:
        return (f"MS-SSIM needs a shorter side of at least {MS_SSIM_MIN_SIDE} px for {MS_SSIM_SCALES} scales "
                f"(image is {width}x{height}); reported as NaN, not padded")
    return None


def ms_ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """MS-SSIM (pytorch_msssim, data_range=255, mean over RGB); NaN below the minimum size."""
    check_pair(reference, test)
    if ms_ssim_unavailable(*reference.shape[:2]) is not None:
        return math.nan
    x = to_tensor(reference, dtype=torch.float64)
    y = to_tensor(test, dtype=torch.float64)
    value = pytorch_msssim.ms_ssim(x, y, data_range=255, size_average=True, win_size=MS_SSIM_WIN_SIZE)
    return float(value)


def haarpsi_unavailable(height: int, width: int) -> str | None:
    if min(height, width) < HAARPSI_MIN_SIDE:
        return f"HaarPSI needs a shorter side of at least {HAARPSI_MIN_SIDE} px (image is {width}x{height})"
    return None


def haarpsi(reference: np.ndarray, test: np.ndarray) -> float:
    """HaarPSI (piq, 3 scales, in [0, 1], higher is better); NaN below the minimum size."""
    check_pair(reference, test)
    if haarpsi_unavailable(*reference.shape[:2]) is not None:
        return math.nan
    # float64: in float32, identical images can score a few ulps above 1 (its ratios of sums round).
    value = piq.haarpsi(to_tensor(test, scale=1 / 255, dtype=torch.float64),
                        to_tensor(reference, scale=1 / 255, dtype=torch.float64),
                        data_range=1.0, scales=HAARPSI_SCALES)
    return float(value)


def gmsd_unavailable(height: int, width: int) -> str | None:
    if min(height, width) < GMSD_MIN_SIDE:
        return f"GMSD needs a shorter side of at least {GMSD_MIN_SIDE} px (image is {width}x{height})"
    return None


def gmsd(reference: np.ndarray, test: np.ndarray) -> float:
    """GMSD (piq, lower is better, 0 for identical images); NaN below the minimum size."""
    check_pair(reference, test)
    if gmsd_unavailable(*reference.shape[:2]) is not None:
        return math.nan
    value = piq.gmsd(to_tensor(test, scale=1 / 255), to_tensor(reference, scale=1 / 255), data_range=1.0)
    return float(value)
