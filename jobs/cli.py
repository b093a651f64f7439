"""The ``sprdiff`` console script: codec commands (sprdiff.cli) plus the batch jobs (pipeline)."""

from __future__ import annotations

import argparse
import sys

from sprdiff.cli import add_codec_commands
from sprdiff.errors import SPRDiffError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sprdiff", description="SPRDiff ultra-low-bitrate image codec")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_codec_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (SPRDiffError, FileNotFoundError, ValueError) as e:
        print(f"sprdiff: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sprdiff: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
