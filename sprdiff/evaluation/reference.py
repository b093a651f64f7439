"""The paper's published rate/quality points, drawn beside ours in every plot.

Source of ``PAPER_POINTS``: Table I of the SPRDiff paper (arXiv 2606.01608), as restated in
ARCHITECTURE.md §1: 512x512 images, quality columns as the paper reports them (its own test sets,
not ours), so they are a reference for orientation, not a like-for-like comparison with a run on
other images. The same holds for ``PAPER_CURVE``.
"""

from __future__ import annotations

SOURCE = "SPRDiff paper (arXiv 2606.01608), Table I, via ARCHITECTURE.md section 1"

PAPER_POINTS: dict[str, dict[str, float]] = {
    "SPRDiff (paper)": {"bpp": 0.0285, "psnr": 23.15, "ms_ssim": 0.8133, "lpips": 0.2793, "dists": 0.1072},
    "StableCodec (paper)": {"bpp": 0.0303, "psnr": 22.11, "ms_ssim": 0.7662, "lpips": 0.3128, "dists": 0.1158},
    "DiffEIC (paper)": {"bpp": 0.0378, "psnr": 20.71, "ms_ssim": 0.7526, "lpips": 0.3517, "dists": 0.1386},
}

CURVE_SOURCE = "SPRDiff paper (arXiv 2606.01608), rate-distortion figure: three rate points read off the plot"
PAPER_CURVE_LABEL = "SPRDiff rate points (paper figure)"
# SPRDiff's three rate points as the paper's RD figure draws them: read off the plot, not printed in
# the paper, so the bpp is good to about ±0.001. The top point is near, not equal to, Table I's
# (0.0285 bpp / 23.15 dB / 0.8133).
PAPER_CURVE: list[dict[str, float]] = [
    {"bpp": 0.014, "psnr": 21.98, "ms_ssim": 0.752},
    {"bpp": 0.020, "psnr": 22.60, "ms_ssim": 0.787},
    {"bpp": 0.028, "psnr": 22.98, "ms_ssim": 0.806},
]
