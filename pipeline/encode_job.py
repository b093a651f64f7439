"""The encode job's driver logic: plan once, check the job file, write the missing parts, summarise.

Where the stages run is not decided here: ``stream`` takes a window of part tasks and the job's
shared settings and yields one summary per part written (``pipeline.ray_runner.stream_encode`` on
Ray, ``pipeline.local_runner.stream_encode`` in this process). The first run lists (or reads) the
input and stores the plan under ``_plan/``; every later run reads that plan and lists nothing.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterable, Iterator

import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.archive import (
    JOB_FILE,
    check_job_file,
    new_job_id,
    summarise_archive_part,
    write_stats,
)
from pipeline.config import EncodeJobConfig
from pipeline.inputs import PlanRequest, StoredPlan, build_plan
from pipeline.inputs import manifest as input_lists
from pipeline.inputs.plan import PLAN_DIR
from pipeline.inputs.planner import Lister
from pipeline.parts import IndexWriter, PartOutput, PartTask, Totals, run_parts
from pipeline.schema import ARCHIVE_VERSION
from pipeline.stats import RunInfo, encode_stats, format_summary
from pipeline.storage import Location, redact_uri
from sprdiff import FORMAT_VERSION
from sprdiff.model_store import ARCHIVE_STORE, place_in, store_model_source
from sprdiff.run_settings import DEFAULT_TILE_SIZE

EncodeStream = Callable[[list[PartTask], EncodeJobConfig, dict], Iterable[dict]]
# The model is checked by its fingerprint (_store_model), not by the name it was given: a rerun may name
# the same weights another way (the archive's own _models/<fingerprint>), and a name may now hold others.
MODEL_BY_FINGERPRINT = ("job_id", "plan_digest", "model")
RETRYABLE = "read_error"  # a failure that may be transient: the source vanished or could not be read


def plan_request(config: EncodeJobConfig) -> PlanRequest:
    return PlanRequest(input=config.input, input_list=config.input_list, input_format=config.input_format,
                       rows_per_part=config.rows_per_part, limit=config.limit, image_column=config.image_column,
                       key_column=config.key_column)


def job_settings(config: EncodeJobConfig) -> dict:
    """Everything that decides which rows and which bytes the archive holds: a rerun must match it."""
    return {
        "job": "encode", "archive_version": ARCHIVE_VERSION,
        "input": redact_uri(Location.of(config.input).uri()) if config.input else None,
        "input_list": input_lists.identity(config.input_list) if config.input_list else None,
        "input_format": config.input_format, "rows_per_part": config.rows_per_part, "limit": config.limit,
        "image_column": config.image_column, "key_column": config.key_column, "max_pixels": config.max_pixels,
        "model": redact_uri(config.model),
        # settings that change the records' bytes (issue 28): the colour map and offset grid are both
        # behind colour_correction; the rate point or byte budget, batch settings, precision, tiling and the
        # writer's record version go in too (a default is written as None, as archives begun before it existed hold)
        "colour_correction": config.colour_correction, "rate": config.rate, "target_bpp": config.target_bpp,
        "batch_size": config.compute.batch_size,
        "precision": config.compute.precision,
        "tile_size": None if config.compute.tile_size == DEFAULT_TILE_SIZE else config.compute.tile_size,
        "record_format": FORMAT_VERSION,
    }


def check_rate_choice(config: EncodeJobConfig) -> None:
    """Refuse a ``--rate`` the model does not have, or a ``--target-bpp`` that is not a positive number,
    with ``sprdiff.rates``' messages (they name the model's rates): before any listing or Ray work."""
    if config.rate is None and config.target_bpp is None:
        return
    from sprdiff import rate_choice
    from sprdiff.presets import read_config

    model = read_config(config.model)
    rate_choice.check_rate(model, config.rate)
    rate_choice.check_target_bpp(model, config.target_bpp)


def open_plan(config: EncodeJobConfig, *, lister: Lister | None = None,
              log: Callable[[str], None] = print) -> tuple[StoredPlan, dict]:
    """The archive's plan and job file: read back on a rerun (after checking its settings), written
    once on the first run. Nothing is listed when a plan is stored."""
    check_rate_choice(config)
    out = Location.of(config.output)
    plan_dir = Location(out.fs, out.path(PLAN_DIR))
    settings = job_settings(config)
    out.refresh()
    job_path = out.path(JOB_FILE)
    started = out.exists(job_path)
    if started:
        check_job_file(out, settings, ignore=MODEL_BY_FINGERPRINT)  # refuses other settings before anything else
    plan = StoredPlan.open(plan_dir)
    request = plan_request(config)
    if plan is not None and not started and {k: v for k, v in plan.info.settings.items() if k != "kind"} != \
            request.settings():
        plan = None  # a plan from another command that never started an archive: plan again
    if plan is None:
        t0 = time.monotonic()
        plan = build_plan(request, plan_dir, lister=lister)
        log(f"encode-job: planned {plan.info.items} items in {plan.info.shards} parts in "
            f"{time.monotonic() - t0:.1f} s (digest {plan.info.digest[:12]})")
    job = {**settings, "job_id": new_job_id(), "plan_digest": plan.info.digest, "kind": plan.kind,
           "parts": plan.info.shards, "items": plan.info.items,
           "model_store": config.model_store or ARCHIVE_STORE}  # relative: the archive's own, wherever it moves
    job = check_job_file(out, job, ignore=MODEL_BY_FINGERPRINT)
    if job["plan_digest"] != plan.info.digest:
        raise ValueError(f"{out.uri()}: the stored plan (digest {plan.info.digest[:12]}) is not the one this archive "
                         f"was started with ({job['plan_digest'][:12]}): write to a new --output")
    return plan, job


def _store_model(config: EncodeJobConfig, out: Location, job: dict, log: Callable[[str], None]) -> str:
    """Store the exact weights by fingerprint before the first part (idempotent on a rerun) and pin
    the fingerprint in ``_job.json``: a rerun whose --model now holds other weights (retrained in
    place) is refused before it writes anything, instead of mixing two models in one archive."""
    fingerprint, stored = store_model_source(config.model, place_in(out.uri(), job["model_store"]))
    recorded = job.get("model_fingerprint")
    if recorded is not None and recorded != fingerprint:
        raise ValueError(f"{redact_uri(config.model)} now holds model {fingerprint}, which does not match the "
                         f"archive's ({recorded}): resume with the archive's own weights "
                         f"(--model {redact_uri(place_in(out.uri(), job['model_store']))}/{recorded}), or write "
                         f"to a new --output")
    if recorded is None:
        out.write_bytes(out.path(JOB_FILE), json.dumps({**job, "model_fingerprint": fingerprint}, indent=2,
                                                       sort_keys=True).encode())
    log(f"encode-job: model {fingerprint[:16]} stored at {redact_uri(stored)}")
    return fingerprint


def plan_tasks(plan: StoredPlan) -> Iterator[PartTask]:
    uri = plan.location.uri()
    for shard in plan.shards():
        yield PartTask(shard.index, shard.expected_rows, {"plan": uri, "kind": plan.kind, "file": shard.file,
                                                         "offset": shard.offset, "items": shard.items})


def _summarise_file(output: PartOutput, task: PartTask, data: bytes) -> dict:
    table = pq.read_table(io.BytesIO(data))
    summary = summarise_archive_part(task.name, task.index, output.job_id, data, table)
    summary["bpp_sum"] = float(pc.sum(table.column("bpp")).as_py() or 0.0)
    return summary


def _healing_task(output: PartOutput, kind: str) -> Callable[[PartTask, dict], PartTask | None]:
    """``--retry-errors``: a finished part holding ``read_error`` rows becomes a task that reads exactly
    those rows again (for tar and table inputs, whose errors concern the whole file, the part's file)."""
    def redo(task: PartTask, summary: dict) -> PartTask | None:
        if not summary.get("counts", {}).get(RETRYABLE):
            return None
        with output.location.fs.open(output.part_path(task.name), "rb") as f:
            keys = pq.read_table(f, columns=["key"], filters=[("status", "=", RETRYABLE)]).column("key").to_pylist()
        return PartTask(task.index, -1 if kind != "images" else len(keys),
                        {**task.payload, "only_keys": keys})
    return redo


def run_encode_job(config: EncodeJobConfig, stream: EncodeStream, *, log: Callable[[str], None] = print,
                   started_at: float | None = None, lister: Lister | None = None) -> dict:
    """Encode every input not yet in the archive; return (and write to ``_stats.json``) the summary."""
    started_at = time.monotonic() if started_at is None else started_at
    plan, job = open_plan(config, lister=lister, log=log)
    out = Location.of(config.output)
    output = PartOutput(out, job["job_id"], job["plan_digest"])
    fingerprint = _store_model(config, out, job, log)
    shared = {"job": "encode", "output": out.uri(), "job_id": job["job_id"], "plan_digest": job["plan_digest"],
              "model_source": redact_uri(config.model), "model_store": job["model_store"],
              "input": job["input"] or "", "kind": plan.kind,
              "fingerprint": fingerprint}  # the part writer refuses records of any other weights
    index = IndexWriter()

    def on_done(summary: dict) -> None:
        index.add(summary)
        for fingerprint in summary.get("fingerprints", ()):
            shared["fingerprint"] = shared["fingerprint"] or fingerprint

    source = job["input"] or (job["input_list"] or {}).get("uri", "")
    pipeline_start = time.monotonic()
    totals = run_parts("encode-job", output, lambda: plan_tasks(plan), plan.info.shards,
                       lambda window: stream(window, config, shared), _summarise_file, log=log,
                       describe=f"{source} ({plan.kind}, {plan.info.items} items) -> {redact_uri(out.uri())}",
                       redo=_healing_task(output, plan.kind) if config.retry_errors else None, on_done=on_done)
    if len(totals.fingerprints) > 1:
        raise ValueError(f"{out.uri()} holds records of several models ({sorted(totals.fingerprints)})")
    index.write(out)
    return _finish(config, totals, source, out, started_at, pipeline_start, log)


def _finish(config: EncodeJobConfig, totals: Totals, source: str, out: Location, started_at: float,
            pipeline_start: float, log: Callable[[str], None]) -> dict:
    run = RunInfo("encode", source, redact_uri(out.uri()), totals.parts, totals.parts_before,
                  totals.parts - totals.parts_before, totals.rows_run, time.monotonic() - started_at,
                  time.monotonic() - pipeline_start)
    stats = encode_stats(totals, run)
    write_stats(out, stats)
    log(format_summary(stats))
    return stats
