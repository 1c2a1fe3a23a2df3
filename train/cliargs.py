"""Argument parsers the `phaseedge-train` subcommands share (one home, not borrowed across them)."""

from __future__ import annotations

import argparse


def parse_seeds(text: str) -> list[int]:
    """Non-negative seeds: ``"3,5,9"``, ``"100-115"`` (inclusive) or a mix."""
    seeds: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            a, _, b = part.partition("-")
            seeds.extend(range(int(a), int(b or a) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must look like '1,2,5-9', got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"no seeds in {text!r}")
    return seeds
