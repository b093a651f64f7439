"""Several runs (e.g. of separately trained rate points) in one plot: reads their summary.json files,
writes one figure. A run that evaluated several rates gives one point per rate."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec

from sprdiff.evaluation.plots import plot_rd
from sprdiff.evaluation.report import RD_PLOT, SUMMARY, write_json
from sprdiff.evaluation.summary import SCHEMA, rate_sections

COMPARE = "compare.json"


def read_summary(run: str) -> dict:
    """The summary.json of a run directory (or the file itself), local or fsspec URI."""
    uri = run if run.endswith(".json") else run.rstrip("/") + "/" + SUMMARY
    try:
        with fsspec.open(uri, "r", encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri} not found: pass directories written by `sprdiff eval`") from None
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{uri} is not an evaluation summary (schema {data.get('schema')!r}, expected {SCHEMA!r})")
    return data


def combine(runs: list[str]) -> dict:
    """One table of every run's RD point per method at each rate it evaluated, ordered by our bpp."""
    entries = []
    for run in runs:
        s = read_summary(run)
        model = s["model"]
        for rate, section in rate_sections(s).items():
            methods = section["methods"]
            entries.append({
                "run": run, "input": s["input"], "model_id": model.get("model_id"), "rate_id": rate,
                "fingerprint": model.get("fingerprint"), "n_evaluated": section["n_evaluated"],
                "points": {m: e["rd_point"] for m, e in methods.items() if e.get("n_ok")},
                "fid": {m: e["fid"] for m, e in methods.items() if "fid" in e},
            })
    inputs = sorted({e["input"] for e in entries})
    entries.sort(key=lambda e: (e["points"].get("sprdiff", {}).get("bpp") or 0))
    return {"schema": "sprdiff-eval-compare/1", "runs": entries, "inputs": inputs,
            "same_input": len(inputs) == 1}


def write_comparison(runs: list[str], out_dir: str | Path) -> dict[str, Path]:
    combined = combine(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves: dict[str, list[dict]] = {}
    for entry in combined["runs"]:
        for method, point in entry["points"].items():
            curves.setdefault(method, []).append(point)
    title = f"{len(runs)} run(s), {len(combined['runs'])} points"
    if not combined["same_input"]:
        title += " (different inputs: compare with care)"
    plot_rd(curves, out / RD_PLOT, title=title)
    write_json(combined, out / COMPARE)
    return {COMPARE: out / COMPARE, RD_PLOT: out / RD_PLOT}
