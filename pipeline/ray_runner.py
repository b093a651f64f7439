"""Where the jobs run on Ray: the one module of the pipeline that imports Ray.

Encode:  shards ─► read_and_decode (CPU tasks) ─► EncodeImages (actor pool, one model per actor) ─► driver
Decode:  archive files ─► read_archive_rows (CPU tasks) ─► DecodeRecords (actor pool) ─► write_images (CPU tasks)
         ─► driver

The driver (``pipeline.encode_job`` / ``pipeline.decode_job``) receives small result rows through
``iter_batches`` and writes each shard once it is complete. With no address, :func:`ray_session`
starts a local Ray inside the command and stops it afterwards.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa

from pipeline.config import ComputeConfig, DecodeJobConfig, EncodeJobConfig
from pipeline.decode_stages import ArchiveShard, DecodeRecords, read_archive_rows, write_images
from pipeline.encode_stages import EncodeImages, read_and_decode
from pipeline.inputs import WorkShard

# glibc keeps freeing and re-faulting torch's large buffers with its default thresholds (about 40%
# slower on CPU, see RAY_NOTES): raised in every worker process.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456"}
# Passed to a remote cluster's workers. Never credentials: the cluster's own environment (instance
# roles, pod secrets) provides those, and runtime_env values are visible in Ray's job metadata.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
GPU_DEFAULT_BATCH_SIZE = 16  # Ray requires a batch size with GPUs


def embedded_cpus(*computes: ComputeConfig) -> int:
    """CPUs for a local Ray: the machine's, and never fewer than the actors plus one I/O task need.

    The actors hold their CPUs for the whole job; if they held all of them no reading task could
    run and the job would hang (Ray issue 44687).
    """
    need = max(c.actors * c.cpus_per_actor + c.io_cpus for c in computes) if computes else 1
    return max(os.cpu_count() or 1, math.ceil(need))


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
        env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
        ray.init(address=address, runtime_env={"env_vars": {**MALLOC_ENV, **env}})
    try:
        yield
    finally:
        ray.shutdown()
        if own_temp is not None:
            shutil.rmtree(own_temp, ignore_errors=True)


def check_resources(compute: ComputeConfig) -> None:
    """Refuse, with a message, an actor pool that would leave no CPU for the reading tasks."""
    import ray

    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    if compute.actors * compute.cpus_per_actor + compute.io_cpus > cpus:
        raise ValueError(f"{compute.actors} actors x {compute.cpus_per_actor} CPUs plus {compute.io_cpus} CPU for "
                         f"reading need more than the cluster's {cpus:g} CPUs: use fewer --actors or "
                         f"--cpus-per-actor (the job would hang otherwise)")
    if compute.actors * compute.gpus_per_actor > gpus:
        raise ValueError(f"{compute.actors} actors x {compute.gpus_per_actor} GPUs need more than the cluster's "
                         f"{gpus:g} GPUs: use fewer --actors or --gpus-per-actor")


def _actor_args(compute: ComputeConfig) -> dict:
    import ray

    batch_size = compute.batch_size
    if batch_size is None and compute.gpus_per_actor > 0:
        batch_size = GPU_DEFAULT_BATCH_SIZE
    args = {"compute": ray.data.ActorPoolStrategy(size=compute.actors), "num_cpus": compute.cpus_per_actor,
            "batch_size": batch_size, "batch_format": "numpy",
            "fn_constructor_kwargs": {"device": compute.actor_device, "threads": compute.actor_threads}}
    if compute.gpus_per_actor > 0:
        args["num_gpus"] = compute.gpus_per_actor
    return args


def _io_pool(compute: ComputeConfig):
    import ray

    return ray.data.TaskPoolStrategy(size=compute.max_io_tasks)


def _shard_dataset(specs: list[str]):
    import ray

    return ray.data.from_items([{"shard": s} for s in specs], override_num_blocks=len(specs))


def _results(ds) -> Iterator[pa.Table]:
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1)


def stream_encode(shards: list[WorkShard], config: EncodeJobConfig) -> Iterator[pa.Table]:
    compute = config.compute
    check_resources(compute)
    actor = _actor_args(compute)
    actor["fn_constructor_kwargs"].update(model=config.model, colour_correction=config.colour_correction)
    ds = _shard_dataset([s.to_json() for s in shards])
    ds = ds.map_batches(read_and_decode, fn_kwargs={"max_pixels": config.max_pixels}, num_cpus=compute.io_cpus,
                        compute=_io_pool(compute), batch_format="numpy")
    ds = ds.map_batches(EncodeImages, **actor)
    yield from _results(ds)


def stream_decode(shards: list[ArchiveShard], config: DecodeJobConfig, model: str) -> Iterator[pa.Table]:
    compute = config.compute
    check_resources(compute)
    actor = _actor_args(compute)
    actor["fn_constructor_kwargs"]["model"] = model
    ds = _shard_dataset([s.to_json() for s in shards])
    ds = ds.map_batches(read_archive_rows, fn_kwargs={"keys": config.keys, "where": config.where},
                        num_cpus=compute.io_cpus, compute=_io_pool(compute), batch_format="numpy")
    ds = ds.map_batches(DecodeRecords, **actor)
    ds = ds.map_batches(write_images, fn_kwargs={"output": config.output, "image_format": config.image_format,
                                                 "quality": config.quality},
                        num_cpus=compute.io_cpus, compute=_io_pool(compute), batch_format="numpy")
    yield from _results(ds)
