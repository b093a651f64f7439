"""``sprdiff verify``: check a stored archive end to end, without Ray (``pipeline.verify``)."""

from __future__ import annotations

import argparse
import sys


def add_archive_commands(subparsers: argparse._SubParsersAction) -> None:
    ver = subparsers.add_parser("verify", help="check an archive end to end: parts, records, stored weights",
                                description="Check every part of an archive (its bytes against the digest written "
                                            "at commit, footer, row count and key range), every record (header, "
                                            "keyed CRC) and that every model fingerprint has stored weights; "
                                            "decode a sample. Prints a table of findings; exits 1 on any damage.")
    ver.add_argument("archive", help="archive prefix (local path, file://, s3://, ...)")
    how = ver.add_mutually_exclusive_group()
    how.add_argument("--decode-sample", type=int, default=8, metavar="N",
                     help="decode N records chosen at random (default: 8; 0 decodes none)")
    how.add_argument("--full", action="store_true", help="decode every record")
    ver.add_argument("--model-store", action="append", default=[], metavar="URI",
                     help="another model store to look in for the weights; repeatable")
    ver.add_argument("--seed", type=int, default=0, help="which records the sample takes (default: 0)")
    ver.add_argument("--device", default=None, help="torch device for decoding (default: cuda if available, else cpu)")
    ver.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    from pipeline.verify import format_report, verify_archive
    from sprdiff.cli import default_device

    if args.decode_sample < 0:
        raise ValueError(f"--decode-sample must be >= 0, got {args.decode_sample}")
    report = verify_archive(args.archive, decode_sample=args.decode_sample, full=args.full,
                            model_stores=tuple(args.model_store), device=args.device or default_device(),
                            seed=args.seed, log=lambda line: print(line, file=sys.stderr))
    print(format_report(report))
    return 1 if report.damaged else 0
