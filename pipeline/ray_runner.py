"""Where the jobs run on Ray (with ``pipeline.codec_service``, the pipeline's only modules that import Ray).

Encode:  part tasks ─► read_and_decode (CPU tasks) ─► EncodeImages (autoscaling actor pool) ─► PartWriter ─► driver
Decode:  part tasks ─► read_archive_rows (CPU tasks) ─► DecodeRecords (actor pool) ─► write_images (CPU tasks)
         ─► PartWriter ─► driver

With ``--codec-service NAME`` the actor pool is replaced by one task per batch that hands it to a warm
codec server of that service (``pipeline.codec_service``), so the job starts no codec actor.

The part writer (one actor, no CPU reserved) writes every part and its sidecar, and exports the
job's counters through Ray's metrics API (the Ray dashboard and Prometheus show them); the driver
(``pipeline.parts.run_parts``) receives one small summary per part. With no address,
:func:`ray_session` starts a local Ray inside the command and stops it afterwards.

Also here: :func:`encode_dataset` and :func:`decode_dataset` (the Python API for a user's own Ray
Data pipeline, exported as ``pipeline.encode_dataset``) and :func:`list_in_tasks` (listing a
prefix's sub-prefixes in parallel tasks).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyarrow as pa

from pipeline import codec_groups
from pipeline.codec_runtime import CodecRuntime
from pipeline.config import GPU_DEFAULT_BATCH_SIZE, ComputeConfig, DecodeJobConfig, EncodeJobConfig
from pipeline.decode_stages import DecodeRecords, read_archive_rows, write_images
from pipeline.encode_stages import EncodeImages, decode_item, read_and_decode, read_batch_rows, rows_to_batch
from pipeline.inputs.items import SourceItem
from pipeline.inputs.listing import Page, list_pages, sub_prefixes
from pipeline.part_writer import SUMMARY_COLUMN, PartWriter
from pipeline.parts import PartTask
from pipeline.storage import Location

# glibc keeps freeing and re-faulting torch's large buffers with its default thresholds (about 40%
# slower on CPU, see RAY_NOTES): raised in every worker process. And one arena: a thread other than
# the main one (a codec server's coder thread) otherwise gets an arena of its own, whose heaps glibc
# trims and faults in again whatever the thresholds say: 3,000-21,000 page faults per image against
# about 100 on the main thread (bench/bench_actor_threads.py, docs/performance.md).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456", "MALLOC_ARENA_MAX": "1"}
# Passed to a remote cluster's workers. Never credentials: the cluster's own environment (instance
# roles, pod secrets) provides those, and runtime_env values are visible in Ray's job metadata.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
DECODE_BATCH_ROWS = 16  # records per decode-actor call (at least the codec batch)


def embedded_cpus(*computes: ComputeConfig) -> int:
    """CPUs for a local Ray: the machine's, and never fewer than the actors plus one I/O task need.

    The actors hold their CPUs for the whole job; if they held all of them no reading task could
    run and the job would hang (Ray issue 44687).
    """
    need = max(c.pool[0] * c.cpus_per_actor + c.io_cpus for c in computes) if computes else 1
    return max(os.cpu_count() or 1, math.ceil(need))


def forwarded_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                temp_dir: str | None = None) -> Iterator[None]:
    """Use the Ray already initialised in this process, connect to ``address``, or start a local one."""
    import ray

    if ray.is_initialized():
        yield
        return
    own_temp = None
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, single-user instance
        for k, v in MALLOC_ENV.items():
            os.environ.setdefault(k, v)  # inherited by the raylet and its workers
        if temp_dir is None:
            temp_dir = own_temp = tempfile.mkdtemp(prefix="sprdiff-ray-", dir="/tmp")
        ray.init(num_cpus=num_cpus or embedded_cpus(), _temp_dir=temp_dir, include_dashboard=False)
    else:
        ray.init(address=address, runtime_env={"env_vars": {**MALLOC_ENV, **forwarded_env()}})
    try:
        yield
    finally:
        ray.shutdown()
        if own_temp is not None:
            shutil.rmtree(own_temp, ignore_errors=True)


def scalable_resources() -> dict | None:
    """The most CPUs/GPUs the cluster's autoscaler may add nodes up to, or None for a fixed cluster."""
    try:
        from ray._private.state import state  # no public API says whether a cluster can scale (Ray 2.60)

        return state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - an older or newer Ray without it: treat the cluster as fixed
        return None


def check_resources(compute: ComputeConfig, log=print) -> None:
    """Refuse, with a message, an actor pool that could never start or would leave no CPU for the
    reading tasks. On a cluster that can scale, the pool is checked against what the autoscaler can
    add, and the job starts and waits for the actors instead."""
    import ray

    fewest, most = compute.pool
    limit = scalable_resources()
    total = limit if limit else ray.cluster_resources()
    where = "the cluster can grow to" if limit else "the cluster's"
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    if fewest * compute.cpus_per_actor + compute.io_cpus > cpus:
        raise ValueError(f"{fewest} actors x {compute.cpus_per_actor} CPUs plus {compute.io_cpus} CPU for "
                         f"reading need more than {where} {cpus:g} CPUs: use fewer --actors or "
                         f"--cpus-per-actor (the job would hang otherwise)")
    if fewest * compute.gpus_per_actor > gpus:
        raise ValueError(f"{fewest} actors x {compute.gpus_per_actor} GPUs need more than {where} {gpus:g} GPUs: "
                         f"use fewer --actors or --gpus-per-actor")
    have = ray.cluster_resources()
    if limit and fewest * compute.gpus_per_actor > have.get("GPU", 0):
        log(f"the cluster has {have.get('GPU', 0):g} GPUs now and can grow to {gpus:g}: the job starts and waits "
            f"for its first {fewest} actors")


def _actor_args(compute: ComputeConfig, batch_rows: int) -> dict:
    """The codec stage's map_batches arguments; ``batch_rows``: rows per call (for encode, the read
    stage's fixed batch size, so each call is one read batch of whole codec groups)."""
    import ray

    fewest, most = compute.pool
    pool = ray.data.ActorPoolStrategy(size=fewest) if fewest == most else \
        ray.data.ActorPoolStrategy(min_size=fewest, max_size=most)
    args = {"compute": pool, "num_cpus": compute.cpus_per_actor, "batch_size": batch_rows, "batch_format": "numpy",
            "fn_constructor_kwargs": {"device": compute.actor_device, "threads": compute.actor_threads,
                                      "codec": compute.codec}}
    if compute.gpus_per_actor > 0:
        args["num_gpus"] = compute.gpus_per_actor
    return args


def _io_pool(compute: ComputeConfig, servers: list[dict] | None = None):
    """Reading (and image-writing) tasks at once: one per codec actor, or per server of a service."""
    import ray

    size = (compute.io_tasks or len(servers)) if servers else compute.max_io_tasks
    return ray.data.TaskPoolStrategy(size=size)


def _service_servers(compute: ComputeConfig) -> list[dict] | None:
    """The servers of the job's codec service (None: the job starts its own actors)."""
    if not compute.service:
        return None
    from pipeline import codec_service

    servers = codec_service.describe_service(compute.service)
    if not servers:
        raise ValueError(f"no codec service {compute.service!r} runs on this cluster: start one with `sprdiff "
                         f"codec-service start --name {compute.service} --model MODEL --address ADDRESS`, or "
                         f"drop --codec-service")
    return servers


def _codec_of(compute: ComputeConfig, servers: list[dict] | None) -> CodecRuntime:
    """The job's codec settings; on a service of GPU servers the default batch is the GPU one, as for
    actors of the job's own with GPUs."""
    codec = compute.codec
    if servers and compute.batch_size is None and any(s["device"].startswith("cuda") for s in servers):
        codec = dataclasses.replace(codec, batch_size=GPU_DEFAULT_BATCH_SIZE)
    return codec


def _service_args(compute: ComputeConfig, servers: list[dict], job: str, settings: dict, batch_rows: int,
                  fingerprint: str | None = None) -> tuple:
    """``map_batches`` arguments of the codec stage on a service, after the service has checked that it
    can run ``settings`` (and, encoding, that it holds the job's model)."""
    import ray

    from pipeline import codec_service

    codec_service.check_service(compute, job, settings, fingerprint=fingerprint)
    # two calls per server: one coding, one waiting, so no server idles between batches
    return (codec_service.code_on_service,), {
        "fn_kwargs": {"service": compute.service, "job": job, "settings": settings},
        "compute": ray.data.TaskPoolStrategy(size=2 * len(servers)), "num_cpus": 0, "batch_size": batch_rows,
        "batch_format": "numpy"}


class MeteredPartWriter(PartWriter):
    """The part writer, counting what it writes through Ray's metrics API (scraped from every node's
    metrics agent: the dashboard's Metrics view and Prometheus)."""

    def __init__(self, job: dict, tasks: dict[int, dict]):
        from ray.util import metrics

        super().__init__(job, tasks, on_part=self._count)
        tags = {"job": job["job"]}
        self._rows = metrics.Counter("sprdiff_rows", "archive rows written, by status", tag_keys=("job", "status"))
        self._rates = metrics.Counter("sprdiff_records_by_rate", "records written, by rate id (encode)",
                                      tag_keys=("job", "rate"))
        self._parts = metrics.Counter("sprdiff_parts", "parts written", tag_keys=("job",))
        self._bytes_in = metrics.Counter("sprdiff_bytes_in", "bytes read (sources, or records)", tag_keys=("job",))
        self._bytes_out = metrics.Counter("sprdiff_bytes_out", "bytes written (records, or images)",
                                          tag_keys=("job",))
        self._rate = metrics.Gauge("sprdiff_images_per_second", "rows written per second since the writer started",
                                   tag_keys=("job",))
        for metric in (self._rows, self._rates, self._parts, self._bytes_in, self._bytes_out, self._rate):
            metric.set_default_tags(tags)
        self._start, self._written = time.monotonic(), 0

    def _count(self, summary: dict) -> None:
        for status, n in summary.get("counts", {}).items():
            if n > 0:
                self._rows.inc(n, tags={"status": status})
        for rate, n in summary.get("rate_counts", {}).items():
            self._rates.inc(n, tags={"rate": rate})
        self._parts.inc(1)
        encode = self.job["job"] == "encode"
        for counter, value in ((self._bytes_in, summary.get("source_bytes" if encode else "record_bytes")),
                               (self._bytes_out, summary.get("record_bytes" if encode else "image_bytes"))):
            if value:  # Ray's Counter.inc refuses 0
                counter.inc(value)
        self._written += summary["rows"]
        self._rate.set(self._written / max(time.monotonic() - self._start, 1e-9))


def _writer_args(shared: dict, tasks: list[PartTask]) -> dict:
    import ray

    return {"compute": ray.data.ActorPoolStrategy(size=1), "num_cpus": 0, "batch_format": "numpy",
            "fn_constructor_kwargs": {"job": shared, "tasks": {t.index: t.payload for t in tasks}}}


def _task_dataset(tasks: list[PartTask]):
    import ray

    return ray.data.from_items([{"task": t.to_json()} for t in tasks], override_num_blocks=len(tasks))


def _summaries(ds) -> Iterator[dict]:
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
        for text in batch.get(SUMMARY_COLUMN, ()):
            yield json.loads(text)


def stream_encode(tasks: list[PartTask], config: EncodeJobConfig, shared: dict) -> Iterator[dict]:
    import ray

    compute = config.compute
    servers = _service_servers(compute)
    codec = _codec_of(compute, servers)
    rows = read_batch_rows(codec.batch_size)
    if servers is None:
        check_resources(compute)
        stage = _actor_args(compute, rows)
        stage["fn_constructor_kwargs"].update(model=config.model, colour_correction=config.colour_correction,
                                              rate=config.rate, target_bpp=config.target_bpp)
        fn = (EncodeImages,)
    else:
        settings = {"codec": codec, "colour_correction": config.colour_correction, "rate": config.rate,
                    "target_bpp": config.target_bpp}
        fn, stage = _service_args(compute, servers, "encode", settings, rows, fingerprint=shared["fingerprint"])
    ds = _task_dataset(tasks)
    block_bytes = ray.data.DataContext.get_current().target_max_block_size
    ds = ds.map_batches(read_and_decode, fn_kwargs={"max_pixels": config.max_pixels, "batch_size": codec.batch_size,
                                                    "budgets": codec_groups.budgets(block_bytes)},
                        num_cpus=compute.io_cpus, compute=_io_pool(compute, servers), batch_format="numpy")
    ds = ds.map_batches(*fn, **stage)
    ds = ds.map_batches(MeteredPartWriter, **_writer_args(shared, tasks))
    yield from _summaries(ds)


def stream_decode(tasks: list[PartTask], config: DecodeJobConfig, shared: dict) -> Iterator[dict]:
    compute = config.compute
    servers = _service_servers(compute)
    codec = _codec_of(compute, servers)
    rows = max(codec.batch_size, DECODE_BATCH_ROWS)
    if servers is None:
        check_resources(compute)
        stage = _actor_args(compute, rows)
        stage["fn_constructor_kwargs"].update(model=shared.get("model"), places=config.model_stores)
        fn = (DecodeRecords,)
    else:
        settings = {"codec": codec, "model": shared.get("model"), "places": tuple(config.model_stores)}
        fn, stage = _service_args(compute, servers, "decode", settings, rows)
    ds = _task_dataset(tasks)
    ds = ds.map_batches(read_archive_rows, num_cpus=compute.io_cpus, compute=_io_pool(compute, servers),
                        batch_format="numpy")
    ds = ds.map_batches(*fn, **stage)
    ds = ds.map_batches(write_images, fn_kwargs={"output": config.output, "image_format": config.image_format,
                                                 "quality": config.quality},
                        num_cpus=compute.io_cpus, compute=_io_pool(compute, servers), batch_format="numpy")
    ds = ds.map_batches(MeteredPartWriter, **_writer_args(shared, tasks))
    yield from _summaries(ds)


# ---- listing in parallel

def list_in_tasks(location: Location, tasks: int) -> Iterator[Page]:
    """Pages of the listing of ``location``, its first-level folders listed by up to ``tasks`` Ray tasks
    at once. Pages wait in Ray's object store, not in the driver, until the planner takes them."""
    import ray

    folders, files = sub_prefixes(location)
    if files:
        yield files
    if not folders:
        return

    @ray.remote(num_cpus=0.25)
    def list_folder(uri: str, folder: str) -> list[Page]:
        return list(list_pages(Location.of(uri), folder))

    pending = [list_folder.remote(location.uri(), folder) for folder in folders[:tasks]]
    queued = list(folders[tasks:])
    while pending:
        [ready], pending = ray.wait(pending, num_returns=1)
        if queued:
            pending.append(list_folder.remote(location.uri(), queued.pop(0)))
        yield from ray.get(ready)


# ---- the Python API (pipeline.encode_dataset / pipeline.decode_dataset)

def _rows_from_bytes(batch: dict[str, np.ndarray], *, image_column: str, key_column: str,
                     max_pixels: int) -> dict[str, np.ndarray]:
    rows = []
    for i, (key, data) in enumerate(zip(batch[key_column], batch[image_column])):
        item = SourceItem(str(key), "", bytes(data) if data is not None else None,
                          status="ok" if data is not None else "empty",
                          error=None if data is not None else "the image column is null")
        rows.append({**decode_item(item, max_pixels=max_pixels), "_shard": 0, "_item": i, "_shard_rows": 0})
    return rows_to_batch(rows)


def _archive_rows(batch: dict[str, np.ndarray]) -> pa.Table:
    from pipeline.archive import archive_table
    from pipeline.part_writer import batch_table

    return archive_table(batch_table(batch))


def _own_actors(compute: ComputeConfig) -> ComputeConfig:
    if compute.service:
        raise ValueError("encode_dataset and decode_dataset run codec actors of their own: a codec service serves "
                         "encode-job and decode-job (--codec-service); drop service= from the ComputeConfig")
    return compute


def encode_dataset(ds, *, model, image_column: str = "image", key_column: str = "key",
                   compute: ComputeConfig | None = None, colour_correction: bool = True, max_pixels: int | None = None,
                   rate: int | None = None, target_bpp: float | None = None):
    """A Ray Dataset of image bytes -> a Ray Dataset of archive rows (the columns of ``docs/archive-format.md``).

    Every input row gives one output row, bad images included (with their status). ``rate`` or
    ``target_bpp``: the model's rate point, or a budget in bits per pixel that picks one per image
    (``sprdiff.rates``). Write it with ``ds.write_parquet(...)``, or keep transforming it.
    """
    from sprdiff.images import DEFAULT_MAX_PIXELS

    compute = _own_actors(compute or ComputeConfig())
    actor = _actor_args(compute, read_batch_rows(compute.codec.batch_size))
    actor["fn_constructor_kwargs"].update(model=model, colour_correction=colour_correction, rate=rate,
                                          target_bpp=target_bpp)
    ds = ds.map_batches(_rows_from_bytes, fn_kwargs={"image_column": image_column, "key_column": key_column,
                                                     "max_pixels": max_pixels or DEFAULT_MAX_PIXELS},
                        batch_format="numpy", num_cpus=compute.io_cpus)
    ds = ds.map_batches(EncodeImages, **actor)
    return ds.map_batches(_archive_rows, batch_format="numpy", num_cpus=compute.io_cpus)


def _records(batch: dict[str, np.ndarray], *, record_column: str, key_column: str) -> dict[str, np.ndarray]:
    rows = []
    for i, (key, record) in enumerate(zip(batch[key_column], batch[record_column])):
        rows.append({"key": str(key), "source_uri": "", "record": bytes(record) if record is not None else b"",
                     "encode_status": "ok", "encode_error": "", "_shard": 0, "_item": i, "_shard_rows": 0})
    return rows_to_batch(rows)


def _png_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from sprdiff.images import encode_png

    n = len(batch["key"])
    png = np.empty(n, dtype=object)
    png[:] = [encode_png(p) if s == "ok" else None for p, s in zip(batch["pixels"], batch["status"])]
    return {"key": batch["key"], "status": batch["status"], "error": batch["error"], "width": batch["width"],
            "height": batch["height"], "png": png}


def decode_dataset(ds, *, model, record_column: str = "record", key_column: str = "key",
                   compute: ComputeConfig | None = None):
    """A Ray Dataset of records (an archive read with ``ray.data.read_parquet``, say) -> a Ray Dataset of
    ``key``, ``status``, ``error``, ``width``, ``height`` and ``png`` (the decoded image as PNG bytes)."""
    compute = _own_actors(compute or ComputeConfig())
    actor = _actor_args(compute, max(compute.codec.batch_size, DECODE_BATCH_ROWS))
    actor["fn_constructor_kwargs"]["model"] = model
    ds = ds.map_batches(_records, fn_kwargs={"record_column": record_column, "key_column": key_column},
                        batch_format="numpy", num_cpus=compute.io_cpus)
    ds = ds.map_batches(DecodeRecords, **actor)
    return ds.map_batches(_png_rows, batch_format="numpy", num_cpus=compute.io_cpus)
