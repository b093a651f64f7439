"""The one rule for pixels decoded in another process (the golden records' tests, the codec service's)."""

from __future__ import annotations

import numpy as np


def assert_same_pixels(name: str, pixels: np.ndarray, expected: np.ndarray) -> None:
    """``pixels`` as another process decoded them (a golden's writer, a codec server): max |Δ| ≤ 1 and at
    least 99 % exact (float kernels may differ in the last bit across CPUs and thread counts)."""
    assert pixels.shape == expected.shape, name
    difference = np.abs(pixels.astype(np.int16) - expected.astype(np.int16))
    assert difference.max() <= 1, f"{name}: pixels moved by up to {difference.max()} levels"
    assert (difference == 0).mean() >= 0.99, f"{name}: only {(difference == 0).mean():.3%} of pixels exact"
