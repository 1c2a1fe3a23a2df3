"""`phaseedge-bench`: measure latency, accuracy and the compute floor on this machine.

Each subcommand lives in its own module and registers itself with
``add_parser(subparsers)`` (setting ``func``), so adding one is one line here.
Modules are imported only for their parser; heavy libraries load when a command runs.
"""

from __future__ import annotations

import argparse
import sys

from phaseedge.bench import accuracy, coverage, floor, forest, host, latency, soak, triton

from phaseedge import __version__

_COMMANDS = (latency, accuracy, floor, host, forest, soak, coverage, triton)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phaseedge-bench", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--version", action="version", version=f"phaseedge-bench {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        print(f"phaseedge-bench {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
