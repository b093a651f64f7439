"""``sprdiff eval``: rate–distortion–perception reports (see docs/evaluation.md).

    sprdiff eval --model tiny --input photos/ --output runs/tiny [--baselines webp,avif,jpeg]
                 [--rate R | --rates 0,1,2 | --rates all]
                 [--lpips-weights P] [--dists-weights P] [--fid-weights P] [--patch 256] [--limit N]
    sprdiff eval --compare runs/r0 runs/r1 runs/r2 --output runs/all
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from fractions import Fraction

from sprdiff.cli import add_model_arguments, default_device
from sprdiff.evaluation.baselines import CODECS, DEFAULT_BASELINES, DEFAULT_SCALES
from sprdiff.images import DEFAULT_MAX_PIXELS


def _baselines(text: str) -> tuple[str, ...]:
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    if names == ("none",):
        return ()
    unknown = [n for n in names if n not in CODECS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown baseline {', '.join(unknown)}; choose from "
                                         f"{', '.join(CODECS)} (or 'none')")
    return names


def _scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(Fraction(s.strip())) for s in text.split(",") if s.strip())
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"scales are fractions like 1,1/2,0.25, got {text!r}") from None
    if not scales or any(not 0 < s <= 1 for s in scales):
        raise argparse.ArgumentTypeError(f"scales must be in (0, 1], got {text!r}")
    return scales


def _rates(text: str) -> tuple[int, ...] | str:
    """``0,1,2`` -> (0, 1, 2); ``all`` is kept as is (every rate of the model, known once it is loaded)."""
    if text.strip().lower() == "all":
        return "all"
    try:
        rates = tuple(int(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"rates are rate ids like 0,1,2 (or 'all'), got {text!r}") from None
    if not rates:
        raise argparse.ArgumentTypeError(f"no rate ids in {text!r}")
    return rates


def add_eval_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="rate–distortion–perception report: our codec vs classical codecs "
                                           "at matched bytes",
                              description="Encode and decode every image through the real byte format, measure "
                                          "bpp from the bytes, PSNR, MS-SSIM, HaarPSI, GMSD (and LPIPS, DISTS, "
                                          "FID/KID when their weights are given), run JPEG/WebP/AVIF at no more "
                                          "bytes than our record, and write per_image.csv, summary.json, rd.png "
                                          "and report.html. With --compare, combine earlier runs into one plot.")
    add_model_arguments(p)
    p.add_argument("--input", help="image directory, file glob or fsspec URI prefix (s3://bucket/photos/)")
    p.add_argument("--output", required=True, help="output directory for the report files")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--rate", type=int, default=None, metavar="ID",
                       help="the model's rate point to evaluate (default: the model's default rate)")
    which.add_argument("--rates", type=_rates, default=None, metavar="IDS",
                       help="evaluate each of these rate points (e.g. 0,1,2, or 'all'): RD curves in rd.png and "
                            "report.html, per-rate sections and the BD-rate against each baseline in summary.json")
    p.add_argument("--baselines", type=_baselines, default=DEFAULT_BASELINES,
                   help=f"comma-separated classical codecs, or 'none' (default: {','.join(DEFAULT_BASELINES)})")
    p.add_argument("--scales", type=_scales, default=DEFAULT_SCALES,
                   help="downscale factors the baselines search (default: 1,3/4,1/2,1/3,1/4,1/6,1/8,1/12,1/16)")
    p.add_argument("--lpips-weights", help="local LPIPS-AlexNet state dict, or torchvision's AlexNet weights")
    p.add_argument("--dists-weights", help="local DISTS state dict, or torchvision's VGG16 weights")
    p.add_argument("--fid-weights", help="local torch-fidelity Inception-v3 weights "
                                         "(weights-inception-2015-12-05-6726825d.pth) for FID/KID")
    p.add_argument("--patch", type=int, default=256, help="FID/KID patch size (default: 256, the paper's)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images (sorted by name)")
    p.add_argument("--crops", type=int, default=4, help="images shown side by side in report.html (default: 4)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"skip larger images (default: {DEFAULT_MAX_PIXELS:,})")
    p.add_argument("--compare", nargs="+", metavar="RUN_DIR",
                   help="combine the summary.json of these earlier runs into one plot (no model needed)")
    p.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    if args.compare:
        return _run_compare(args)
    if not args.input:
        print("sprdiff eval: error: --input is required (or use --compare RUN_DIR...)", file=sys.stderr)
        return 2
    if args.patch < 1 or (args.limit is not None and args.limit < 1) or args.crops < 0:
        print("sprdiff eval: error: --patch and --limit must be positive, --crops >= 0", file=sys.stderr)
        return 2
    from sprdiff.evaluation.run import EvalOptions
    from sprdiff.evaluation.workflow import run_evaluation
    from sprdiff.model import SPRDiff

    device = args.device or default_device()
    start = time.perf_counter()
    model = SPRDiff.from_pretrained(args.model, device=device)
    if args.rates == "all":
        rates = model.rate_ids
    else:
        rates = args.rates or (() if args.rate is None else (args.rate,))
    options = EvalOptions(baselines=args.baselines, scales=args.scales, max_pixels=args.max_pixels,
                          crops=args.crops, rates=tuple(rates))
    summary, paths = run_evaluation(model, model_name=args.model, input_uri=args.input, output_dir=args.output,
                                    options=options, lpips_weights=args.lpips_weights,
                                    dists_weights=args.dists_weights, fid_weights=args.fid_weights,
                                    patch=args.patch, limit=args.limit, device=device, log=print)
    print(format_summary(summary))
    print(f"wrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - start:.1f} s")
    if summary["n_failed"]:
        print(f"sprdiff eval: {summary['n_failed']} of {summary['n_images']} image(s) could not be evaluated "
              f"(see failures in {paths['summary.json']})", file=sys.stderr)
    return 0 if summary["n_evaluated"] else 1


def format_summary(summary: dict) -> str:
    """A plain-text table of the means, one line per method (and rate, with several), then the BD-rates."""
    from sprdiff.evaluation.run import OURS
    from sprdiff.evaluation.summary import rate_sections

    sections = rate_sections(summary)
    several = len(sections) > 1
    names = [m for m, s in summary["metrics"].items() if s["status"] == "computed"]
    header = (f"{'rate':>4} " if several else "") + f"{'method':<8} {'ok':>7} {'bpp':>8} {'bytes':>9} " + \
        " ".join(f"{n:>8}" for n in names)
    has_fid = any("fid" in e for section in sections.values() for e in section["methods"].values())
    if has_fid:
        header += f" {'FID':>8} {'KID':>8}"
    lines = [header]
    for rate, section in sections.items():
        for method, e in section["methods"].items():
            cells = [f"{rate:>4}"] if several else []
            cells += [f"{method:<8}", f"{e['n_ok']:>3}/{e['n_rows']:<3}", _num(e["bpp_mean"], 8, 4),
                      f"{e['num_bytes_total']:>9}"]
            cells += [_num(e["metrics"][n]["mean"] if n in e["metrics"] else None, 8, 4) for n in names]
            if has_fid:
                fid = e.get("fid", {})
                cells += [_num(fid.get("fid"), 8, 2), _num(fid.get("kid_mean"), 8, 4)]
            lines.append(" ".join(cells))
    for baseline, values in summary.get("bd_rate", {}).items():
        reasons = summary["bd_rate_reasons"].get(baseline, {})
        cells = [f"{metric} {value:+.1f} %" if value is not None else f"{metric} - ({reasons[metric]})"
                 for metric, value in values.items()]
        lines.append(f"BD-rate of {OURS} against {baseline}: " + ", ".join(cells))
    return "\n".join(lines)


def _num(value, width: int, digits: int) -> str:
    if value is None or value != value:  # None or NaN
        return f"{'-':>{width}}"
    return f"{value:>{width}.{digits}f}"


def _run_compare(args: argparse.Namespace) -> int:
    from sprdiff.evaluation.compare import write_comparison
    from sprdiff.evaluation.run import OURS

    paths = write_comparison(args.compare, args.output)
    combined = json.loads(paths["compare.json"].read_text())
    for run in combined["runs"]:
        ours = run["points"].get(OURS, {})
        print(f"{run['run']}: {run['model_id']} rate {run['rate_id']}: bpp {ours.get('bpp')}, "
              f"PSNR {ours.get('psnr')}, MS-SSIM {ours.get('ms_ssim')}")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
