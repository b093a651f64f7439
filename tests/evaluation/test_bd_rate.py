"""BD-rate against cases whose answer is known by hand, and the per-rate summary it is computed from."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sprdiff.evaluation.bd_rate import bd_rate
from sprdiff.evaluation.run import COLUMNS, EvalResult
from sprdiff.evaluation.summary import summarise

# (bpp, PSNR) of a plausible codec: quality rises with rate, more slowly at the top
ANCHOR = [(0.014, 21.98), (0.020, 22.60), (0.028, 22.98)]


def scaled(points, factor):
    return [(bpp * factor, quality) for bpp, quality in points]


@pytest.mark.parametrize("factor", [0.5, 0.8, 1.25, 3.0])
def test_a_curve_needing_k_times_the_bits_gives_k_minus_one(factor):
    found = bd_rate(ANCHOR, scaled(ANCHOR, factor))
    assert found.percent == pytest.approx(100 * (factor - 1), abs=1e-9) and found.reason == ""


def test_identical_curves_give_zero_whatever_the_order_of_the_points():
    assert bd_rate(ANCHOR, ANCHOR[::-1]).percent == pytest.approx(0, abs=1e-12)


def test_two_points_integrate_the_straight_line_between_them():
    # log-rate linear in quality on both curves, ours 1 dB better at every rate: over the shared
    # 1 dB the mean log-rate difference is -slope * 1 dB, with slope = log(2) / 2 dB
    anchor = [(0.01, 20.0), (0.02, 22.0)]
    test = [(0.01, 21.0), (0.02, 23.0)]
    assert bd_rate(anchor, test).percent == pytest.approx(100 * (2 ** -0.5 - 1), abs=1e-9)


def test_only_the_shared_quality_interval_counts():
    # anchor: log-rate rises log(2)/2 per dB over 20..22 dB; test: log(2) per dB over 21..23 dB, from
    # the same rate at 21 dB. On the shared 21..22 dB the difference is log(2) * (q/2 - 11), whose
    # mean is -log(2)/4; integrating over any other interval would give another number.
    anchor = [(0.01, 20.0), (0.02, 22.0)]
    test = [(0.01, 21.0), (0.04, 23.0)]
    assert bd_rate(anchor, test).percent == pytest.approx(100 * (2 ** -0.25 - 1), abs=1e-9)


def test_no_number_without_an_overlap_or_enough_points():
    disjoint = bd_rate(ANCHOR, [(0.01, 30.0), (0.02, 31.0)], anchor_name="webp", test_name="sprdiff")
    assert disjoint.percent is None and "do not overlap" in disjoint.reason and "webp" in disjoint.reason
    one = bd_rate(ANCHOR, [(0.02, 22.5)], test_name="sprdiff")
    assert one.percent is None and "sprdiff has 1 point" in one.reason
    # points without a finite quality do not count (e.g. MS-SSIM on images below 161 px)
    assert bd_rate(ANCHOR, [(0.01, math.nan), (0.02, 22.5), (0.0, 22.7)]).percent is None
    tied = bd_rate(ANCHOR, [(0.01, 22.5), (0.02, 22.5)])
    assert tied.percent is None and "equal quality" in tied.reason


def _row(key, method, rate, num_bytes, psnr, ms_ssim):
    row = dict.fromkeys(COLUMNS)
    row.update(key=key, source=key, method=method, rate_id=rate, status="ok", error="", width=100, height=100,
               num_bytes=num_bytes, budget_bytes=num_bytes, bpp=8 * num_bytes / 10000, psnr=psnr, ms_ssim=ms_ssim)
    return row


def test_summary_of_several_rates_has_sections_curves_and_bd_rates():
    rows = []
    for rate, (num_bytes, psnr, ms_ssim) in enumerate([(20, 22.0, 0.75), (30, 23.0, 0.80), (45, 24.0, 0.85)]):
        for key in ("a.png", "b.png"):
            rows.append(_row(key, "sprdiff", rate, num_bytes, psnr, ms_ssim))
            # the baseline needs twice our bytes for our PSNR, and never reaches our MS-SSIM range
            rows.append(_row(key, "webp", rate, 2 * num_bytes, psnr, ms_ssim - 0.3))
    summary = summarise(EvalResult(rows=rows, rate_ids=(0, 1, 2)), model_info={"model_id": "m"}, input_uri="/x",
                        metric_status={}, baseline_info={}, fid_status={})
    assert summary["rate_ids"] == [0, 1, 2] and "methods" not in summary
    assert summary["rates"]["1"]["n_evaluated"] == 2
    assert summary["rates"]["1"]["methods"]["webp"]["rd_point"]["bpp"] == pytest.approx(8 * 60 / 10000)
    assert [p["rate_id"] for p in summary["curves"]["sprdiff"]] == [0, 1, 2]
    assert [p["psnr"] for p in summary["curves"]["webp"]] == [22.0, 23.0, 24.0]
    assert summary["bd_rate"]["webp"]["psnr"] == pytest.approx(-50, abs=1e-9)
    assert summary["bd_rate"]["webp"]["ms_ssim"] is None
    assert "do not overlap" in summary["bd_rate_reasons"]["webp"]["ms_ssim"]
    assert "psnr" not in summary["bd_rate_reasons"]["webp"]
    assert "bd_rate" in summary["protocol"]


def test_bd_rate_compares_a_baseline_with_ours_on_the_images_it_met_the_budget_for():
    rows = []
    for rate, scale in enumerate([1.0, 1.5, 2.25]):
        rows.append(_row("easy.png", "sprdiff", rate, round(20 * scale), 20.0 + rate, np.nan))
        rows.append(_row("easy.png", "webp", rate, round(20 * scale), 20.0 + rate, np.nan))
        # a second image ours codes at many more bytes, where the baseline never fits
        rows.append(_row("hard.png", "sprdiff", rate, round(200 * scale), 30.0 + rate, np.nan))
        rows.append({**_row("hard.png", "webp", rate, 0, None, None), "status": "cannot_meet_budget",
                     "num_bytes": None, "bpp": None})
    summary = summarise(EvalResult(rows=rows, rate_ids=(0, 1, 2)), model_info={"model_id": "m"}, input_uri="/x",
                        metric_status={}, baseline_info={}, fid_status={})
    # on the one image both coded, the two curves are the same: 0, not the mean over both images
    assert summary["bd_rate"]["webp"]["psnr"] == pytest.approx(0, abs=1e-9)
    assert "0 point(s)" in summary["bd_rate_reasons"]["webp"]["ms_ssim"]
