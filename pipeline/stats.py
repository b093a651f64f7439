"""Run summaries: counts by status, bytes in and out, bpp, throughput (pure functions of the output)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc


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


def _sum(table: pa.Table, name: str) -> int:
    if name not in table.column_names or table.num_rows == 0:
        return 0
    return int(pc.sum(table.column(name)).as_py() or 0)


def _counts(table: pa.Table) -> dict[str, int]:
    if table.num_rows == 0:
        return {}
    counts = table.column("status").value_counts().to_pylist()
    return {c["values"]: int(c["counts"]) for c in sorted(counts, key=lambda c: (c["values"] != "ok", c["values"]))}


def _run_figures(run: RunInfo) -> dict:
    return {
        "run": asdict(run),
        "images_per_s": run.rows_this_run / run.wall_s if run.wall_s > 0 else 0.0,
        "images_per_s_pipeline": run.rows_this_run / run.pipeline_s if run.pipeline_s > 0 else 0.0,
    }


def encode_stats(table: pa.Table, run: RunInfo) -> dict:
    """``table``: the archive's status, width, height, num_bytes, bpp, source_bytes columns."""
    ok = table.filter(pc.equal(table.column("status"), "ok")) if table.num_rows else table
    pixels = _sum(ok.append_column("_px", pc.multiply(pc.cast(ok.column("width"), pa.int64()),
                                                       pc.cast(ok.column("height"), pa.int64()))), "_px") \
        if ok.num_rows else 0
    bytes_out = _sum(ok, "num_bytes")
    return {
        "job": "encode",
        "rows": table.num_rows,
        "counts": _counts(table),
        "failed": table.num_rows - ok.num_rows,
        "bytes_in": _sum(table, "source_bytes"),
        "bytes_out": bytes_out,
        "mean_bpp": float(pc.mean(ok.column("bpp")).as_py()) if ok.num_rows else None,
        "aggregate_bpp": 8 * bytes_out / pixels if pixels else None,
        **_run_figures(run),
    }


def decode_stats(table: pa.Table, run: RunInfo) -> dict:
    """``table``: the manifest's status, width, height, bitstream_bytes, num_bytes columns."""
    ok = table.filter(pc.equal(table.column("status"), "ok")) if table.num_rows else table
    pixels = sum(w * h for w, h in zip(ok.column("width").to_pylist(), ok.column("height").to_pylist())) \
        if ok.num_rows else 0
    bytes_in = _sum(ok, "bitstream_bytes")
    return {
        "job": "decode",
        "rows": table.num_rows,
        "counts": _counts(table),
        "failed": table.num_rows - ok.num_rows,
        "bytes_in": bytes_in,
        "bytes_out": _sum(ok, "num_bytes"),
        "mean_bpp": 8 * bytes_in / pixels if pixels else None,
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
    bpp = f"{stats['mean_bpp']:.4f}" if stats["mean_bpp"] is not None else "n/a"
    return "\n".join([
        f"{stats['job']}-job summary: {run['input']} -> {run['output']}",
        f"  rows        {stats['rows']} ({counts})",
        f"  shards      {run['shards_written']} written this run, {run['shards_done_before']} already done, "
        f"{run['shards_total']} in all",
        f"  bytes       in {_size(stats['bytes_in'])}, out {_size(stats['bytes_out'])}, mean bpp {bpp}",
        f"  this run    {run['rows_this_run']} images in {run['wall_s']:.1f} s: {stats['images_per_s']:.2f} images/s "
        f"({stats['images_per_s_pipeline']:.2f} images/s after start-up)",
    ])


def shard_progress(job: str, shard: str, table: pa.Table, written: int, total: int, rows_run: int,
                   elapsed_s: float) -> str:
    """The per-shard progress line both jobs print as parts land."""
    ok = sum(1 for s in table.column("status").to_pylist() if s == "ok")
    return (f"{job}: {shard} {table.num_rows} rows ({ok} ok) | {written}/{total} shards, "
            f"{rows_run} images, {rows_run / elapsed_s:.2f} images/s")
