"""Rate-distortion(-perception) plots with matplotlib (Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
from matplotlib import ticker  # noqa: E402

from sprdiff.evaluation.reference import PAPER_CURVE, PAPER_CURVE_LABEL, PAPER_POINTS  # noqa: E402
from sprdiff.evaluation.summary import from_json_number  # noqa: E402

# metric -> (axis label, draw paper points); drawn in this order when any curve has the metric
PANELS = {
    "psnr": ("PSNR (dB) ↑", True),
    "ms_ssim": ("MS-SSIM ↑", True),
    "lpips": ("LPIPS (AlexNet) ↓", True),
    "dists": ("DISTS ↓", True),
    "haarpsi": ("HaarPSI ↑", False),
}
ALWAYS = ("psnr", "ms_ssim")
COLOURS = {"sprdiff": "tab:blue", "webp": "tab:orange", "avif": "tab:green", "jpeg": "tab:red"}
REFERENCE_MARKERS = ["*", "P", "X", "D"]


def _finite(value) -> float | None:
    v = from_json_number(value) if not isinstance(value, float) else value
    return v if math.isfinite(v) else None


def plot_rd(curves: dict[str, list[dict]], path: str | Path, *, scatter: dict[str, list[dict]] | None = None,
            title: str = "") -> list[str]:
    """Draw one panel per metric (bpp on a log x axis) and save a PNG. Returns the metrics drawn.

    ``curves``: label -> RD points (dicts with ``bpp`` and metric means), joined by a line when there
    are several (rate points of one method). ``scatter``: label -> per-image pairs, drawn faintly.
    The paper's Table I points and its three rate points (a dashed black series) are added to the
    panels they have values for.
    """
    present = [m for m in PANELS if m in ALWAYS or any(m in p for pts in curves.values() for p in pts)]
    fig, axes = plt.subplots(1, len(present), figsize=(4.6 * len(present), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], present):
        label, with_paper = PANELS[metric]
        for name, points in (scatter or {}).items():
            xy = [(_finite(p["bpp"]), _finite(p.get(metric))) for p in points]
            xy = [(x, y) for x, y in xy if x and y is not None]
            if xy:
                ax.scatter(*zip(*xy), s=10, alpha=0.25, color=_colour(name), linewidths=0)
        for name, points in curves.items():
            xy = sorted((_finite(p["bpp"]), _finite(p.get(metric))) for p in points
                        if _finite(p["bpp"]) and _finite(p.get(metric)) is not None)
            if xy:
                ax.plot(*zip(*xy), marker="o", color=_colour(name), label=name, linewidth=1.5)
        if with_paper:
            xy = [(p["bpp"], p[metric]) for p in PAPER_CURVE if metric in p]
            if xy:
                ax.plot(*zip(*xy), marker="s", markersize=5, color="black", linestyle="--", linewidth=1,
                        label=PAPER_CURVE_LABEL, zorder=3)
            for marker, (name, ref) in zip(REFERENCE_MARKERS, PAPER_POINTS.items()):
                if metric in ref:
                    ax.scatter([ref["bpp"]], [ref[metric]], marker=marker, s=70, color="black", label=name,
                               zorder=3)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.FuncFormatter(_minor_label))
        ax.set_xlabel("bpp (from file bytes)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95 if title else 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return present


def _colour(name: str) -> str | None:
    for key, colour in COLOURS.items():
        if name == key or name.startswith(key + " "):
            return colour
    return None


def _minor_label(value: float, _pos) -> str:
    """Label the 2x, 3x and 5x minor ticks of a log axis, so narrow ranges still show numbers."""
    mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:g}" if round(mantissa) in (2, 3, 5) and abs(mantissa - round(mantissa)) < 1e-6 else ""
