"""The paper's published rate/quality points, drawn beside ours in every plot.

Source: Table I of the SPRDiff paper (arXiv 2606.01608), as restated in ARCHITECTURE.md §1:
512x512 images, quality columns as the paper reports them (its own test sets, not ours), so they
are a reference for orientation, not a like-for-like comparison with a run on other images.
"""

from __future__ import annotations

SOURCE = "SPRDiff paper (arXiv 2606.01608), Table I, via ARCHITECTURE.md section 1"

PAPER_POINTS: dict[str, dict[str, float]] = {
    "SPRDiff (paper)": {"bpp": 0.0285, "psnr": 23.15, "ms_ssim": 0.8133, "lpips": 0.2793, "dists": 0.1072},
    "StableCodec (paper)": {"bpp": 0.0303, "psnr": 22.11, "ms_ssim": 0.7662, "lpips": 0.3128, "dists": 0.1158},
    "DiffEIC (paper)": {"bpp": 0.0378, "psnr": 20.71, "ms_ssim": 0.7526, "lpips": 0.3517, "dists": 0.1386},
}
