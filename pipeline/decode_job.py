"""The decode job's driver logic: archive -> image files (or tar shards) plus a manifest.

Output layout::

    <output>/<key>.png                 one image per decoded row (or part-00012.tar for --format wds)
    <output>/_manifest/part-00012.parquet
                                       one per archive file: every selected row with its status and
                                       output URI; written last, so it marks the shard as done
    <output>/_manifest.parquet         all manifest parts in one table (rewritten by every run)
    <output>/_job.json, _stats.json    as for the encode job

Image files are written whole under their final name; a rerun after a kill redoes only the
shards without a manifest part, rewriting the same names with the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.archive import (
    check_job_file,
    existing_parts,
    file_metadata,
    manifest_table,
    parquet_bytes,
    read_columns,
    write_parquet,
    write_stats,
)
from pipeline.collect import ShardCollector
from pipeline.config import DecodeJobConfig
from pipeline.decode_stages import ArchiveShard, check_where, plan_archive, tar_bytes
from pipeline.schema import ARCHIVE_VERSION, MANIFEST_COLUMNS
from pipeline.stats import RunInfo, decode_stats, format_summary, shard_progress
from pipeline.storage import Location, redact_uri

DecodeStream = Callable[[list[ArchiveShard], DecodeJobConfig, str], Iterable[pa.Table]]
MANIFEST_DIR = "_manifest"
STATS_COLUMNS = ["status", "width", "height", "bitstream_bytes", "num_bytes"]


def archive_model(shards: list[ArchiveShard]) -> str:
    """The model source recorded in the archive's first file (``sprdiff.model_source``)."""
    first = Location.of(shards[0].uri)
    source = file_metadata(first, first.root).get("sprdiff.model_source")
    if not source:
        raise ValueError(f"{shards[0].uri} does not say which model wrote it: pass --model")
    return source


def run_decode_job(config: DecodeJobConfig, stream: DecodeStream, *, log: Callable[[str], None] = print,
                   started_at: float | None = None) -> dict:
    started_at = time.monotonic() if started_at is None else started_at
    shards, digest = plan_archive(config.input)
    model = config.model or archive_model(shards)
    if config.where:
        first = Location.of(shards[0].uri)
        with first.fs.open(first.root, "rb") as f:
            check_where(config.where, pq.read_schema(f))
    out = Location.of(config.output)
    manifests = Location(out.fs, out.path(MANIFEST_DIR))
    input_uri, output_uri = redact_uri(Location.of(config.input).uri()), redact_uri(out.uri())
    keys_digest = hashlib.sha256("\n".join(sorted(config.keys)).encode()).hexdigest() if config.keys else None
    check_job_file(out, {"job": "decode", "archive_version": ARCHIVE_VERSION, "input": input_uri,
                         "input_digest": digest, "format": config.image_format, "keys_digest": keys_digest,
                         "where": config.where, "model": redact_uri(model)})
    names = {s.name for s in shards}
    done = existing_parts(manifests) & names
    pending = [s for s in shards if s.name not in done]
    log(f"decode-job: {input_uri} -> {output_uri} ({config.image_format}): {len(shards)} archive files, "
        f"{len(done)} already done, {len(pending)} to do")
    by_index = {s.index: s for s in pending}
    collector = ShardCollector()
    written, rows_run = 0, 0
    pipeline_start = time.monotonic()
    placed = dataclasses.replace(config, output=out.uri())  # absolute, whatever the workers' directory
    for batch in (stream(pending, placed, model) if pending else ()):
        for index, rows in collector.add(batch):
            shard = by_index[index]
            if config.image_format == "wds":
                rows = _write_tar(out, shard, rows)
            table = manifest_table(rows)
            write_parquet(manifests, f"{shard.name}.parquet", table, MANIFEST_COLUMNS,
                          {"input": shard.uri, "model_source": redact_uri(model)})
            written += 1
            rows_run += table.num_rows
            log(shard_progress("decode-job", shard.name, table, written, len(pending), rows_run,
                               time.monotonic() - pipeline_start))
    if written != len(pending):
        raise RuntimeError(f"the pipeline ended with {len(pending) - written} of {len(pending)} shards incomplete: "
                           f"rerun the same command to finish them")
    pipeline_s = time.monotonic() - pipeline_start
    parts = [f"{n}.parquet" for n in sorted(names)]
    everything = read_columns(manifests, parts, [c.name for c in MANIFEST_COLUMNS])
    out.write_bytes(out.path("_manifest.parquet"), parquet_bytes(everything, MANIFEST_COLUMNS, {}))
    run = RunInfo("decode", input_uri, output_uri, len(shards), len(done), written, rows_run,
                  time.monotonic() - started_at, pipeline_s)
    stats = decode_stats(everything.select(STATS_COLUMNS), run)
    write_stats(out, stats)
    log(format_summary(stats))
    return stats


def _write_tar(out: Location, shard: ArchiveShard, rows: pa.Table) -> pa.Table:
    """Write the shard's decoded images as ``<shard>.tar``; return the rows with their output URIs."""
    ok = pc.equal(rows.column("status"), "ok")
    good = rows.filter(ok)
    path = out.path(f"{shard.name}.tar")
    out.write_bytes(path, tar_bytes(good.column("member").to_pylist(), good.column("payload").to_pylist()))
    tar_uri = out.uri(path)
    members = rows.column("member").to_pylist()
    uris = [f"{tar_uri}#{m}.png" if good_row else "" for m, good_row in zip(members, ok.to_pylist())]
    return rows.set_column(rows.column_names.index("output_uri"), "output_uri", pa.array(uris, pa.string()))
