"""``sprdiff encode-job``, ``sprdiff decode-job`` (the Ray Data batch jobs) and ``sprdiff get`` (one key, no Ray).

With no ``--address`` a local Ray starts inside the command and stops after it; with one, the
same job runs on that cluster. Inputs and outputs are local paths or any fsspec URI (``s3://``
takes its endpoint and credentials from the standard AWS variables).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from functools import partial

import fsspec

from sprdiff.images import DEFAULT_MAX_PIXELS

DEFAULT_ROWS_PER_PART = 16_384  # pipeline.config.DEFAULT_ROWS_PER_PART (not imported: the parser stays light)


def actor_pool(text: str) -> tuple[int, int | None]:
    """``--actors N`` (a fixed pool) or ``MIN:MAX`` (Ray Data's autoscaling pool)."""
    match = re.fullmatch(r"(\d+)(?::(\d+))?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"--actors takes N or MIN:MAX, got {text!r}")
    fewest, most = int(match.group(1)), match.group(2)
    if fewest < 1 or (most is not None and int(most) < fewest):
        raise argparse.ArgumentTypeError(f"--actors {text}: need 1 <= MIN <= MAX")
    return fewest, int(most) if most is not None else None


def _add_compute_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where it runs")
    group.add_argument("--address", default=None,
                       help="Ray cluster address (default: start a local Ray inside this command)")
    group.add_argument("--actors", type=actor_pool, default=None, metavar="N|MIN:MAX",
                       help="codec actors, one model load each: N, or MIN:MAX for a pool that grows while work "
                            "waits (on a cluster that can scale, the job starts with what there is and waits for "
                            "MIN). Default: one per core for a local Ray on CPU, else 1")
    group.add_argument("--io-tasks", type=int, default=None,
                       help="most reading (and image-writing) tasks at once (default: one per codec actor)")
    group.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per codec actor (default: 0)")
    group.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs reserved per codec actor (default: 1)")
    group.add_argument("--threads-per-actor", type=int, default=None,
                       help="torch threads per codec actor (default: one per reserved CPU)")
    group.add_argument("--batch-size", type=int, default=None,
                       help="images of one padded size per codec call, grouped within a part in a fixed order "
                            "(default: 1 on CPU, 16 with GPUs); see the determinism contract in docs/codec.md")
    group.add_argument("--device", default=None, help="torch device of the actors (default: cuda with GPUs, else cpu)")
    group.add_argument("--precision", choices=("fp32", "bf16"), default=None,  # sprdiff.precision.PRECISIONS
                       help="of the neural stages (the entropy path is always exact): default bf16 on a CUDA "
                            "device that runs it, else fp32")
    group.add_argument("--tile-size", type=int, default=None, metavar="PX",
                       help="images with a padded side above PX run on overlapping tiles, bounding memory "
                            "(a multiple of 64; default: 2048, sprdiff.tiling; 0: never tile). Any tile size "
                            "decodes any record")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the UNet and VAE decoder in each actor (long GPU jobs)")
    group.add_argument("--codec-service", default=None, metavar="NAME",
                       help="run the codec on the warm servers of this codec service (`sprdiff codec-service "
                            "start`) instead of starting actors for this job: no import or model load per job. "
                            "Needs --address; the actor options above then do not apply")
    group.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: this machine's)")
    group.add_argument("--ray-temp-dir", default=None, help="temp dir of the local Ray (default: a new one in /tmp)")


def add_batch_commands(subparsers: argparse._SubParsersAction) -> None:
    from sprdiff.cli import add_rate_arguments  # jobs.cli has imported sprdiff.cli already

    enc = subparsers.add_parser("encode-job", help="archive a corpus of images into Parquet tables of bitstreams",
                                description="Encode image files, WebDataset tar shards or Parquet image tables "
                                            "under --input (or the objects an --input-list names) into a Parquet "
                                            "archive under --output. The first run stores its plan under "
                                            "OUTPUT/_plan/; rerunning the same command finishes an interrupted "
                                            "run without listing the input again.")
    source = enc.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="input prefix or file (local path, file://, s3://, ...)")
    source.add_argument("--input-list", help="a manifest of objects instead of a prefix: Parquet, CSV or JSON-lines "
                                             "with a uri column (optional key, size), or an S3 Inventory (CSV or "
                                             "Parquet with bucket/key/size, or its manifest.json)")
    enc.add_argument("--output", required=True, help="archive prefix (local path, file://, s3://, ...)")
    enc.add_argument("--model", default="demo", help="preset or shipped model, model directory or URI (default: demo)")
    enc.add_argument("--model-store", default=None, metavar="URI",
                     help="model store to keep the exact weights in, by fingerprint, shared by many archives "
                          "(default: the archive's own OUTPUT/_models/)")
    enc.add_argument("--input-format", choices=("auto", "images", "wds", "parquet"), default="auto",
                     help="auto: .tar files -> wds, .parquet files -> parquet, anything else -> image files")
    enc.add_argument("--image-column", default=None,
                     help="Parquet column (or tar member suffix) with the image bytes (default: guessed)")
    enc.add_argument("--key-column", default=None, help="Parquet column with per-row keys (default: key/id/name "
                                                        "if present, else the row number)")
    enc.add_argument("--rows-per-part", "--shard-size", dest="rows_per_part", type=int, default=DEFAULT_ROWS_PER_PART,
                     help=f"inputs per archive part, the unit of resume (default: {DEFAULT_ROWS_PER_PART:,}, about "
                          f"25 MB of 512x512 records; --shard-size is the old name)")
    enc.add_argument("--limit", type=int, default=None,
                     help="only the first N inputs in sorted order (image files, Parquet rows, or tar shards)")
    enc.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                     help=f"larger images become too_large rows (default: {DEFAULT_MAX_PIXELS:,})")
    enc.add_argument("--no-colour-correction", dest="colour_correction", action="store_false",
                     help="do not decode each image at the encoder to fit and send its colour map and offset "
                          "grid: about half the encode time, lower PSNR, version-1 records")
    add_rate_arguments(enc)  # --rate / --target-bpp, as sprdiff encode has them; each row records its rate_id
    enc.add_argument("--plan-only", action="store_true",
                     help="write the plan under OUTPUT/_plan/, print its objects, parts and digest, and exit "
                          "(no Ray)")
    enc.add_argument("--retry-errors", action="store_true",
                     help="re-read the archive's read_error rows (a source that vanished or could not be read) and "
                          "rewrite, atomically, the parts that hold them")
    enc.add_argument("--list-tasks", type=int, default=0,
                     help="list the input's first-level folders in this many parallel Ray tasks (default: 0, the "
                          "driver lists page by page)")
    _add_compute_arguments(enc)
    enc.set_defaults(run=run_encode_job_command)

    dec = subparsers.add_parser("decode-job", help="decode a Parquet archive back into image files",
                                description="Decode the archive under --input into image files named by key "
                                            "(or WebDataset shards) under --output, with a manifest.")
    dec.add_argument("--input", required=True, help="archive prefix or Parquet file")
    dec.add_argument("--output", required=True, help="output prefix (local path, file://, s3://, ...)")
    dec.add_argument("--format", dest="image_format", choices=("png", "webp", "jpeg", "wds"), default="png",
                     help="image files, or WebDataset tar shards of PNGs (default: png)")
    dec.add_argument("--keys", default=None, metavar="FILE_OR_LIST",
                     help="the keys to decode: a file or URI with one per line, or a comma-separated list; only the "
                          "parts and row groups that hold them are read")
    dec.add_argument("--where", default=None,
                     help="a filter over the archive's columns (docs/archive-format.md): comparisons (== != < <= > "
                          ">=), in (...), is [not] null, and/or/not, e.g. \"status == 'ok' and width >= 256\"")
    dec.add_argument("--quality", type=int, default=90, help="WebP/JPEG quality (default: 90)")
    dec.add_argument("--model", default=None,
                     help="decode every record with this model, checked against each record's fingerprint "
                          "(default: each record's own stored weights, found by its fingerprint)")
    dec.add_argument("--model-store", action="append", default=[], metavar="URI",
                     help="a model store (or model directory) to look in first for each record's weights, besides "
                          "the archive's own _models/ and the store its parts name; repeatable")
    _add_compute_arguments(dec)
    dec.set_defaults(run=run_decode_job_command)

    get = subparsers.add_parser("get", help="decode one key of an archive, without Ray",
                                description="Find KEY in the archive (reading only the part and row group that "
                                            "hold it) and decode it to a PNG file with the weights its record's "
                                            "fingerprint names (the archive's _models/ or the store it names).")
    get.add_argument("archive", help="archive prefix (local path, file://, s3://, ...)")
    get.add_argument("key", help="the row's key")
    get.add_argument("-o", "--output", default=None, help="PNG file to write (default: the key's last part + .png)")
    get.add_argument("--model", default=None,
                     help="decode with this model, checked against the record's fingerprint (default: the record's "
                          "own stored weights)")
    get.add_argument("--model-store", action="append", default=[], metavar="URI",
                     help="another model store (or model directory) to look in for the weights; repeatable")
    get.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    get.set_defaults(run=run_get_command)


def _compute(args: argparse.Namespace):
    """Resources of the codec actors. On a local CPU-only Ray the default is one single-threaded
    actor per core: a multi-threaded torch shares its cores badly with the reading tasks."""
    from pipeline.config import ComputeConfig

    if args.codec_service:
        _check_service_flags(args)
    fewest, most = args.actors or (None, None)
    if fewest is None and args.address is None and not args.gpus_per_actor:
        # leave room for the reading tasks when the local Ray's CPUs are given
        reading = ComputeConfig().io_cpus
        fewest = int((args.num_cpus - reading) // args.cpus_per_actor) if args.num_cpus else os.cpu_count() or 1
    fewest = max(1, fewest or 1)
    return ComputeConfig(actors=fewest, max_actors=most, gpus_per_actor=args.gpus_per_actor,
                         cpus_per_actor=args.cpus_per_actor, threads_per_actor=args.threads_per_actor,
                         batch_size=args.batch_size, device=args.device, io_tasks=args.io_tasks,
                         precision=args.precision, compile=args.compile, service=args.codec_service,
                         **({"tile_size": args.tile_size or None} if args.tile_size is not None else {}))


def _check_service_flags(args: argparse.Namespace) -> None:
    """A job on a codec service starts no actors: refuse the options that would size or place them."""
    if args.address is None:
        raise ValueError("--codec-service needs --address: a codec service runs on a long-running Ray cluster, "
                         "and the local Ray a command starts has none")
    given = [flag for flag, value in (("--actors", args.actors), ("--gpus-per-actor", args.gpus_per_actor),
                                      ("--cpus-per-actor", args.cpus_per_actor != 1.0),
                                      ("--threads-per-actor", args.threads_per_actor), ("--device", args.device),
                                      ("--compile", args.compile)) if value]
    if given:
        raise ValueError(f"{', '.join(given)} do not apply with --codec-service: the service's servers were "
                         f"started with their own (sprdiff codec-service status shows them)")


def read_keys(value: str) -> frozenset[str]:
    """``--keys``: a file or URI with one key per line, else a comma-separated list of keys."""
    try:
        fs, path = fsspec.core.url_to_fs(value)
        is_file = fs.isfile(path)
    except (OSError, ValueError):
        is_file = False
    if is_file:
        with fsspec.open(value, "rt", encoding="utf-8") as f:
            return frozenset(line.strip() for line in f if line.strip())
    return frozenset(k.strip() for k in value.split(",") if k.strip())


def run_encode_job_command(args: argparse.Namespace) -> int:
    from pipeline import ray_runner
    from pipeline.config import EncodeJobConfig
    from pipeline.encode_job import check_rate_choice, run_encode_job

    started = time.monotonic()
    config = EncodeJobConfig(input=args.input, input_list=args.input_list, output=args.output, model=args.model,
                             input_format=args.input_format, rows_per_part=args.rows_per_part, limit=args.limit,
                             max_pixels=args.max_pixels, image_column=args.image_column, key_column=args.key_column,
                             colour_correction=args.colour_correction, rate=args.rate, target_bpp=args.target_bpp,
                             retry_errors=args.retry_errors, model_store=args.model_store, compute=_compute(args))
    check_rate_choice(config)  # before any listing or Ray work
    if args.plan_only:
        from pipeline.encode_job import open_plan

        plan, job = open_plan(config)
        print(f"plan: {plan.info.items} objects, {plan.info.shards} parts of at most {config.rows_per_part} rows, "
              f"kind {plan.kind}, digest {plan.info.digest} (under {plan.location.uri()})")
        return 0
    cpus = args.num_cpus or ray_runner.embedded_cpus(config.compute)
    with ray_runner.ray_session(args.address, num_cpus=cpus, temp_dir=args.ray_temp_dir):
        lister = partial(ray_runner.list_in_tasks, tasks=args.list_tasks) if args.list_tasks > 0 else None
        run_encode_job(config, ray_runner.stream_encode, started_at=started, lister=lister)
    return 0


def run_decode_job_command(args: argparse.Namespace) -> int:
    from pipeline import ray_runner
    from pipeline.config import DecodeJobConfig
    from pipeline.decode_job import run_decode_job

    started = time.monotonic()
    config = DecodeJobConfig(input=args.input, output=args.output, image_format=args.image_format, model=args.model,
                             keys=read_keys(args.keys) if args.keys else None, where=args.where,
                             quality=args.quality, model_stores=tuple(args.model_store), compute=_compute(args))
    cpus = args.num_cpus or ray_runner.embedded_cpus(config.compute)
    with ray_runner.ray_session(args.address, num_cpus=cpus, temp_dir=args.ray_temp_dir):
        run_decode_job(config, ray_runner.stream_decode, started_at=started)
    return 0


def run_get_command(args: argparse.Namespace) -> int:
    from pipeline.decode_stages import FALLBACK_PLACES, part_model_places
    from pipeline.keys import safe_relative_path
    from pipeline.lookup import ArchiveIndex, read_part
    from pipeline.schema import RECORD_COLUMN
    from sprdiff import SPRDiff
    from sprdiff.bitstream import read_header
    from sprdiff.images import encode_png
    from sprdiff.model_store import resolve_model

    index = ArchiveIndex.open(args.archive)
    rows = []
    for part, held in index.select([args.key]):
        table = read_part(part.uri, keys=held, columns=["key", "status", "error", RECORD_COLUMN, "model_fingerprint"])
        rows += [(part, table.schema.metadata, r) for r in table.to_pylist()]
    if not rows:
        print(f"sprdiff: error: no key {args.key!r} in {args.archive}", file=sys.stderr)
        return 1
    if len(rows) > 1:
        raise ValueError(f"key {args.key!r} is in {len(rows)} rows of {args.archive} "
                         f"({', '.join(p.name for p, _, _ in rows)}): the archive is damaged, run `sprdiff verify`")
    part, metadata, row = rows[0]
    if not row[RECORD_COLUMN]:
        print(f"sprdiff: error: {args.key!r} has no record: its status is {row['status']} ({row['error']})",
              file=sys.stderr)
        return 1
    fingerprint = row.get("model_fingerprint") or ""
    if args.model:
        model = SPRDiff.from_pretrained(args.model, device=args.device)
        if fingerprint and model.fingerprint != fingerprint:
            raise ValueError(f"{args.key!r} was written by model {fingerprint}, but --model {args.model} is "
                             f"{model.fingerprint}: drop --model to use the record's own stored weights")
    else:
        places = [*args.model_store, *part_model_places(part.uri, metadata), *FALLBACK_PLACES]
        model = resolve_model(fingerprint, places, device=args.device)
    [pixels] = model.decompress([row[RECORD_COLUMN]], batch_size=1)
    target = args.output or safe_relative_path(args.key.rsplit("/", 1)[-1], ".png")
    with fsspec.open(target, "wb", auto_mkdir=True) as f:
        f.write(encode_png(pixels))
    rate = read_header(row[RECORD_COLUMN])[0].rate_id  # the header's: archives of layout 2 have no rate_id column
    print(f"{args.key} -> {target}: {pixels.shape[1]}x{pixels.shape[0]}, a record of {len(row[RECORD_COLUMN])} bytes "
          f"at rate {rate} from {part.name}")
    return 0
