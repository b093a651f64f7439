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

from sprdiff.evaluation import bd_rate
from sprdiff.evaluation.reference import CURVE_SOURCE, PAPER_CURVE, PAPER_CURVE_LABEL, PAPER_POINTS, SOURCE
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


def methods_summary(rows: list[dict], fid: dict[str, dict] | None = None) -> dict:
    """Per method, the stats of one rate's rows (:func:`method_summary`); for each baseline also our
    point on the images it met the budget for; ``fid``: method -> FID/KID entry."""
    by_method: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_method[row["method"]].append(row)
    methods = {method: method_summary(method_rows) for method, method_rows in by_method.items()}
    ours_by_key = {r["key"]: r for r in by_method.get(OURS, []) if r["status"] == "ok"}
    for method, method_rows in by_method.items():
        if method == OURS:
            continue
        # our model on exactly the images this baseline met the budget for: the like-for-like point
        same = [ours_by_key[r["key"]] for r in method_rows if r["status"] == "ok" and r["key"] in ours_by_key]
        methods[method]["ours_on_same_images"] = method_summary(same)["rd_point"] if same else None
    for method, entry in (fid or {}).items():
        methods.setdefault(method, {})["fid"] = entry
    return methods


def rate_sections(summary: dict) -> dict[int, dict]:
    """Rate id -> ``{"n_evaluated", "methods"}`` of a summary of one rate (``model.rate_id``) or of several."""
    if "rates" in summary:
        return {int(rate): section for rate, section in summary["rates"].items()}
    return {summary["model"].get("rate_id"): {"n_evaluated": summary["n_evaluated"], "methods": summary["methods"]}}


def curves(sections: dict[int, dict]) -> dict[str, list[dict]]:
    """Method -> its mean point (``rd_point`` plus ``rate_id``) at each rate it has images for."""
    out: dict[str, list[dict]] = {}
    for rate, section in sorted(sections.items()):
        for method, entry in section["methods"].items():
            if entry.get("n_ok"):
                out.setdefault(method, []).append({"rate_id": rate, **entry["rd_point"]})
    return out


def bd_rates(sections: dict[int, dict]) -> tuple[dict[str, dict], dict[str, dict]]:
    """BD-rate of ours against each baseline on each of :data:`bd_rate.METRICS`, and why any is None.

    Each baseline's point at a rate is compared with ours on the same images (``ours_on_same_images``),
    so a baseline that missed the budget for some images is not set against our mean over others.
    """
    values: dict[str, dict] = {}
    reasons: dict[str, dict] = {}
    baselines = dict.fromkeys(m for section in sections.values() for m in section["methods"] if m != OURS)
    for baseline in baselines:
        pairs = []  # (the baseline's point, ours on the same images) at each rate it has images for
        for section in sections.values():
            entry = section["methods"].get(baseline, {})
            if entry.get("n_ok"):
                pairs.append((entry["rd_point"], entry["ours_on_same_images"]))
        values[baseline] = {}
        for metric in bd_rate.METRICS:
            found = bd_rate.bd_rate([_point(theirs, metric) for theirs, _ in pairs],
                                    [_point(ours, metric) for _, ours in pairs], anchor_name=baseline, test_name=OURS)
            values[baseline][metric] = found.percent
            if found.percent is None:
                reasons.setdefault(baseline, {})[metric] = found.reason
    return values, reasons


def _point(rd_point: dict, metric: str) -> tuple[float, float]:
    """(bpp, metric) of an ``rd_point``, NaN for a metric it lacks."""
    quality = rd_point.get(metric)
    return float(rd_point["bpp"]), math.nan if quality is None else float(quality)


def summarise(result: EvalResult, *, model_info: dict, input_uri: str, metric_status: dict,
              baseline_info: dict, fid_status: dict) -> dict:
    """summary.json. With one rate its per-method stats are under ``methods`` (and ``model_info``
    names the rate); with several, the ``rate_ids``, each rate's stats under ``rates[<id>]``, the RD
    ``curves`` and the ``bd_rate`` of ours against each baseline."""
    rate_ids = result.rate_ids
    ours_rows = [r for r in result.rows if r["method"] == OURS]
    failures = [{"key": r["key"], "source": r["source"], "rate_id": r["rate_id"], "status": r["status"],
                 "error": r["error"]} for r in ours_rows if r["status"] != "ok"]
    fid: dict[int, dict[str, dict]] = defaultdict(dict)
    for (rate, method), entry in (result.fid or {}).items():
        fid[rate][method] = entry
    summary = {
        "schema": SCHEMA,
        "input": input_uri,
        "model": model_info,
        "n_images": len({r["key"] for r in ours_rows}),
        "n_evaluated": len({r["key"] for r in ours_rows if r["status"] == "ok"}),
        "n_failed": len({f["key"] for f in failures}),
        "failures": failures,
        "metrics": metric_status,
        "fid": fid_status,
        "baselines": {**baseline_info, "skipped": result.skipped_baselines},
    }
    if len(rate_ids) > 1:
        summary["rate_ids"] = list(rate_ids)
        sections = {}
        for rate in rate_ids:
            rows = [r for r in result.rows if r["rate_id"] == rate]
            sections[rate] = {"n_evaluated": sum(1 for r in rows if r["method"] == OURS and r["status"] == "ok"),
                              "methods": methods_summary(rows, fid.get(rate))}
        summary["rates"] = {str(rate): section for rate, section in sections.items()}
        summary["curves"] = curves(sections)
        summary["bd_rate"], summary["bd_rate_reasons"] = bd_rates(sections)
    else:
        summary["methods"] = methods_summary(result.rows, fid.get(rate_ids[0]) if rate_ids else None)
    summary["reference_points"] = {"source": SOURCE, "points": PAPER_POINTS, "curve_source": CURVE_SOURCE,
                                   "curve_label": PAPER_CURVE_LABEL, "curve": PAPER_CURVE}
    summary["protocol"] = {**PROTOCOL, "bd_rate": bd_rate.DESCRIPTION} if len(rate_ids) > 1 else PROTOCOL
    return summary


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
