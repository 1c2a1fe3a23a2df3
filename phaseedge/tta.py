"""Test-time augmentation: each tile is also run flipped (and, for "d4", transposed), and the
probabilities, mapped back, are averaged, so a model trained with those symmetries gives its
symmetry-averaged answer.

The average is a pairwise sum divided by a power of two: for a model that is equivariant
to the passes (a pointwise function) the result is bit-identical to a plain pass.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator

import numpy as np

from phaseedge.backends.base import Backend

#: (transpose, flip rows, flip columns) of each pass; the first is the plain tile
FLIPS: tuple[tuple[bool, bool, bool], ...] = (
    (False, False, False), (False, False, True), (False, True, False), (False, True, True))
#: the 8 symmetries of the square (flips x transpose): every 90-degree rotation and reflection
D4: tuple[tuple[bool, bool, bool], ...] = FLIPS + tuple((True, r, c) for _, r, c in FLIPS)
#: TTA modes by name; True means "flips"
MODES: dict[str, tuple[tuple[bool, bool, bool], ...]] = {"flips": FLIPS, "d4": D4}


def resolve(tta: bool | str | None) -> str | None:
    """The mode name for a ``tta`` argument (False/None = off, True = "flips"), or an error."""
    if tta is None or tta is False:
        return None
    if tta is True:
        return "flips"
    if isinstance(tta, str) and tta in MODES:
        return tta
    raise ValueError(f"tta must be False, True or one of {', '.join(MODES)}, got {tta!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tta`` (a plain flag: flips) and ``--tta-mode MODE``, both into ``args.tta``.

    Two options rather than ``--tta [MODE]``: an optional value would swallow the image path
    that follows ``--tta`` on a command line.
    """
    parser.add_argument("--tta", action="store_const", const="flips", default=None,
                        help="flip test-time augmentation (4 passes per tile, slower)")
    parser.add_argument("--tta-mode", dest="tta", choices=tuple(MODES),
                        help="test-time augmentation mode: flips (as --tta) or d4 (8 passes: also rotations)")


def _flip(a: np.ndarray, rows: bool, cols: bool) -> np.ndarray:
    axes = tuple(ax for ax, on in ((-2, rows), (-1, cols)) if on)
    return np.flip(a, axis=axes) if axes else a


def _transpose(a: np.ndarray, on: bool) -> np.ndarray:
    return np.swapaxes(a, -1, -2) if on else a


def infer(backend: Backend, batches: Iterable[tuple[np.ndarray, np.ndarray]], mode: str) -> Iterator[np.ndarray]:
    """Like ``backend.infer_many`` but each batch's probabilities are the mean over MODES[mode]."""
    passes_of = MODES[mode]
    for images, ratio in batches:
        passes = []
        for transpose, rows, cols in passes_of:  # tiles are square: a transposed tile is a tile
            x = np.ascontiguousarray(_transpose(_flip(images, rows, cols), transpose))
            probs = np.asarray(backend.infer(x, ratio), np.float32)  # a copy: infer may reuse its buffer
            passes.append(_flip(_transpose(probs, transpose), rows, cols))
        while len(passes) > 1:  # pairwise: exact for equal passes
            passes = [passes[i] + passes[i + 1] for i in range(0, len(passes), 2)]
        yield passes[0] / np.float32(len(passes_of))
