"""The set of quality metrics one evaluation computes, and why any of them is skipped."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sprdiff.evaluation import metrics
from sprdiff.evaluation.learned import DISTSMetric, LPIPSMetric

# name -> (direction, what it is); the order is the column order of per_image.csv
METRICS: dict[str, tuple[str, str]] = {
    "psnr": ("higher", "PSNR, dB, 8-bit RGB"),
    "ms_ssim": ("higher", "MS-SSIM (pytorch_msssim, data_range=255)"),
    "haarpsi": ("higher", "HaarPSI (piq, no weights needed)"),
    "gmsd": ("lower", "GMSD (piq, no weights needed)"),
    "lpips": ("lower", "LPIPS, AlexNet (lpips package)"),
    "dists": ("lower", "DISTS (DISTS_pytorch)"),
}


@dataclass
class MetricSuite:
    """Weight-free metrics always; LPIPS and DISTS when their weights were given."""

    lpips: LPIPSMetric | None = None
    dists: DISTSMetric | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> reason

    @classmethod
    def from_paths(cls, lpips_weights: str | Path | None = None, dists_weights: str | Path | None = None,
                   device: str = "cpu") -> MetricSuite:
        """Load the learned metrics whose weights are given; a bad file raises WeightsError here, early."""
        suite = cls()
        if lpips_weights:
            suite.lpips = LPIPSMetric(lpips_weights, device=device)
        else:
            suite.skipped["lpips"] = ("skipped: no --lpips-weights given (LPIPS needs AlexNet weights from a local "
                                      "file; nothing is downloaded)")
        if dists_weights:
            suite.dists = DISTSMetric(dists_weights, device=device)
        else:
            suite.skipped["dists"] = ("skipped: no --dists-weights given (DISTS needs VGG16 weights from a local "
                                      "file; nothing is downloaded)")
        return suite

    def status(self) -> dict[str, dict]:
        """Per metric: computed or skipped (with the reason), direction, description, weights used."""
        out = {}
        for name, (direction, description) in METRICS.items():
            entry = {"direction": direction, "description": description}
            if name in self.skipped:
                entry.update(status="skipped", reason=self.skipped[name])
            else:
                entry["status"] = "computed"
                learned = getattr(self, name, None) if name in ("lpips", "dists") else None
                if learned is not None:
                    entry.update(weights=learned.weights_path, weights_form=learned.weights_form)
            out[name] = entry
        return out

    def measure(self, reference: np.ndarray, test: np.ndarray) -> tuple[dict[str, float | None], list[str]]:
        """All metrics for one pair: values (None for skipped metrics, NaN where undefined) and notes."""
        h, w = reference.shape[:2]
        values: dict[str, float | None] = {
            "psnr": metrics.psnr(reference, test),
            "ms_ssim": metrics.ms_ssim(reference, test),
            "haarpsi": metrics.haarpsi(reference, test),
            "gmsd": metrics.gmsd(reference, test),
            "lpips": self.lpips(reference, test) if self.lpips else None,
            "dists": self.dists(reference, test) if self.dists else None,
        }
        reasons = [metrics.ms_ssim_unavailable(h, w), metrics.haarpsi_unavailable(h, w),
                   metrics.gmsd_unavailable(h, w)]
        reasons += [m.unavailable(h, w) for m in (self.lpips, self.dists) if m is not None]
        notes = [r for r in reasons if r]
        return values, notes
