"""The decode job's driver logic: archive -> image files (or tar shards) plus a manifest, in parts.

Output layout::

    <output>/<key>.png                 one image per decoded row (or part-00012.tar for --format wds)
    <output>/_manifest/part-00012.parquet
                                       one per archive part read: every selected row with its status
                                       and output URI; written last, so it marks the part as done
    <output>/_parts/part-00012.json    its summary; _stats.json is built from these
    <output>/_job.json, _stats.json    as for the encode job

The manifest is the ``_manifest/`` folder (``pq.read_table(OUTPUT/_manifest)`` reads it whole); no
single file gathers it. ``--keys`` and ``--where`` are pushed down: only the parts whose key range
holds a wanted key are read (``pipeline.lookup``), and of those only the row groups that can match.
Image files are written whole under their final name; a rerun after a kill redoes only the parts
without a manifest part, rewriting the same names with the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import time
from collections.abc import Callable, Iterable, Iterator

import pyarrow.parquet as pq

from pipeline.archive import check_job_file, new_job_id, summarise_manifest_part, write_stats
from pipeline.config import DecodeJobConfig
from pipeline.lookup import ArchiveIndex
from pipeline.part_writer import MANIFEST_DIR
from pipeline.parts import PartOutput, PartTask, run_parts
from pipeline.schema import ARCHIVE_VERSION, with_added_columns
from pipeline.stats import RunInfo, decode_stats, format_summary
from pipeline.storage import Location, redact_uri
from pipeline.where import check_where

DecodeStream = Callable[[list[PartTask], DecodeJobConfig, dict], Iterable[dict]]


def decode_tasks(index: ArchiveIndex, config: DecodeJobConfig) -> Iterator[PartTask]:
    keys = sorted(config.keys) if config.keys is not None else None
    for part, held in index.select(keys):
        filtered = held is not None or bool(config.where)
        yield PartTask(part.index, -1 if filtered else part.rows,
                       {"uri": part.uri, "keys": held, "where": config.where})


def _summarise_file(output: PartOutput, task: PartTask, data: bytes) -> dict:
    return summarise_manifest_part(task.name, task.index, output.job_id, data, pq.read_table(io.BytesIO(data)))


def run_decode_job(config: DecodeJobConfig, stream: DecodeStream, *, log: Callable[[str], None] = print,
                   started_at: float | None = None) -> dict:
    started_at = time.monotonic() if started_at is None else started_at
    index = ArchiveIndex.open(config.input)
    model = config.model  # None: each record's weights are found from its fingerprint (sprdiff.model_store)
    if config.where:
        first = Location.of(index.parts[0].uri)
        with first.fs.open(first.root, "rb") as f:
            check_where(config.where, with_added_columns(pq.read_schema(f)))  # old parts: added ones as nulls
    out = Location.of(config.output)
    input_uri, output_uri = redact_uri(Location.of(config.input).uri()), redact_uri(out.uri())
    keys_digest = hashlib.sha256("\n".join(sorted(config.keys)).encode()).hexdigest() if config.keys else None
    job = check_job_file(out, {"job": "decode", "archive_version": ARCHIVE_VERSION, "input": input_uri,
                               "input_digest": index.digest, "format": config.image_format,
                               "keys_digest": keys_digest, "where": config.where,
                               "model": redact_uri(model) if model else None,
                               "job_id": new_job_id(), "plan_digest": index.digest})
    output = PartOutput(out, job["job_id"], job["plan_digest"], part_dir=MANIFEST_DIR)
    placed = dataclasses.replace(config, output=out.uri())  # absolute, whatever the workers' directory
    shared = {"job": "decode", "output": out.uri(), "job_id": job["job_id"], "plan_digest": job["plan_digest"],
              "model_source": redact_uri(model) if model else "", "model": model,
              "image_format": config.image_format}
    tasks = list(decode_tasks(index, config))  # one per archive part: the index is already in memory
    pipeline_start = time.monotonic()
    totals = run_parts("decode-job", output, lambda: iter(tasks), len(tasks),
                       lambda window: stream(window, placed, shared), _summarise_file, log=log,
                       describe=f"{input_uri} -> {output_uri} ({config.image_format}), {len(index.parts)} archive "
                                f"parts, {len(tasks)} to read")
    run = RunInfo("decode", input_uri, output_uri, totals.parts, totals.parts_before,
                  totals.parts - totals.parts_before, totals.rows_run, time.monotonic() - started_at,
                  time.monotonic() - pipeline_start)
    stats = decode_stats(totals, run)
    write_stats(out, stats)
    log(format_summary(stats))
    return stats
