"""Bjøntegaard delta rate: how many more (or fewer) bits one codec needs than another at equal quality.

The method (G. Bjøntegaard, VCEG-M33, 2001; the piecewise-cubic variant of VCEG-AL22 that video
coding test conditions use): each codec's RD points give log(rate) as a function of quality; both
functions are integrated over the quality interval the two curves share, the difference of their
averages is the mean log-rate difference, and ``exp(difference) - 1`` is the rate change.

The interpolant is scipy's ``PchipInterpolator`` (piecewise cubic Hermite, monotone between
points), not the original's cubic polynomial: our curves have three points, where a cubic is
underdetermined. PCHIP is defined from two points up (with two it is the straight line), never
overshoots between points, and moves by exactly ``c`` when every log-rate moves by ``c``, so a
curve that needs ``k`` times the bits of another at every quality gives ``k - 1`` exactly.

Rate is bits per pixel; quality is the metric as reported (MS-SSIM on its linear 0..1 scale, not
in dB). Only finite points with a positive rate count; a curve needs two of them at distinct qualities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator

METRICS = ("psnr", "ms_ssim")  # the qualities summary.json gives BD-rates for

DESCRIPTION = ("Bjøntegaard delta rate in percent of ours against each baseline at equal quality (negative: "
               "ours needs fewer bits): log(bpp) as a function of the quality, a piecewise cubic Hermite (PCHIP) "
               "curve through the baseline's mean point at each rate and through our mean point on the same "
               "images, integrated over the quality interval both curves cover; null with a reason (bd_rate_reasons) "
               "where they do not overlap or a curve has fewer than 2 points")


@dataclass(frozen=True)
class BDRate:
    percent: float | None  # rate change of the test curve against the anchor at equal quality; None: no number
    reason: str = ""  # why percent is None


def _log_rate_curve(points: Sequence[tuple[float, float]], name: str) -> PchipInterpolator | str:
    """log(bpp) as a function of quality through ``points`` (bpp, quality), or why there is none."""
    usable = sorted((q, b) for b, q in points if math.isfinite(b) and b > 0 and math.isfinite(q))
    if len(usable) < 2:
        return f"{name} has {len(usable)} point(s) with a finite bpp and quality; BD-rate needs at least 2"
    quality = np.array([q for q, _ in usable])
    if np.any(np.diff(quality) == 0):
        return f"{name} has two points of equal quality, so its rate is not a function of quality"
    return PchipInterpolator(quality, np.log([b for _, b in usable]))


def bd_rate(anchor: Sequence[tuple[float, float]], test: Sequence[tuple[float, float]], *,
            anchor_name: str = "the anchor", test_name: str = "the test curve") -> BDRate:
    """Percent rate change of ``test`` against ``anchor``; each a list of (bpp, quality) points.
    The names are for the reason of a missing number."""
    curves = [_log_rate_curve(anchor, anchor_name), _log_rate_curve(test, test_name)]
    problems = [c for c in curves if isinstance(c, str)]
    if problems:
        return BDRate(None, "; ".join(problems))
    anchor_curve, test_curve = curves
    low = max(anchor_curve.x[0], test_curve.x[0])
    high = min(anchor_curve.x[-1], test_curve.x[-1])
    if not low < high:
        return BDRate(None, f"the quality ranges do not overlap: {anchor_name} {anchor_curve.x[0]:.4g} to "
                            f"{anchor_curve.x[-1]:.4g}, {test_name} {test_curve.x[0]:.4g} to {test_curve.x[-1]:.4g}")
    mean_difference = (test_curve.integrate(low, high) - anchor_curve.integrate(low, high)) / (high - low)
    return BDRate(100 * math.expm1(float(mean_difference)))
