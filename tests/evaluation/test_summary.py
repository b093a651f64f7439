"""Means with inf and NaN, strict JSON, CSV cells: the numbers a report prints are the numbers measured."""

from __future__ import annotations

import csv
import json
import math

import numpy as np

from sprdiff.evaluation.report import write_outputs
from sprdiff.evaluation.run import COLUMNS, CropSet, EvalResult
from sprdiff.evaluation.summary import json_safe, metric_stats, summarise


def test_metric_stats_keep_inf_and_nan_out_of_the_mean_and_count_them():
    assert metric_stats([30.0, math.inf, 20.0, math.nan]) == {"mean": 25.0, "n": 2, "n_inf": 1, "n_nan": 1}
    assert metric_stats([math.inf, math.inf])["mean"] == math.inf
    assert math.isnan(metric_stats([math.nan])["mean"])
    assert metric_stats([None, None]) is None  # a skipped metric has no statistics at all


def test_json_safe_makes_strict_json():
    data = json_safe({"a": math.inf, "b": [math.nan, 1.5, -math.inf], "c": {"d": 2}})
    assert data == {"a": "inf", "b": [None, 1.5, "-inf"], "c": {"d": 2}}
    json.dumps(data, allow_nan=False)


def _row(key, method, num_bytes, psnr, **extra):
    row = dict.fromkeys(COLUMNS)
    row.update(key=key, source=f"/x/{key}", method=method, status="ok", error="", width=200, height=100,
               num_bytes=num_bytes, budget_bytes=num_bytes, bpp=8 * (num_bytes or 0) / 20000, psnr=psnr, ms_ssim=0.9,
               haarpsi=0.8, gmsd=0.1, notes="")
    row.update(extra)
    return row


def test_a_lossless_image_is_written_as_inf_everywhere(tmp_path):
    rows = [_row("a.png", "sprdiff", 100, math.inf), _row("b.png", "sprdiff", 300, 30.0, ms_ssim=math.nan),
            _row("a.png", "jpeg", None, None, status="cannot_meet_budget", error="too small", bpp=None,
                 ms_ssim=None, haarpsi=None, gmsd=None)]
    crop = np.zeros((8, 8, 3), np.uint8)
    result = EvalResult(rows=rows, crops=[CropSet("a.png", [("original", crop), ("ours", crop)])])
    status = {"psnr": {"status": "computed"}, "lpips": {"status": "skipped", "reason": "no weights"}}
    summary = summarise(result, model_info={"model_id": "m", "rate_id": 0}, input_uri="/x", metric_status=status,
                        baseline_info={"requested": ["jpeg"]}, fid_status={"status": "skipped", "reason": "no"})
    ours = summary["methods"]["sprdiff"]
    assert ours["metrics"]["psnr"] == {"mean": 30.0, "n": 1, "n_inf": 1, "n_nan": 0}
    assert ours["bpp_mean"] == (0.04 + 0.12) / 2 and ours["bpp_total"] == 8 * 400 / 40000
    assert summary["methods"]["jpeg"]["n_ok"] == 0
    paths = write_outputs(result, summary, tmp_path)
    data = json.loads(paths["summary.json"].read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert data["methods"]["sprdiff"]["pairs"][0]["psnr"] == "inf"
    assert data["methods"]["sprdiff"]["pairs"][1]["ms_ssim"] is None
    assert data["methods"]["jpeg"]["bpp_mean"] is None
    with open(paths["per_image.csv"], newline="") as f:
        table = list(csv.DictReader(f))
    assert table[0]["psnr"] == "inf" and float(table[0]["psnr"]) == math.inf
    assert table[1]["ms_ssim"] == "" and table[2]["status"] == "cannot_meet_budget"
    assert float(table[1]["bpp"]) == rows[1]["bpp"]  # full precision survives the CSV
    assert "too small" not in paths["report.html"].read_text(encoding="utf-8")  # only image failures are listed
