"""The Ray Train side: a ``TorchTrainer`` (DDP over workers) running one stage.

Output layout under the run's output URI (local path or any fsspec URI):

    checkpoints/step-000010/{tensors.safetensors,state.json}   every ``checkpoint_every`` steps
    checkpoints/checkpoint_manager_snapshot.json             Ray Train's index of complete checkpoints
    metrics.jsonl                                             one line per step (rank 0)
    tensorboard/events.out.tfevents.*                         the same metrics for TensorBoard (``tensorboard``)
    validation.jsonl, best/, best-model/                      validation, best checkpoint (``training.validation``)
    models/<fingerprint>/                                     each exported model, never overwritten
    model/pointer.json                                        points at the latest export (``training.export``)

Ray Train's storage *is* the output URI (``RunConfig(storage_path, storage_filesystem)``), so
its checkpoint bookkeeping gives resume for free: a checkpoint is listed in the snapshot only
after all its files were uploaded, ``ray.train.get_checkpoint()`` returns the latest listed one
after a worker failure (``max_failures``) and when the same command is started again with the
same output (``--resume``, or a restarted cluster).

This is the only module of the training package that imports Ray.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fsspec
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from fsspec.implementations.local import LocalFileSystem
from pyarrow.fs import FSSpecHandler, PyFileSystem

from pipeline.training.checkpoint import read_checkpoint, write_checkpoint
from pipeline.training.config import TrainConfig
from pipeline.training.data import DataPosition, crop_batches, list_shards, resume_position
from pipeline.training.export import export_model
from pipeline.training.memory import exclude_frozen_from_ddp
from pipeline.training.metrics import MetricsLog, Progress
from pipeline.training.paths import output_path
from pipeline.training.pretrain import PretrainTrainer
from pipeline.training.sample_log import open_sample_log
from pipeline.training.stage import StageTrainer
from pipeline.training.validation import BEST_POINTER_DIR, Validator, check_validation, export_best, validation_due
from sprdiff import SPRDiff

CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs; travels to the workers as a plain dict."""

    stage: int
    data_uri: str
    output_uri: str
    model: str  # preset, directory or URI the stage starts from
    lambda_rate: float
    steps: int  # total steps of the stage (the run stops there, resumed or not)
    config: dict[str, Any]  # TrainConfig.to_dict()

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.config)

    def checkpoint_dir_name(self, step: int) -> str:
        return f"step-{step:06d}"


def has_checkpoints(output_uri: str) -> bool:
    fs, root = fsspec.core.url_to_fs(output_path(output_uri, CHECKPOINTS_DIR, RAY_SNAPSHOT))
    return fs.exists(root)


# ---- on each worker

def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def say(line: str) -> None:
    """One line to the worker's stdout (Ray forwards it to the driver). Not ``print``: Ray Train
    patches it into its logger, which shows each line twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def sync_grads(params) -> None:
    world = _world()
    if world > 1:
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(world)


def reduce_mean(values: torch.Tensor) -> torch.Tensor:
    world = _world()
    if world > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= world
    return values


def total_skipped(position: DataPosition, rank: int, device) -> int:
    """Damaged samples and shards skipped in what all ranks have consumed so far."""
    mine = torch.tensor([float(position.skipped(rank))], device=device)
    return round(reduce_mean(mine).item() * _world())


def gather_position(position: DataPosition, rank: int, device) -> DataPosition:
    """Every rank's position of its own readers, in one (rank 0 writes the checkpoint)."""
    rows = torch.zeros_like(position.rows())
    mine = position.readers_of(rank)
    rows[mine.start:mine.stop] = position.rows()[mine.start:mine.stop]
    if _world() > 1:
        rows = rows.to(device)  # NCCL reduces only GPU tensors
        dist.all_reduce(rows)
    return position.with_rows(rows.cpu())


def prepare_ddp(module: torch.nn.Module) -> torch.nn.Module:
    """DDP through Ray Train (identity with one worker). Every trained parameter gets a gradient
    each step, so ``find_unused_parameters`` stays off; frozen weights are left out of DDP."""
    exclude_frozen_from_ddp(module)
    return ray.train.torch.prepare_model(module, parallel_strategy_kwargs={"find_unused_parameters": False})


def train_loop_per_worker(spec_dict: dict[str, Any]) -> None:
    spec = RunSpec(**spec_dict)
    config = spec.train_config
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(config.seed)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    model = SPRDiff.from_pretrained(spec.model, device=device)
    base_fingerprint = model.fingerprint if rank == 0 else None
    trainer = make_trainer(model, config, spec.stage, spec.lambda_rate, device)

    checkpoint = ray.train.get_checkpoint()
    saved_position = None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            saved = read_checkpoint(Path(directory))
        if rank == 0 and saved["run"]["base_fingerprint"] != base_fingerprint:
            raise ValueError(f"the checkpoint was trained from another base model than {spec.model!r} "
                             f"(fingerprint {saved['run']['base_fingerprint'][:12]}... vs {base_fingerprint[:12]}...)")
        trainer.load_state_dict(saved["trainer"])
        saved_position = saved.get("data")  # absent in checkpoints written before positions were kept
        if rank == 0:
            say(f"resumed from step {trainer.step} ({spec.checkpoint_dir_name(trainer.step)})")
    start_step = trainer.step
    torch.manual_seed(hash((config.seed, rank, start_step)) % 2**31)  # quantisation noise differs per worker

    trainer.distribute(prepare_ddp, sync_grads, reduce_mean)
    trainer.set_train_mode()
    data = config.data
    position, warning = resume_position(saved_position, world, data.loader_workers, data.batch_size)
    if warning and rank == 0:
        say(warning)
    batches = crop_batches(list_shards(spec.data_uri), data.crop, data.batch_size, rank, world, config.seed,
                           data.loader_workers, data.shuffle_buffer, start=position)
    samples = open_sample_log(spec.output_uri, rank, keep_until_step=start_step) if data.sample_log else None
    metrics = (MetricsLog(spec.output_uri, keep_until_step=start_step, tensorboard=config.tensorboard)
               if rank == 0 else None)
    validator = (Validator(config.validation, spec.output_uri, spec.stage, start_step)
                 if rank == 0 and config.validation.data else None)
    progress = Progress(spec.stage, spec.steps, config.progress_every, start_step)
    run_info = {**asdict(spec), "base_fingerprint": base_fingerprint}

    last = time.perf_counter()
    while trainer.step < spec.steps:
        micro = [next(batches) for _ in range(config.grad_accum)]
        record = trainer.train_step([b.images for b in micro])
        for b in micro:
            position.consumed(b)
        if samples is not None:
            samples.write({"step": trainer.step, "keys": [key for b in micro for key in b.keys]})
        now = time.perf_counter()
        record.update(step=trainer.step, stage=spec.stage, lambda_rate=trainer.lambda_rate,
                      samples_per_s=world * data.batch_size * config.grad_accum / (now - last), time=time.time(),
                      skipped_samples=total_skipped(position, rank, device))
        last = now
        if validator is not None and validation_due(config.validation, trainer.step, spec.steps):
            record.update(validator.run(trainer, run_info))  # rank 0; the others wait at the next all-reduce
            last = time.perf_counter()  # validation time is not training throughput
        if metrics is not None:
            metrics.write(record)
            line = progress.update(record)
            if line:
                say(line)
        if trainer.step % config.checkpoint_every == 0 or trainer.step == spec.steps:
            if metrics is not None:
                metrics.sync()
            if samples is not None:
                samples.sync()
            if validator is not None:
                validator.sync()
            _report_checkpoint(spec, trainer, run_info, record, rank, gather_position(position, rank, device))
            last = time.perf_counter()  # checkpoint time is not training throughput
        elif trainer.step % config.progress_every == 0 or validation_due(config.validation, trainer.step, spec.steps):
            ray.train.report(_scalars(record))  # a barrier: every rank reports at the same steps

    if metrics is not None:
        metrics.close()
    if validator is not None:
        validator.close()
    if samples is not None:
        samples.close()
    if rank == 0:
        fingerprint = export_model(trainer.exportable(), spec.output_uri, trainer.rate_id, parent=spec.model,
                                   training_data=spec.data_uri, steps=trainer.step, config=spec.config)
        say(f"exported the model at step {trainer.step} to {output_path(spec.output_uri, 'models', fingerprint)} "
            f"(fingerprint {fingerprint[:16]}); {output_path(spec.output_uri, MODEL_DIR)} points at it")
    if validator is not None:  # last: it loads the best checkpoint into the trainer
        best = export_best(trainer, spec.output_uri, parent=spec.model, training_data=spec.data_uri,
                           config=spec.config)
        if best is not None:
            say(f"exported the best validated checkpoint (fingerprint {best[:16]}); "
                f"{output_path(spec.output_uri, BEST_POINTER_DIR)} points at it")


def make_trainer(model: SPRDiff, config: TrainConfig, stage: int, lambda_rate: float,
                 device) -> StageTrainer | PretrainTrainer:
    """Stage 0 pretrains the parts the paper takes pretrained; stages 1-2 train the codec."""
    if stage == 0:
        return PretrainTrainer(model, config, device)
    return StageTrainer(model, config, stage, lambda_rate, device)


def _report_checkpoint(spec: RunSpec, trainer: StageTrainer | PretrainTrainer, run_info: dict, record: dict,
                       rank: int, position: DataPosition) -> None:
    name = spec.checkpoint_dir_name(trainer.step)
    summary = _scalars(record)
    if rank != 0:
        ray.train.report(summary, checkpoint=None, checkpoint_dir_name=name)
        return
    with tempfile.TemporaryDirectory(prefix="sprdiff-ckpt-") as tmp:
        write_checkpoint(Path(tmp), {"trainer": trainer.state_dict(), "run": run_info, "data": position.to_dict()})
        ray.train.report(summary, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)


def _scalars(record: dict) -> dict:
    """What Ray Train gets of a step record: its numbers (a validation score may be None)."""
    return {k: v for k, v in record.items() if isinstance(v, (int, float))}


# ---- on the driver

def storage_for(output_uri: str):
    """(storage_path, storage_filesystem) for Ray Train: local paths as they are, other URIs
    through fsspec wrapped as a pyarrow filesystem."""
    fs, root = fsspec.core.url_to_fs(output_uri)
    if isinstance(fs, LocalFileSystem):
        return str(Path(root).resolve()), None
    return root.rstrip("/"), PyFileSystem(FSSpecHandler(fs))


def check_output(spec: RunSpec, resume: bool) -> bool:
    """Refuse to mix runs in one output and fail early when there is no data; returns whether
    there is a checkpoint to resume from. Cheap: call it before starting Ray."""
    found = has_checkpoints(spec.output_uri)
    if found and not resume:
        raise ValueError(f"{output_path(spec.output_uri, CHECKPOINTS_DIR)} holds checkpoints of an earlier run: pass "
                         f"--resume to continue it, or choose another --output")
    list_shards(spec.data_uri)
    check_validation(spec.train_config.validation)
    return found


def run_training(spec: RunSpec, *, workers: int, gpus_per_worker: float = 0, cpus_per_worker: float = 1,
                 resume: bool = False, max_failures: int = 0):
    """Run the stage on the connected Ray cluster; returns Ray Train's ``Result``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    check_output(spec, resume)
    config = spec.train_config
    storage_path, storage_filesystem = storage_for(spec.output_uri)
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=asdict(spec),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if gpus_per_worker > 0 else "gloo"),
        run_config=RunConfig(name=CHECKPOINTS_DIR, storage_path=storage_path, storage_filesystem=storage_filesystem,
                             checkpoint_config=CheckpointConfig(num_to_keep=config.checkpoints_to_keep),
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    return trainer.fit()
