"""``sprdiff make-shards`` and ``sprdiff train``: preparing a corpus and training the two stages."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "train_default.json"
# Training recipes shipped beside the defaults (jobs/configs/NAME.json), for --recipe.
RECIPES = {"paper": "the paper's two stages for sd-turbo on GPUs (jobs/configs/paper.sh runs all four)",
           "demo": "the shipped demo model, trained on 2 CPU cores (jobs/configs/demo.sh)"}


def add_train_commands(subparsers: argparse._SubParsersAction) -> None:
    shards = subparsers.add_parser("make-shards", help="pack image folders/prefixes into WebDataset tar shards")
    shards.add_argument("--input", required=True, help="folder or URI prefix of images (local, s3://, ...)")
    shards.add_argument("--output", required=True, help="folder or URI prefix for shard-NNNNNN.tar + manifest.json")
    shards.add_argument("--crop", type=int, default=512,
                        help="training crop size: shorter images are upscaled to it (default: 512)")
    shards.add_argument("--per-shard", type=int, default=256, help="samples per shard (default: 256)")
    shards.add_argument("--threads", type=int, default=8, help="images read and checked in parallel (default: 8)")
    shards.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="leave out files whose path relative to --input matches GLOB, e.g. held-out "
                             "validation images (repeatable)")
    shards.add_argument("--include", action="append", default=[], metavar="GLOB",
                        help="only files whose path relative to --input matches GLOB, e.g. a validation split "
                             "(repeatable; --exclude still applies)")
    shards.set_defaults(run=run_make_shards)

    train = subparsers.add_parser("train", help="train a stage with Ray Train (DDP) from WebDataset shards")
    train.add_argument("--stage", type=int, choices=(0, 1, 2), required=True,
                       help="0: pretrain the VAE, distortion codec and semantic encoder (models built without "
                            "outside weights); 1, 2: the paper's two codec stages")
    train.add_argument("--data", required=True, help="URI prefix of the tar shards (local or s3://)")
    train.add_argument("--output", required=True,
                       help="URI for checkpoints/, metrics.jsonl and the exported model/ (local or s3://)")
    train.add_argument("--model", default=None,
                       help="preset or model dir/URI to start from (stages 0-1: the config's 'model'; stage 2: "
                            "the stage-1 run's OUTPUT/model, required)")
    train.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                       help="a recipe shipped in jobs/configs, merged over the defaults before any --config: "
                            + "; ".join(f"{name}: {what}" for name, what in sorted(RECIPES.items())))
    train.add_argument("--config", action="append", default=[],
                       help=f"JSON file merged over {DEFAULT_CONFIG.name}; repeat it to merge several in order, "
                            "e.g. a recipe, then a file changing one stage of it")
    train.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP ranks) (default: 1)")
    train.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs per worker; 0 trains on CPU")
    train.add_argument("--cpus-per-worker", type=float, default=1, help="CPUs reserved per worker (default: 1)")
    train.add_argument("--steps", type=int, default=None, help="total steps of the stage (default: the config's)")
    train.add_argument("--lambda-rate", type=float, default=None,
                       help="λ_b, the rate weight (default: the config's; stage 2 rate points 8, 4, 2)")
    train.add_argument("--crop", type=int, default=None, help="random crop size (default: the config's)")
    train.add_argument("--batch-size", type=int, default=None, help="per-worker batch (default: the config's)")
    train.add_argument("--grad-accum", type=int, default=None,
                       help="micro-batches accumulated per update: effective batch = batch size × this × workers "
                            "(default: the config's grad_accum)")
    train.add_argument("--activation-checkpointing", action="store_true", default=None,
                       help="recompute activations in the backward pass instead of keeping them: less memory, "
                            "about a third more compute (default: the config's activation_checkpointing)")
    train.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    train.add_argument("--validation-data", default=None, metavar="URI",
                       help="shards (sprdiff make-shards) validated during training: real bytes, PSNR, MS-SSIM, "
                            "best checkpoint kept under OUTPUT/best (default: the config's validation.data)")
    train.add_argument("--validate-every", type=int, default=None, metavar="N",
                       help="steps between validations, and at the last step (default: the config's validation.every)")
    train.add_argument("--vgg-weights", default=None,
                       help="VGG16 state dict path/URI for the perceptual loss, or 'random' (toy runs)")
    train.add_argument("--resume", action="store_true",
                       help="continue from the latest checkpoint under --output (start fresh if there is none)")
    train.add_argument("--max-failures", type=int, default=0,
                       help="worker-group restarts from the last checkpoint before giving up (default: 0)")
    train.add_argument("--address", default=None,
                       help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray started for this run)")
    train.set_defaults(run=run_train)


def run_make_shards(args: argparse.Namespace) -> int:
    from pipeline.shards import make_shards

    stats = make_shards(args.input, args.output, crop=args.crop, per_shard=args.per_shard, threads=args.threads,
                        exclude=tuple(args.exclude), include=tuple(args.include))
    summary = {"output": args.output, "samples": stats.written, "shards": len(stats.shards),
               "upscaled": stats.upscaled, "skipped": dict(stats.skipped)}
    print(json.dumps(summary))
    for error in stats.errors:
        print(f"skipped {error['source_uri']}: {error['status']}: {error['error']}", file=sys.stderr)
    return 0


def absolute_if_local(uri: str) -> str:
    """Relative local paths made absolute: Ray workers run in their own working directory."""
    if "://" in uri:
        return uri
    return str(Path(uri).expanduser().resolve())


def build_run_spec(args: argparse.Namespace):
    """The config file(s) plus the CLI flags -> the RunSpec every worker gets."""
    from pipeline.training.config import MISSING_VGG_MESSAGE, load_config
    from pipeline.training.loop import RunSpec

    recipe = [DEFAULT_CONFIG.parent / f"{args.recipe}.json"] if args.recipe else []
    config = load_config(DEFAULT_CONFIG, *recipe, *args.config)
    overrides = {"vgg_weights": args.vgg_weights, "data.crop": args.crop, "data.batch_size": args.batch_size,
                 "checkpoint_every": args.checkpoint_every, "grad_accum": args.grad_accum,
                 "activation_checkpointing": args.activation_checkpointing}
    validation_data = args.validation_data or config.validation.data
    if validation_data is not None:  # from the flag or a config file, made absolute like --data
        overrides["validation.data"] = absolute_if_local(validation_data)
    overrides["validation.every"] = args.validate_every
    config = config.with_overrides({k: v for k, v in overrides.items() if v is not None})
    model = args.model or (config.model if args.stage in (0, 1) else None)
    if model is None:
        raise ValueError("stage 2 starts from a stage-1 model: pass --model OUTPUT/model of the stage-1 run")
    if Path(model).exists():  # a local model directory, not a preset name
        model = absolute_if_local(model)
    args.data, args.output = absolute_if_local(args.data), absolute_if_local(args.output)
    if args.stage == 0:
        if args.lambda_rate is not None:
            raise ValueError("stage 0 has no λ_b: its distortion codec's λ is stage0.distortion_lambda in the config")
        return RunSpec(stage=0, data_uri=args.data, output_uri=args.output, model=model, lambda_rate=0.0,
                       steps=args.steps if args.steps is not None else config.stage0.steps, config=config.to_dict())
    stage = config.stage(args.stage)
    if config.vgg_weights is None and stage.weights.perceptual > 0:
        raise ValueError(MISSING_VGG_MESSAGE)
    return RunSpec(stage=args.stage, data_uri=args.data, output_uri=args.output, model=model,
                   lambda_rate=args.lambda_rate if args.lambda_rate is not None else stage.lambda_rate,
                   steps=args.steps if args.steps is not None else stage.steps, config=config.to_dict())


# Ray Train's placement-group cleaner polls the State API every second to see whether the run's
# controller is alive. Our install has no ray[default] (no State API) and a local Ray dies with the
# command anyway, so there it would only log one "Failed to query ... actor state" warning a second.
PLACEMENT_GROUP_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def quiet_placement_group_cleaner() -> None:
    """worker_process_setup_hook of the local Ray: keeps the cleaner's errors, drops its warnings."""
    import logging

    logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER).setLevel(logging.ERROR)


def start_ray(address: str | None) -> None:
    """Connect to ``address`` (or $RAY_ADDRESS); without one, start a local Ray for this run."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private, local cluster
        ray.init(address="local", runtime_env={"worker_process_setup_hook": quiet_placement_group_cleaner})
    else:
        ray.init(address=address)


def run_train(args: argparse.Namespace) -> int:
    from ray.train import TrainingFailedError

    from pipeline.training.loop import CHECKPOINTS_DIR, MODEL_DIR, check_output, output_path, run_training

    spec = build_run_spec(args)
    if not check_output(spec, args.resume) and args.resume:  # checked before the minute Ray takes to start
        print(f"no checkpoint under {spec.output_uri}: starting at step 0")
    config = spec.train_config
    batch, accum = config.data.batch_size, config.grad_accum
    print(f"effective batch {batch * accum * args.workers} images per update (batch {batch} per worker × "
          f"{accum} accumulated × {args.workers} worker{'s' if args.workers != 1 else ''})")
    start_ray(args.address)
    try:
        result = run_training(spec, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                              cpus_per_worker=args.cpus_per_worker, resume=args.resume,
                              max_failures=args.max_failures)
    except TrainingFailedError as e:
        print(f"sprdiff: error: training failed: {e}", file=sys.stderr)
        return 1
    checkpoint = result.checkpoint and output_path(spec.output_uri, CHECKPOINTS_DIR, Path(result.checkpoint.path).name)
    print(json.dumps({"stage": spec.stage, "steps": spec.steps, "checkpoint": checkpoint,
                      "model": output_path(spec.output_uri, MODEL_DIR), "metrics": result.metrics}))
    return 0
