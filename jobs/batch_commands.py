"""``sprdiff encode-job`` and ``sprdiff decode-job``: the Ray Data batch jobs over object storage.

With no ``--address`` a local Ray starts inside the command and stops after it; with one, the
same job runs on that cluster. Inputs and outputs are local paths or any fsspec URI (``s3://``
takes its endpoint and credentials from the standard AWS variables).
"""

from __future__ import annotations

import argparse
import time

import fsspec

from sprdiff.images import DEFAULT_MAX_PIXELS


def _add_compute_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where it runs")
    group.add_argument("--address", default=None,
                       help="Ray cluster address (default: start a local Ray inside this command)")
    group.add_argument("--actors", type=int, default=None,
                       help="codec actors, one model load each (default: one per core for a local Ray on CPU, "
                            "else 1)")
    group.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per codec actor (default: 0)")
    group.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs reserved per codec actor (default: 1)")
    group.add_argument("--threads-per-actor", type=int, default=None,
                       help="torch threads per codec actor (default: one per reserved CPU)")
    group.add_argument("--batch-size", type=int, default=None,
                       help="images per codec call (default: whatever block arrives on CPU, 16 with GPUs)")
    group.add_argument("--device", default=None, help="torch device of the actors (default: cuda with GPUs, else cpu)")
    group.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: this machine's)")
    group.add_argument("--ray-temp-dir", default=None, help="temp dir of the local Ray (default: a new one in /tmp)")


def add_batch_commands(subparsers: argparse._SubParsersAction) -> None:
    enc = subparsers.add_parser("encode-job", help="archive a corpus of images into Parquet tables of bitstreams",
                                description="Encode image files, WebDataset tar shards or Parquet image tables "
                                            "under --input into a Parquet archive under --output. Rerunning the "
                                            "same command finishes an interrupted run.")
    enc.add_argument("--input", required=True, help="input prefix or file (local path, file://, s3://, ...)")
    enc.add_argument("--output", required=True, help="archive prefix (local path, file://, s3://, ...)")
    enc.add_argument("--model", default="demo", help="preset or shipped model, model directory or URI (default: demo)")
    enc.add_argument("--input-format", choices=("auto", "images", "wds", "parquet"), default="auto",
                     help="auto: .tar files -> wds, .parquet files -> parquet, anything else -> image files")
    enc.add_argument("--image-column", default=None,
                     help="Parquet column (or tar member suffix) with the image bytes (default: guessed)")
    enc.add_argument("--key-column", default=None, help="Parquet column with per-row keys (default: key/id/name "
                                                        "if present, else the row number)")
    enc.add_argument("--shard-size", type=int, default=64,
                     help="inputs per output file, the unit of resume (default: 64)")
    enc.add_argument("--limit", type=int, default=None,
                     help="only the first N inputs in sorted order (image files, Parquet rows, or tar shards)")
    enc.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                     help=f"larger images become too_large rows (default: {DEFAULT_MAX_PIXELS:,})")
    enc.add_argument("--no-colour-correction", dest="colour_correction", action="store_false",
                     help="do not decode each image at the encoder to fit and send its colour map and offset "
                          "grid: about half the encode time, lower PSNR, version-1 records")
    _add_compute_arguments(enc)
    enc.set_defaults(run=run_encode_job_command)

    dec = subparsers.add_parser("decode-job", help="decode a Parquet archive back into image files",
                                description="Decode the archive under --input into image files named by key "
                                            "(or WebDataset shards) under --output, with a manifest.")
    dec.add_argument("--input", required=True, help="archive prefix or Parquet file")
    dec.add_argument("--output", required=True, help="output prefix (local path, file://, s3://, ...)")
    dec.add_argument("--format", dest="image_format", choices=("png", "webp", "jpeg", "wds"), default="png",
                     help="image files, or WebDataset tar shards of PNGs (default: png)")
    dec.add_argument("--keys", default=None, help="file (or URI) with the keys to decode, one per line")
    dec.add_argument("--where", default=None,
                     help="pandas query over the archive's columns, e.g. \"status == 'ok' and width >= 256\"")
    dec.add_argument("--quality", type=int, default=90, help="WebP/JPEG quality (default: 90)")
    dec.add_argument("--model", default=None, help="model to decode with (default: the one the archive names)")
    _add_compute_arguments(dec)
    dec.set_defaults(run=run_decode_job_command)


def _compute(args: argparse.Namespace):
    """Resources of the codec actors. On a local CPU-only Ray the default is one single-threaded
    actor per core: a multi-threaded torch shares its cores badly with the reading tasks."""
    import os

    from pipeline.config import ComputeConfig

    actors = args.actors
    if actors is None and args.address is None and not args.gpus_per_actor:
        # leave room for the reading tasks when the local Ray's CPUs are given
        reading = ComputeConfig().io_cpus
        actors = int((args.num_cpus - reading) // args.cpus_per_actor) if args.num_cpus else os.cpu_count() or 1
    actors = max(1, actors or 1)
    return ComputeConfig(actors=actors, gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
                         threads_per_actor=args.threads_per_actor, batch_size=args.batch_size, device=args.device)


def _read_keys(uri: str) -> frozenset[str]:
    with fsspec.open(uri, "rt", encoding="utf-8") as f:
        return frozenset(line.strip() for line in f if line.strip())


def run_encode_job_command(args: argparse.Namespace) -> int:
    from pipeline import ray_runner
    from pipeline.config import EncodeJobConfig
    from pipeline.encode_job import run_encode_job

    started = time.monotonic()
    config = EncodeJobConfig(input=args.input, output=args.output, model=args.model, input_format=args.input_format,
                             shard_size=args.shard_size, limit=args.limit, max_pixels=args.max_pixels,
                             image_column=args.image_column, key_column=args.key_column,
                             colour_correction=args.colour_correction, compute=_compute(args))
    cpus = args.num_cpus or ray_runner.embedded_cpus(config.compute)
    with ray_runner.ray_session(args.address, num_cpus=cpus, temp_dir=args.ray_temp_dir):
        run_encode_job(config, ray_runner.stream_encode, started_at=started)
    return 0


def run_decode_job_command(args: argparse.Namespace) -> int:
    from pipeline import ray_runner
    from pipeline.config import DecodeJobConfig
    from pipeline.decode_job import run_decode_job

    started = time.monotonic()
    config = DecodeJobConfig(input=args.input, output=args.output, image_format=args.image_format, model=args.model,
                             keys=_read_keys(args.keys) if args.keys else None, where=args.where,
                             quality=args.quality, compute=_compute(args))
    cpus = args.num_cpus or ray_runner.embedded_cpus(config.compute)
    with ray_runner.ray_session(args.address, num_cpus=cpus, temp_dir=args.ray_temp_dir):
        run_decode_job(config, ray_runner.stream_decode, started_at=started)
    return 0
