"""The ``sprdiff`` console script: codec commands (sprdiff.cli) plus the batch jobs (pipeline)."""

from __future__ import annotations

import argparse
import sys
import warnings

# Library deprecation chatter (torch.jit in CompressAI, ...) is not for the CLI's users:
# errors must stay one line. Filter before any command imports the model stack (each does so lazily).
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)

from sprdiff.cli import add_codec_commands  # noqa: E402
from sprdiff.errors import SPRDiffError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sprdiff", description="SPRDiff ultra-low-bitrate image codec")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_codec_commands(subparsers)
    from jobs.batch_commands import add_batch_commands
    add_batch_commands(subparsers)
    from jobs.eval_commands import add_eval_commands
    add_eval_commands(subparsers)
    from jobs.train_commands import add_train_commands
    add_train_commands(subparsers)
    from jobs.archive_commands import add_archive_commands
    add_archive_commands(subparsers)
    from jobs.service_commands import add_service_commands
    add_service_commands(subparsers)
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
