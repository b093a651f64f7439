"""Single-file commands: ``sprdiff encode``, ``sprdiff decode``, ``sprdiff info``.

The console script itself lives in ``jobs.cli`` (it adds the batch jobs); these
functions register the codec's own subcommands and run them without Ray. Building the parser
imports no torch: every ``sprdiff`` command, the batch jobs' drivers among them, starts in a
fraction of a second and loads the model stack only where it runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import fsspec

from sprdiff import bitstream
from sprdiff.errors import SPRDiffError
from sprdiff.images import DEFAULT_MAX_PIXELS, encode_png, load_image
from sprdiff.presets import SHIPPED_MODELS
from sprdiff.run_settings import DEFAULT_TILE_SIZE, PRECISIONS, check_tile_size

DEFAULT_MODEL = "demo"  # the shipped trained model (sprdiff/pretrained/demo)
RECORD_SUFFIX = ".sprd"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_model_arguments(parser: argparse.ArgumentParser, *, default: str | None = DEFAULT_MODEL) -> None:
    if default is None:
        parser.add_argument("--model", default=None,
                            help="decode every record with this model (preset or shipped name, directory or URI); "
                                 "default: each record's own weights, found by its fingerprint in --model-store "
                                 "and the shipped models")
        parser.add_argument("--model-store", action="append", default=[], metavar="URI",
                            help="a model store (sprdiff.model_store: <URI>/<fingerprint>/) or model directory to "
                                 "look in; repeatable")
    else:
        parser.add_argument("--model", default=default,
                            help=f"preset or shipped model (demo, tiny, sd-turbo), model directory or URI "
                                 f"(default: {default})")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="of the neural stages (the entropy path is always exact): default bf16 on a CUDA device "
                             "that runs it, else fp32")
    parser.add_argument("--tile-size", type=int, default=DEFAULT_TILE_SIZE, metavar="PX",
                        help=f"images with a padded side above PX run on overlapping tiles, bounding memory (a "
                             f"multiple of 64; 0: never; default {DEFAULT_TILE_SIZE}, which keeps a 16 MP photo "
                             f"under 4 GiB with demo, docs/performance.md)")


def runtime_settings(args: argparse.Namespace, device) -> dict:
    """``precision`` and ``tile_size`` for compress/decompress, checked before any image is read."""
    from sprdiff.precision import check_precision, default_precision

    precision = check_precision(args.precision or default_precision(device), device)
    return {"precision": precision, "tile_size": check_tile_size(args.tile_size)}


def add_rate_arguments(parser: argparse.ArgumentParser) -> None:
    """``--rate`` / ``--target-bpp``: which of the model's rate points codes each image (sprdiff.rates)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--rate", type=int, default=None, metavar="ID",
                       help="the model's rate point to code at (demo: 0, 1, 2 from fewest to most bytes; default: "
                            "the model's default rate; `sprdiff info --model M` lists them)")
    group.add_argument("--target-bpp", type=float, default=None, metavar="BPP",
                       help="a budget in bits per pixel: each image gets the rate whose record is the largest not "
                            "above it, or the rate with the fewest bytes and a warning when none fits")


def rate_settings(args: argparse.Namespace, config) -> dict:
    """``rate`` and ``target_bpp`` for compress, checked against the model before any image is read."""
    from sprdiff.rate_choice import check_rate, check_target_bpp

    if args.target_bpp is not None:
        return {"rate": None, "target_bpp": check_target_bpp(config, args.target_bpp)}
    return {"rate": check_rate(config, args.rate), "target_bpp": None}


def add_codec_commands(subparsers: argparse._SubParsersAction) -> None:
    enc = subparsers.add_parser("encode", help="encode image files to .sprd records")
    enc.add_argument("images", nargs="+", help="image files (local paths or fsspec URIs)")
    enc.add_argument("-o", "--output", required=True, help="output directory")
    enc.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                     help=f"reject larger images (default: {DEFAULT_MAX_PIXELS:,})")
    enc.add_argument("--no-colour-correction", dest="colour_correction", action="store_false",
                     help="skip the colour map and offset grid (sprdiff.colour, sprdiff.offset_grid): "
                          "about half the encode time, lower PSNR")
    add_model_arguments(enc)
    add_rate_arguments(enc)
    add_runtime_arguments(enc)
    enc.set_defaults(run=run_encode)

    dec = subparsers.add_parser("decode", help="decode .sprd records to PNG files")
    dec.add_argument("records", nargs="+", help=".sprd files")
    dec.add_argument("-o", "--output", required=True, help="output directory")
    add_model_arguments(dec, default=None)
    add_runtime_arguments(dec)
    dec.set_defaults(run=run_decode)

    info = subparsers.add_parser("info", help="print a record's header as JSON")
    info.add_argument("records", nargs="+", help=".sprd files")
    info.add_argument("--model", default=None, help="also verify the record against this model and list its rates")
    info.add_argument("--device", default=None, help=argparse.SUPPRESS)
    info.set_defaults(run=run_info)


def _load_model(args: argparse.Namespace):
    from sprdiff.model import SPRDiff

    return SPRDiff.from_pretrained(args.model, device=args.device or default_device())


def _unique_stems(paths: list[str]) -> list[str]:
    stems = [Path(p.rstrip("/")).stem for p in paths]
    seen: dict[str, str] = {}
    for stem, path in zip(stems, paths):
        if stem in seen:
            raise SPRDiffError(f"{seen[stem]} and {path} would both be written as {stem}: rename one", status="usage")
        seen[stem] = path
    return stems


def _each(items: list[str], work: Callable[[str, str], str], stems: list[str]) -> int:
    """Run ``work`` per file; report failures one line each and keep going. Returns the exit status."""
    failures = 0
    for item, stem in zip(items, stems):
        try:
            print(work(item, stem))
        except (SPRDiffError, OSError) as e:
            failures += 1
            print(f"sprdiff: error: {item}: {e}", file=sys.stderr)
    return 1 if failures else 0


def run_encode(args: argparse.Namespace) -> int:
    from sprdiff.rate_choice import budget_warning

    stems = _unique_stems(args.images)
    if args.rate is not None or args.target_bpp is not None:
        from sprdiff.presets import read_config

        rate_settings(args, read_config(args.model))  # refused from the config, before the model is built
    model = _load_model(args)
    runtime = runtime_settings(args, model.device)
    rate = rate_settings(args, model.config)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    def encode_one(path: str, stem: str) -> str:
        with fsspec.open(path, "rb") as f:
            pixels = load_image(f.read(), max_pixels=args.max_pixels)
        [record] = model.compress([pixels], colour_correction=args.colour_correction, **runtime, **rate)
        (out / f"{stem}{RECORD_SUFFIX}").write_bytes(record)
        height, width = pixels.shape[:2]
        bpp = 8 * len(record) / (width * height)
        rate_id = bitstream.read_header(record)[0].rate_id
        line = f"{path} -> {out / (stem + RECORD_SUFFIX)}: {width}x{height}, rate {rate_id}, {len(record)} bytes, " \
               f"{bpp:.4f} bpp"
        warning = budget_warning(len(record), width, height, rate_id, rate["target_bpp"])
        return line if warning is None else f"{line} (warning: {warning})"

    return _each(args.images, encode_one, stems)


class RecordModels:
    """The weights for each record of ``sprdiff decode``: the one ``--model``, or else found from the
    record itself among the models in ``--model-store`` places and the shipped ones."""

    FALLBACK = (*SHIPPED_MODELS, "tiny")

    def __init__(self, args: argparse.Namespace):
        from sprdiff.model_store import ModelCache

        self.device = args.device or default_device()
        self.model = _load_model(args) if args.model else None
        self.places = [*args.model_store, *self.FALLBACK]
        self.cache = ModelCache(self.places, device=self.device)
        self._candidates: list[str] | None = None

    def candidates(self) -> list[str]:
        """Every fingerprint the places hold (stores listed; directories and names fingerprinted)."""
        if self._candidates is None:
            from sprdiff.model_store import place_fingerprints

            self._candidates = list(dict.fromkeys(fp for place in self.places for fp in place_fingerprints(place)))
        return self._candidates

    def for_record(self, record: bytes):
        if self.model is not None:
            return self.model  # decompress refuses a record of other weights (model_mismatch)
        from sprdiff.model_store import record_fingerprint

        fingerprint = record_fingerprint(record, self.candidates())
        if fingerprint is None:
            tag = bitstream.read_header(record)[0].fingerprint_tag
            raise SPRDiffError(f"no model in {', '.join(self.places)} wrote this record (its fingerprint starts with "
                               f"{tag:02x}): pass the store or directory that holds its weights with --model-store",
                               status="model_not_found")
        return self.cache.get(fingerprint)


def run_decode(args: argparse.Namespace) -> int:
    stems = _unique_stems(args.records)
    models = RecordModels(args)
    runtime = runtime_settings(args, args.device or default_device())
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    def decode_one(path: str, stem: str) -> str:
        with fsspec.open(path, "rb") as f:
            record = f.read()
        [pixels] = models.for_record(record).decompress([record], **runtime)
        (out / f"{stem}.png").write_bytes(encode_png(pixels))
        return f"{path} -> {out / (stem + '.png')}: {pixels.shape[1]}x{pixels.shape[0]}"

    return _each(args.records, decode_one, stems)


def record_info(record: bytes) -> dict:
    header, _ = bitstream.read_header(record)
    return {
        "format_version": header.version, "width": header.width, "height": header.height,
        "rate_id": header.rate_id, "timestep": header.timestep, "padding": header.padding,
        "fingerprint_tag": f"{header.fingerprint_tag:02x}", "colour_map": header.colour_map is not None,
        "offset_grid": None if header.offset_grid is None else f"{header.offset_grid.rows}x{header.offset_grid.cols}",
        "num_bytes": len(record),
        "bpp": 8 * len(record) / header.num_pixels,
        "container_bytes": len(record) - sum(header.string_lengths),
    }


def run_info(args: argparse.Namespace) -> int:
    model = _load_model(args) if args.model else None

    def info_one(path: str, _stem: str) -> str:
        with fsspec.open(path, "rb") as f:
            record = f.read()
        info = record_info(record)
        if model is not None:
            model.parse(record)  # raises on any mismatch
            info.update(verified=True, model_id=model.model_id, model_fingerprint=model.fingerprint,
                        model_rates=list(model.rate_ids), model_default_rate=model.config.rate_id)
        return json.dumps({"file": path, **info})

    return _each(args.records, info_one, [str(i) for i in range(len(args.records))])
