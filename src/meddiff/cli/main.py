"""`meddiff` entry point: one sub-command module per task, each registering itself on the parser."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from meddiff import __version__
from meddiff.errors import MeddiffError

# Each module defines `register(subparsers)`; the sub-parser it adds sets `func(args) -> int`.
COMMAND_MODULES = ("meddiff.cli.demo", "meddiff.cli.train", "meddiff.cli.sample", "meddiff.cli.checkpoints",
                   "meddiff.cli.data", "meddiff.cli.mask", "meddiff.cli.report", "meddiff.cli.evaluate",
                   "meddiff.cli.reconstruct", "meddiff.cli.detect", "meddiff.cli.turing", "meddiff.cli.federated",
                   "meddiff.cli.simulate_kspace", "meddiff.cli.restore", "meddiff.cli.simulate_ct", "meddiff.cli.distill",
                   "meddiff.cli.segment", "meddiff.cli.translate", "meddiff.cli.register",
                   "meddiff.cli.export", "meddiff.cli.interpolate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meddiff",
        description="Diffusion models for medical imaging: synthesis, reconstruction, anomaly detection.",
    )
    parser.add_argument("--version", action="version", version=f"meddiff {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MeddiffError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
