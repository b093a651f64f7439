"""The encode job's driver logic: plan, skip finished shards, write complete shards, summarise.

Where the stages run is not decided here: ``stream`` takes the pending shards and yields result
batches (``pipeline.ray_runner.stream_encode`` on Ray, ``pipeline.local_runner.stream_encode``
in this process). Each shard's rows are written as one Parquet file once all of them have
arrived, under a name fixed by the shard's index, so a rerun after a kill writes exactly the
missing shards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable

import pyarrow as pa

from pipeline.archive import (
    archive_table,
    check_job_file,
    existing_parts,
    part_metadata,
    read_columns,
    write_parquet,
    write_stats,
)
from pipeline.collect import ShardCollector
from pipeline.config import EncodeJobConfig
from pipeline.inputs import WorkShard, plan_inputs
from pipeline.schema import ARCHIVE_COLUMNS, ARCHIVE_VERSION
from pipeline.stats import RunInfo, encode_stats, format_summary, shard_progress
from pipeline.storage import Location, redact_uri
from sprdiff import FORMAT_VERSION

EncodeStream = Callable[[list[WorkShard], EncodeJobConfig], Iterable[pa.Table]]
STATS_COLUMNS = ["status", "width", "height", "num_bytes", "bpp", "source_bytes"]


def run_encode_job(config: EncodeJobConfig, stream: EncodeStream, *, log: Callable[[str], None] = print,
                   started_at: float | None = None) -> dict:
    """Encode every input not yet in the archive; return (and write to ``_stats.json``) the summary."""
    started_at = time.monotonic() if started_at is None else started_at
    plan = plan_inputs(config.input, input_format=config.input_format, shard_size=config.shard_size,
                       limit=config.limit, image_column=config.image_column, key_column=config.key_column)
    out = Location.of(config.output)
    input_uri, output_uri = redact_uri(Location.of(config.input).uri()), redact_uri(out.uri())
    check_job_file(out, {"job": "encode", "archive_version": ARCHIVE_VERSION, "input": input_uri,
                         "input_format": plan.kind, "input_digest": plan.digest, "shards": len(plan.shards),
                         "model": redact_uri(config.model), "max_pixels": config.max_pixels})
    names = {s.name for s in plan.shards}
    done = existing_parts(out) & names
    pending = [s for s in plan.shards if s.name not in done]
    log(f"encode-job: {input_uri} ({plan.kind}, {plan.num_files} files) -> {output_uri}: {len(plan.shards)} shards, "
        f"{len(done)} already done, {len(pending)} to do")
    expected_fingerprint = _archive_fingerprint(out, done)
    by_index = {s.index: s for s in pending}
    collector = ShardCollector()
    written, rows_run = 0, 0
    pipeline_start = time.monotonic()
    for batch in (stream(pending, config) if pending else ()):
        for index, rows in collector.add(batch):
            table = archive_table(rows)
            fingerprint = _one_fingerprint(table, expected_fingerprint)
            expected_fingerprint = expected_fingerprint or fingerprint
            shard = by_index[index]
            metadata = {"model_id": _first(table, "model_id"), "model_fingerprint": fingerprint or "",
                        "model_source": redact_uri(config.model), "format_version": str(FORMAT_VERSION),
                        "job": json.dumps({"input": input_uri, "input_format": plan.kind, "shard": shard.name})}
            write_parquet(out, f"{shard.name}.parquet", table, ARCHIVE_COLUMNS, metadata)
            written += 1
            rows_run += table.num_rows
            log(shard_progress("encode-job", f"{shard.name}.parquet", table, written, len(pending), rows_run,
                               time.monotonic() - pipeline_start))
    if written != len(pending):
        raise RuntimeError(f"the pipeline ended with {len(pending) - written} of {len(pending)} shards incomplete "
                           f"({collector.pending} partly received): rerun the same command to finish them")
    pipeline_s = time.monotonic() - pipeline_start
    table = read_columns(out, [f"{n}.parquet" for n in sorted(names)], STATS_COLUMNS)
    run = RunInfo("encode", input_uri, output_uri, len(plan.shards), len(done), written, rows_run,
                  time.monotonic() - started_at, pipeline_s)
    stats = encode_stats(table, run)
    write_stats(out, stats)
    log(format_summary(stats))
    return stats


def _archive_fingerprint(out: Location, done: set[str]) -> str | None:
    """The model fingerprint recorded by the parts already written (empty parts record none)."""
    for name in sorted(done):
        fingerprint = part_metadata(out, f"{name}.parquet").get("sprdiff.model_fingerprint")
        if fingerprint:
            return fingerprint
    return None


def _first(table: pa.Table, name: str) -> str:
    return table.column(name)[0].as_py() if table.num_rows else ""


def _one_fingerprint(table: pa.Table, expected: str | None) -> str | None:
    """The shard's model fingerprint; refuses an archive mixing two models."""
    found = set(table.column("model_fingerprint").to_pylist())
    if expected is not None:
        found.add(expected)
    if len(found) > 1:
        raise ValueError(f"this run's model does not match the archive's (fingerprints {sorted(found)}); "
                         f"rerun with the model the archive was started with, or write to a new --output")
    return next(iter(found), None)
