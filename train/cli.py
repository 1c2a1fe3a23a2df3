"""``phaseedge-train``: model information, training and evaluation.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``, which registers
the subparser and sets ``func`` (``run(args) -> int``); adding one is one line in SUBCOMMANDS.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from phaseedge import __version__

SUBCOMMANDS: tuple[str, ...] = (
    "phaseedge.train.info",
    "phaseedge.train.fit",
    "phaseedge.train.evaluate",
    "phaseedge.train.importer",
    "phaseedge.train.ensemble",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phaseedge-train",
        description="Train, inspect and evaluate phaseedge segmentation models (PyTorch).",
    )
    parser.add_argument("--version", action="version", version=f"phaseedge {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"phaseedge-train {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
