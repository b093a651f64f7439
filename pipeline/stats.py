"""Run summaries: counts by status, bytes in and out, bpp, throughput, from the parts' summaries."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RunInfo:
    """What this run did (the counts in the stats cover the whole output, earlier runs included)."""

    job: str
    input: str
    output: str
    shards_total: int
    shards_done_before: int
    shards_written: int
    rows_this_run: int
    wall_s: float  # the whole command, Ray start-up included
    pipeline_s: float  # from submitting the dataset to the last shard written


def _run_figures(run: RunInfo) -> dict:
    return {
        "run": asdict(run),
        "images_per_s": run.rows_this_run / run.wall_s if run.wall_s > 0 else 0.0,
        "images_per_s_pipeline": run.rows_this_run / run.pipeline_s if run.pipeline_s > 0 else 0.0,
    }


def _counts(totals) -> dict[str, int]:
    return dict(sorted(totals.counts.items(), key=lambda kv: (kv[0] != "ok", kv[0])))


def encode_stats(totals, run: RunInfo) -> dict:
    """The archive's figures from its part summaries (``pipeline.parts.Totals``); no record is read."""
    ok = totals.counts.get("ok", 0)
    pixels, bytes_out = totals.sums["pixels_ok"], totals.sums["record_bytes"]
    return {
        "job": "encode",
        "rows": totals.rows,
        "counts": _counts(totals),
        "failed": totals.rows - ok,
        "bytes_in": totals.sums["source_bytes"],
        "bytes_out": bytes_out,
        "mean_image_bpp": totals.sums["bpp_sum"] / ok if ok else None,  # the mean of each image's bpp
        "aggregate_bpp": 8 * bytes_out / pixels if pixels else None,  # all record bits over all pixels
        "model_fingerprints": sorted(totals.fingerprints),
        # rows with a record by the rate id it was coded at (parts of layout 2 record none), and rows whose
        # record is over the --target-bpp budget because no rate fits it (their warning column says so)
        "rate_counts": {str(rate): n for rate, n in sorted(totals.rate_counts.items())},
        "budget_warnings": totals.sums["budget_warnings"],
        **_run_figures(run),
    }


def decode_stats(totals, run: RunInfo) -> dict:
    """The decode output's figures from its manifest part summaries."""
    ok = totals.counts.get("ok", 0)
    pixels, bytes_in = totals.sums["pixels_ok"], totals.sums["record_bytes"]
    return {
        "job": "decode",
        "rows": totals.rows,
        "counts": _counts(totals),
        "failed": totals.rows - ok,
        "bytes_in": bytes_in,
        "bytes_out": totals.sums["image_bytes"],
        "aggregate_bpp": 8 * bytes_in / pixels if pixels else None,  # all record bits over all pixels
        **_run_figures(run),
    }


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def format_summary(stats: dict) -> str:
    run = stats["run"]
    counts = ", ".join(f"{k} {v}" for k, v in stats["counts"].items()) or "none"
    bpp = ", ".join(f"{label} {stats[name]:.4f}" for name, label in (("mean_image_bpp", "per-image mean bpp"),
                                                                       ("aggregate_bpp", "aggregate bpp"))
                    if stats.get(name) is not None) or "bpp n/a"
    lines = [
        f"{stats['job']}-job summary: {run['input']} -> {run['output']}",
        f"  rows        {stats['rows']} ({counts})",
        f"  parts       {run['shards_written']} written this run, {run['shards_done_before']} already done, "
        f"{run['shards_total']} in all",
        f"  bytes       in {_size(stats['bytes_in'])}, out {_size(stats['bytes_out'])}, {bpp}",
    ]
    if stats.get("rate_counts"):
        rates = ", ".join(f"rate {rate}: {n}" for rate, n in stats["rate_counts"].items())
        over = stats.get("budget_warnings") or 0
        lines.append(f"  rates       {rates}" + (f"; {over} over the --target-bpp budget (no rate fits: see the "
                                                   f"warning column)" if over else ""))
    lines.append(f"  this run    {run['rows_this_run']} images in {run['wall_s']:.1f} s: {stats['images_per_s']:.2f} "
                 f"images/s ({stats['images_per_s_pipeline']:.2f} images/s after start-up)")
    return "\n".join(lines)
