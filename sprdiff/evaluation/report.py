"""Writers for one evaluation: per_image.csv, summary.json, rd.png and a self-contained report.html."""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path

from sprdiff.evaluation.bd_rate import METRICS as BD_METRICS
from sprdiff.evaluation.plots import plot_rd
from sprdiff.evaluation.run import COLUMNS, OURS, EvalResult
from sprdiff.evaluation.summary import curves, json_safe, rate_sections
from sprdiff.images import encode_png

PER_IMAGE = "per_image.csv"
SUMMARY = "summary.json"
RD_PLOT = "rd.png"
REPORT = "report.html"


def format_cell(value) -> str:
    """CSV text: floats with full precision (``repr``), ``inf``, empty for None and NaN."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    return str(value)


def write_per_image_csv(rows: list[dict], path: str | Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([format_cell(row.get(c)) for c in COLUMNS])


def write_json(data: dict, path: str | Path) -> None:
    text = json.dumps(json_safe(data), indent=2, allow_nan=False, ensure_ascii=False)
    Path(path).write_text(text + "\n", encoding="utf-8")


def plot_summary(summary: dict, path: str | Path) -> list[str]:
    """rd.png: per method its mean point at each rate evaluated (a curve with several rates) and the
    per-image points of every rate faintly."""
    sections = rate_sections(summary)
    scatter: dict[str, list[dict]] = {}
    for section in sections.values():
        for method, entry in section["methods"].items():
            if entry.get("n_ok"):
                scatter.setdefault(method, []).extend(entry["pairs"])
    model = summary["model"]
    title = f"{model.get('model_id', '?')} ({_rates_text(sections)}) on {summary['n_evaluated']} images"
    return plot_rd(curves(sections), path, scatter=scatter, title=title)


def _rates_text(sections: dict) -> str:
    return f"rate id {next(iter(sections))}" if len(sections) == 1 else f"rates {', '.join(map(str, sections))}"


def _png_data_uri(pixels) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(pixels)).decode("ascii")


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def render_html(summary: dict, result: EvalResult, rd_png: bytes | None) -> str:
    e = html.escape
    metric_names = [m for m, s in summary["metrics"].items() if s["status"] == "computed"]
    model = summary["model"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>SPRDiff evaluation: {e(str(model.get('model_id')))}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}"
        "td:first-child{text-align:left}figure{display:inline-block;margin:0 8px 12px 0;vertical-align:top}"
        "figcaption{font-size:12px;max-width:256px}.skip{color:#a00}img{image-rendering:pixelated}</style>",
        "</head><body>",
        f"<h1>SPRDiff evaluation</h1><p>Model <b>{e(str(model.get('model_id')))}</b> "
        f"(<code>{e(str(model.get('name')))}</code>, fingerprint <code>{e(str(model.get('fingerprint'))[:16])}…</code>,"
        f" {e(_rates_text(rate_sections(summary)))}, format v{e(str(model.get('format_version')))}) on "
        f"<code>{e(summary['input'])}</code>: {summary['n_evaluated']} of {summary['n_images']} images evaluated.</p>",
        "<h2>Summary</h2>",
    ]
    parts += _summary_table(rate_sections(summary), metric_names)
    if "bd_rate" in summary:
        parts += _bd_rate_table(summary)
    notes = [f"{m}: {s['reason']}" for m, s in summary["metrics"].items() if s["status"] == "skipped"]
    if summary["fid"].get("status") == "skipped":
        notes.append(f"FID/KID: {summary['fid']['reason']}")
    notes += [f"baseline {b}: {reason}" for b, reason in summary["baselines"]["skipped"].items()]
    if notes:
        parts.append("<ul>" + "".join(f"<li class='skip'>{e(n)}</li>" for n in notes) + "</ul>")
    if summary["failures"]:
        def at_rate(failure: dict) -> str:  # with several rates, a record may fail at one of them
            return f" at rate {failure['rate_id']}" if "rates" in summary and failure["rate_id"] is not None else ""
        parts.append("<h3>Images not evaluated</h3><ul>" + "".join(
            f"<li>{e(f['key'])}{at_rate(f)}: {e(f['status'])}: {e(f['error'])}</li>" for f in summary["failures"])
            + "</ul>")
    if rd_png:
        parts.append(f"<h2>Rate–distortion</h2><img alt='RD plot' src='data:image/png;base64,"
                     f"{base64.b64encode(rd_png).decode('ascii')}' style='max-width:100%'>")
    parts.append("<p>Baselines: downscale + encode + Lanczos upscale, the best-PSNR setting whose file fits in "
                 "our record's bytes for each image. Paper points: Table I of the SPRDiff paper (its test sets, "
                 "512x512), shown for orientation only; the dashed black series: the paper's three rate points, "
                 "read off its rate–distortion figure.</p>")
    if result.crops:
        parts.append("<h2>Crops (centre, 1:1)</h2>")
        for crop in result.crops:
            parts.append(f"<h3>{e(crop.key)}</h3><div>")
            for caption, pixels in crop.panels:
                parts.append(f"<figure><img alt='{e(caption)}' src='{_png_data_uri(pixels)}'>"
                             f"<figcaption>{e(caption)}</figcaption></figure>")
            parts.append("</div>")
    protocol = "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in summary["protocol"].items())
    parts.append(f"<h2>Protocol</h2><ul>{protocol}</ul></body></html>")
    return "\n".join(parts)


def _summary_table(sections: dict[int, dict], metric_names: list[str]) -> list[str]:
    """One row per method, and with several rates per rate and method (a rate column first)."""
    e = html.escape
    several = len(sections) > 1
    has_fid = any("fid" in entry for section in sections.values() for entry in section["methods"].values())
    parts = ["<table><tr>" + ("<th>rate</th>" if several else "")
             + "<th>method</th><th>images ok</th><th>bpp (mean)</th><th>bytes (total)</th>"]
    parts += [f"<th>{e(m)}</th>" for m in metric_names]
    if has_fid:
        parts.append("<th>FID</th><th>KID</th><th>patches</th>")
    parts.append("</tr>")
    for rate, section in sections.items():
        for method, entry in section["methods"].items():
            parts.append("<tr>" + (f"<td>{rate}</td>" if several else "")
                         + f"<td>{e(method)}</td><td>{entry.get('n_ok', 0)} / {entry.get('n_rows', 0)}</td>"
                         f"<td>{_fmt(entry.get('bpp_mean'))}</td><td>{entry.get('num_bytes_total', 0)}</td>")
            for m in metric_names:
                stats = entry.get("metrics", {}).get(m)
                parts.append(f"<td>{_fmt(stats['mean'] if stats else None)}</td>")
            if has_fid:
                fid = entry.get("fid", {})
                parts.append(f"<td>{_fmt(fid.get('fid'), 2)}</td><td>{_fmt(fid.get('kid_mean'))}</td>"
                             f"<td>{fid.get('n_patches', '–')}</td>")
            parts.append("</tr>")
    parts.append("</table>")
    return parts


def _bd_rate_table(summary: dict) -> list[str]:
    """BD-rate of ours against each baseline; a missing number with its reason."""
    e = html.escape
    metrics = list(BD_METRICS)
    parts = ["<h2>BD-rate of ours against each baseline</h2><table><tr><th>baseline</th>"
             + "".join(f"<th>{e(m)}</th>" for m in metrics) + "</tr>"]
    for baseline, values in summary["bd_rate"].items():
        reasons = summary["bd_rate_reasons"].get(baseline, {})
        cells = [f"{values[m]:+.1f} %" if values.get(m) is not None else f"– ({reasons.get(m, '')})"
                 for m in metrics]
        parts.append(f"<tr><td>{e(baseline)}</td>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    parts.append(f"</table><p>{e(summary['protocol']['bd_rate'])}.</p>")
    return parts


def write_outputs(result: EvalResult, summary: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write all four files into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in (PER_IMAGE, SUMMARY, RD_PLOT, REPORT)}
    write_per_image_csv(result.rows, paths[PER_IMAGE])
    write_json(summary, paths[SUMMARY])
    rd_png = None
    if any(section["methods"].get(OURS, {}).get("n_ok") for section in rate_sections(summary).values()):
        plot_summary(summary, paths[RD_PLOT])
        rd_png = paths[RD_PLOT].read_bytes()
    else:
        del paths[RD_PLOT]
    paths[REPORT].write_text(render_html(summary, result, rd_png), encoding="utf-8")
    return paths
