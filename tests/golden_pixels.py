"""The one rule for a golden record's pixels (tests/codec/test_golden.py, test_shipped_goldens.py)."""

from __future__ import annotations

import numpy as np


def assert_same_pixels(name: str, pixels: np.ndarray, expected: np.ndarray) -> None:
    """``pixels`` as a golden's writer decoded them: max |Δ| ≤ 1 and at least 99 % exact (float kernels
    may differ in the last bit across CPUs)."""
    assert pixels.shape == expected.shape, name
    difference = np.abs(pixels.astype(np.int16) - expected.astype(np.int16))
    assert difference.max() <= 1, f"{name}: pixels moved by up to {difference.max()} levels"
    assert (difference == 0).mean() >= 0.99, f"{name}: only {(difference == 0).mean():.3%} of pixels exact"
