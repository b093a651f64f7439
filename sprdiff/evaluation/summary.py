"""From per-image rows to summary.json: means, counts, and the bpp/metric pairs of every method.

Averaging rules (stated again in the summary's ``protocol`` block):

* ``bpp_mean`` is the mean of the per-image bpp (how papers report it); ``bpp_total`` is
  8 · all bytes / all pixels.
* A metric's ``mean`` is over the images where it is finite. PSNR is ``inf`` for a lossless image:
  such images are counted in ``n_inf`` and left out of the mean (if every value is ``inf`` the mean
  is ``inf``). NaN (a metric undefined for an image, e.g. MS-SSIM below 161 px) is counted in
  ``n_nan`` and left out.
* In JSON, ``inf`` is written as the string ``"inf"`` and NaN as ``null``: the file is strict JSON.
"""

from __future__ import annotations

import math
from collections import defaultdict

from sprdiff.evaluation.reference import PAPER_POINTS, SOURCE
from sprdiff.evaluation.run import OURS, EvalResult
from sprdiff.evaluation.suite import METRICS

SCHEMA = "sprdiff-eval-summary/1"

PROTOCOL = {
    "bpp": "8 * len(file bytes) / (width * height) of the file actually written; bpp_mean = mean over images",
    "psnr": "8-bit RGB, MSE over all pixels and channels, 10*log10(255^2/MSE); inf for identical images",
    "ms_ssim": "pytorch_msssim.ms_ssim, data_range=255, 5 scales, win 11; NaN (reason in notes) below 161 px",
    "means": "over images where the value is finite; inf and NaN counted separately (n_inf, n_nan)",
    "baselines": "Pillow encoders, Lanczos down/upscaling; per image the best-PSNR (scale, quality) whose file "
                 "(+ varint original size when downscaled) is <= our record's bytes; else cannot_meet_budget",
    "json": "inf is the string \"inf\", NaN is null",
}


def metric_stats(values: list[float | None]) -> dict | None:
    """Mean and counts of one metric's values (None = not computed); None when nothing was computed."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    finite = [v for v in present if math.isfinite(v)]
    n_inf = sum(1 for v in present if math.isinf(v))
    n_nan = sum(1 for v in present if math.isnan(v))
    if finite:
        mean = math.fsum(finite) / len(finite)
    elif n_inf and n_inf == len(present):
        mean = math.inf if all(v > 0 for v in present) else -math.inf
    else:
        mean = math.nan
    return {"mean": mean, "n": len(finite), "n_inf": n_inf, "n_nan": n_nan}


def method_summary(rows: list[dict]) -> dict:
    """Means and per-image pairs for one method's rows."""
    ok = [r for r in rows if r["status"] == "ok"]
    statuses = defaultdict(int)
    for r in rows:
        statuses[r["status"]] += 1
    total_bytes = sum(r["num_bytes"] for r in ok)
    total_pixels = sum(r["width"] * r["height"] for r in ok)
    entry: dict = {
        "n_rows": len(rows), "n_ok": len(ok), "statuses": dict(statuses),
        "num_bytes_total": total_bytes,
        "bpp_mean": math.fsum(r["bpp"] for r in ok) / len(ok) if ok else math.nan,
        "bpp_total": 8 * total_bytes / total_pixels if total_pixels else math.nan,
        "metrics": {},
    }
    for name in METRICS:
        stats = metric_stats([r[name] for r in ok])
        if stats is not None:
            entry["metrics"][name] = stats
    entry["rd_point"] = {"bpp": entry["bpp_mean"], **{k: v["mean"] for k, v in entry["metrics"].items()}}
    entry["pairs"] = [{"key": r["key"], "num_bytes": r["num_bytes"], "bpp": r["bpp"],
                       **{k: r[k] for k in entry["metrics"]}} for r in ok]
    return entry


def summarise(result: EvalResult, *, model_info: dict, input_uri: str, metric_status: dict,
              baseline_info: dict, fid_status: dict) -> dict:
    by_method: dict[str, list[dict]] = defaultdict(list)
    for row in result.rows:
        by_method[row["method"]].append(row)
    ours_rows = by_method.get(OURS, [])
    failures = [{"key": r["key"], "source": r["source"], "status": r["status"], "error": r["error"]}
                for r in ours_rows if r["status"] != "ok"]
    methods = {}
    for method, rows in by_method.items():
        methods[method] = method_summary(rows)
    ours_by_key = {r["key"]: r for r in ours_rows if r["status"] == "ok"}
    for method, rows in by_method.items():
        if method == OURS:
            continue
        # our model on exactly the images this baseline met the budget for: the like-for-like point
        same = [ours_by_key[r["key"]] for r in rows if r["status"] == "ok" and r["key"] in ours_by_key]
        methods[method]["ours_on_same_images"] = method_summary(same)["rd_point"] if same else None
    if result.fid is not None:
        for method, entry in result.fid.items():
            methods.setdefault(method, {})["fid"] = entry
    return {
        "schema": SCHEMA,
        "input": input_uri,
        "model": model_info,
        "n_images": len(ours_rows),
        "n_evaluated": len(ours_by_key),
        "n_failed": len(failures),
        "failures": failures,
        "metrics": metric_status,
        "fid": fid_status,
        "baselines": {**baseline_info, "skipped": result.skipped_baselines},
        "methods": methods,
        "reference_points": {"source": SOURCE, "points": PAPER_POINTS},
        "protocol": PROTOCOL,
    }


def json_safe(value):
    """Recursively replace inf by "inf"/"-inf" and NaN by None, so ``json.dumps(allow_nan=False)`` works."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def from_json_number(value) -> float:
    """Inverse of :func:`json_safe` for one number: "inf" -> inf, None -> NaN."""
    return math.nan if value is None else float(value)
