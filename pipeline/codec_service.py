"""Codec services: codec actors kept warm across jobs on a long-running Ray cluster.

A job's own codec actors start with the job. Each one imports the model stack and loads the model
before its first image: about 7 s of CPU on a 2-core machine (docs/performance.md), paid again by
every job, which is most of a small daily job's fixed cost. A codec service is a set of named,
detached codec servers (``sprdiff codec-service start``) that load their model once and serve every
job that names the service (``--codec-service NAME``). The job's reading and writing stages run as
before; its codec stage becomes one task per batch, which hands the batch to the least busy server
and waits for the result.

What stays as it is with a job's own actors:

- **Bytes.** A server runs the job's own codec settings (batch size, precision, tile size) on the
  batches the job's read stage formed. So it writes the records the job's own actors would write on
  the same device kind (the determinism contract in docs/codec.md).
- **The model.** An encode job refuses a service whose model is not the weights its ``--model``
  names (compared by fingerprint) before any part is written, and the part writer checks every
  record again. A decode job finds each record's weights by fingerprint, as its own actors do; a
  server keeps the models it loaded for later jobs.
- **Failures.** Ray restarts a server that dies (``max_restarts=-1``) and retries the calls it held
  (``max_task_retries=-1``). Coding a batch is a pure function of the batch, so a retried call gives
  the same records, and the part writer keeps each row exactly once.

Servers live in the Ray namespace ``sprdiff`` as ``codec-service:<name>:<index>``. With Ray's
autoscaler a server holds its CPUs or GPUs until the service is stopped. This module and
``pipeline.ray_runner`` are the pipeline's only modules that import Ray, and both import it only
inside their functions.
"""

from __future__ import annotations

import dataclasses
import os
import random
import socket
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pipeline.codec_runtime import CodecRuntime
from pipeline.config import ComputeConfig

NAMESPACE = "sprdiff"
STAGES_PER_SERVER = 8  # job settings a server keeps a ready stage for (least recently used goes first)
PENDING_WAIT_S = 2.0  # a server that cannot say how busy it is in this time (restarting) is not chosen
CALLS_AT_ONCE = 4  # a server's Ray threads: they hand batches to its one coder thread and answer ``pending``


def server_name(service: str, index: int) -> str:
    return f"{_prefix(service)}{index}"


def _prefix(service: str) -> str:
    return f"codec-service:{service}:"


def _check_name(service: str) -> None:
    if not service or ":" in service or "/" in service:
        raise ValueError(f"a codec service's name must be non-empty without ':' or '/', got {service!r}")


class CodecServer:
    """One warm codec server (a Ray actor): the model loaded once, a ready stage per job's settings.

    ``encode`` and ``decode`` take the job's batches as the job's own actors would
    (``EncodeImages``, ``DecodeRecords``). Ray runs a threaded actor's calls on whichever of its
    threads is free, but every stage here is built and run on one coder thread, one batch at a time,
    so the coding always uses the same thread's memory (with ``MALLOC_ARENA_MAX=1`` from
    ``ray_runner.MALLOC_ENV``, as few page faults per image as the main thread: docs/performance.md).
    ``pending`` and ``describe`` answer from the other threads meanwhile.
    """

    def __init__(self, service: str, index: int, model: str, *, device: str = "cpu", threads: int | None = None,
                 codec: CodecRuntime | None = None):
        from pipeline.decode_stages import MODELS_PER_ACTOR
        from sprdiff.model_store import ModelCache

        self.codec = codec or CodecRuntime()
        self.model = self.codec.load(model, device=device, threads=threads)
        self.device = str(self.model.device)
        self.models = ModelCache((), device=device, max_models=MODELS_PER_ACTOR + 1, prepare=self.codec.prepare)
        self.models.add(self.model)
        self.info = {"service": service, "index": index, "model_source": model, "model_id": self.model.model_id,
                     "fingerprint": self.model.fingerprint, "device": self.device, "compile": self.codec.compile,
                     "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        self._stages: OrderedDict[tuple, object] = OrderedDict()
        self._coder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coder")
        self._count_lock = threading.Lock()
        self._pending = 0
        self._calls = {"encode": 0, "decode": 0}

    def describe(self) -> dict:
        return {**self.info, "calls": dict(self._calls), "pending": self._pending,
                "models_loaded": self.models.loads, "stages": len(self._stages)}

    def pending(self) -> int:
        """Calls running or waiting here."""
        return self._pending

    def _stage(self, key: tuple, make):
        if key not in self._stages:
            self._stages[key] = make()
            while len(self._stages) > STAGES_PER_SERVER:
                self._stages.popitem(last=False)
        self._stages.move_to_end(key)
        return self._stages[key]

    def _encoder(self, settings: dict):
        from pipeline.encode_stages import EncodeImages

        codec = dataclasses.replace(settings["codec"], compile=False)  # the server's model is prepared already
        key = ("encode", codec, settings["colour_correction"], settings["rate"], settings["target_bpp"])
        return self._stage(key, lambda: EncodeImages(self.model, device=self.device, codec=codec,
                                                     colour_correction=settings["colour_correction"],
                                                     rate=settings["rate"], target_bpp=settings["target_bpp"]))

    def _decoder(self, settings: dict):
        from pipeline.decode_stages import DecodeRecords

        codec = dataclasses.replace(settings["codec"], compile=False)
        key = ("decode", codec, settings["model"], tuple(settings["places"]))
        return self._stage(key, lambda: DecodeRecords(settings["model"], places=tuple(settings["places"]),
                                                      device=self.device, codec=codec, models=self.models))

    def _job_stage(self, job: str, settings: dict):
        return (self._encoder if job == "encode" else self._decoder)(settings)

    def check(self, job: str, settings: dict) -> dict:
        """Build the stage a job needs now, so settings this server cannot run (a precision its device
        lacks, a rate its model lacks) are refused before the job starts; returns ``describe()``."""
        self._coder.submit(self._job_stage, job, settings).result()
        return self.describe()

    def _run(self, job: str, batch: dict, settings: dict) -> dict:
        with self._count_lock:
            self._pending += 1
        try:
            return self._coder.submit(self._code, job, batch, settings).result()
        finally:
            with self._count_lock:
                self._pending -= 1

    def _code(self, job: str, batch: dict, settings: dict) -> dict:
        """On the coder thread: the job's stage (built once per settings) on one batch."""
        stage = self._job_stage(job, settings)
        self._calls[job] += 1
        return stage(batch)

    def encode(self, batch: dict, settings: dict) -> dict:
        return self._run("encode", batch, settings)

    def decode(self, batch: dict, settings: dict) -> dict:
        return self._run("decode", batch, settings)


# ---- starting, finding and stopping a service (from a driver connected to the cluster)

def start_service(service: str, model: str, servers: int, compute: ComputeConfig, *,
                  env: dict[str, str] | None = None) -> list[dict]:
    """Start ``servers`` detached codec servers of ``model`` under ``service`` and wait until each has
    loaded it; returns their ``describe()``. Refuses a name that is already running."""
    import ray

    _check_name(service)
    if servers < 1:
        raise ValueError(f"a codec service needs at least 1 server, got {servers}")
    if find_servers(service):
        raise ValueError(f"codec service {service!r} is running already: stop it first "
                         f"(sprdiff codec-service stop --name {service}) or choose another name")
    options = {"namespace": NAMESPACE, "lifetime": "detached", "max_restarts": -1, "max_task_retries": -1,
               "max_concurrency": CALLS_AT_ONCE, "num_cpus": compute.cpus_per_actor,
               "runtime_env": {"env_vars": dict(env or {})}}
    if compute.gpus_per_actor > 0:
        options["num_gpus"] = compute.gpus_per_actor
    remote = ray.remote(CodecServer)
    handles = [remote.options(name=server_name(service, i), **options)
               .remote(service, i, model, device=compute.actor_device, threads=compute.actor_threads,
                       codec=compute.codec)
               for i in range(servers)]
    try:
        return ray.get([h.describe.remote() for h in handles])
    except Exception:
        for h in handles:  # a server that cannot load its model would otherwise restart forever
            ray.kill(h, no_restart=True)
        raise


def find_servers(service: str) -> list:
    """The handles of ``service``'s servers, by index (empty if none is running)."""
    import ray

    prefix = _prefix(service)
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a.get("namespace") == NAMESPACE and a["name"].startswith(prefix)]
    names.sort(key=lambda n: int(n.rsplit(":", 1)[1]))
    return [ray.get_actor(n, namespace=NAMESPACE) for n in names]


def list_services() -> dict[str, int]:
    """Running services' names and their numbers of servers."""
    import ray

    counts: dict[str, int] = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor.get("namespace") == NAMESPACE and actor["name"].startswith("codec-service:"):
            name = actor["name"].split(":")[1]
            counts[name] = counts.get(name, 0) + 1
    return counts


def describe_service(service: str) -> list[dict]:
    import ray

    return ray.get([s.describe.remote() for s in find_servers(service)])


def stop_service(service: str) -> int:
    """Kill ``service``'s servers for good; returns how many there were."""
    import ray

    servers = find_servers(service)
    for s in servers:
        ray.kill(s, no_restart=True)
    return len(servers)


def check_service(compute: ComputeConfig, job: str, settings: dict, *, fingerprint: str | None = None) -> list[dict]:
    """Refuse, before any work, a job the service cannot serve: another model (encode), or settings a
    server cannot run (each server builds the job's stage now). Returns the servers' ``describe()``."""
    import ray

    service = compute.service
    servers = find_servers(service)
    if not servers:
        raise ValueError(f"codec service {service!r} stopped before the job could start")
    infos = ray.get([s.check.remote(job, settings) for s in servers])
    if fingerprint is not None:
        other = sorted({i["fingerprint"] for i in infos} - {fingerprint})
        if other:
            raise ValueError(f"codec service {service!r} holds model {', '.join(other)} ({infos[0]['model_source']}), "
                             f"but this job's --model is {fingerprint}: start a service of that model, or drop "
                             f"--codec-service")
    return infos


# ---- the job's codec stage: one Ray Data task per batch

_handles: dict[str, list] = {}  # per worker process: finding a service's servers costs a GCS round trip


def _least_busy(service: str):
    import ray

    servers = _handles.get(service) or find_servers(service)
    if not servers:
        raise RuntimeError(f"codec service {service!r} stopped while a job was using it")
    _handles[service] = servers
    asked = [s.pending.remote() for s in servers]
    ready, _ = ray.wait(asked, num_returns=len(asked), timeout=PENDING_WAIT_S)
    loads = []
    for i, ref in enumerate(asked):
        if ref in ready:
            try:
                loads.append((ray.get(ref), random.random(), i))  # random: ties spread over the servers
            except ray.exceptions.RayActorError:
                continue
    return servers[min(loads)[2]] if loads else random.choice(servers)


def code_on_service(batch: dict[str, np.ndarray], *, service: str, job: str, settings: dict) -> dict[str, np.ndarray]:
    """The codec stage of a job on a service: the batch coded by the least busy server."""
    import ray

    server = _least_busy(service)
    try:
        return ray.get(server.encode.remote(batch, settings) if job == "encode" else
                       server.decode.remote(batch, settings))
    except ray.exceptions.ActorDiedError:
        _handles.pop(service, None)  # stopped for good (a restart is waited for): find the servers again on retry
        raise
