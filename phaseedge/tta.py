"""Test-time augmentation: each tile is also run flipped (and, for "d4", transposed), and the
probabilities, mapped back, are averaged, so a model trained with those symmetries gives its
symmetry-averaged answer. Multi-scale inference (``scales``) is the frame-level kind: the
Segmenter runs the frame at several pixel sizes and averages on the frame's grid; its
settings are checked and parsed here.

The average is a pairwise sum divided by a power of two: for a model that is equivariant
to the passes (a pointwise function) the result is bit-identical to a plain pass.
"""

from __future__ import annotations

import argparse
import math
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


#: multi-scale inference may ask for pixel sizes within this factor of the model's
MAX_SCALE = 4.0


def validate_scales(scales: Iterable[float] | None) -> tuple[float, ...]:
    """``scales`` as a tuple of distinct positive finite numbers in [1/MAX_SCALE, MAX_SCALE];
    None means (1.0,), one pass at the model's pixel size."""
    if scales is None:
        return (1.0,)
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Iterable):
        raise TypeError(f"scales must be a sequence of numbers such as (0.8, 0.9, 1.0), got {scales!r}")
    out = []
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, (int, float, np.floating, np.integer)) or not (
                math.isfinite(s) and 1.0 / MAX_SCALE <= s <= MAX_SCALE):
            raise ValueError(f"each scale must be a number in [{1.0 / MAX_SCALE}, {MAX_SCALE}] "
                             f"(a multiple of the model's pixel size), got {s!r}")
        out.append(float(s))
    if not out:
        raise ValueError("scales must name at least one scale (1.0 = the model's pixel size)")
    if len(set(out)) != len(out):
        raise ValueError(f"scales repeat a value: {out}")
    return tuple(out)


def parse_scales(text: str) -> tuple[float, ...]:
    """``--scales 0.8,0.9,1``: comma-separated multiples of the model's pixel size."""
    try:
        return validate_scales(float(t) for t in text.split(",") if t.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tta`` (a plain flag: flips) and ``--tta-mode MODE``, both into ``args.tta``.

    Two options rather than ``--tta [MODE]``: an optional value would swallow the image path
    that follows ``--tta`` on a command line.
    """
    parser.add_argument("--tta", action="store_const", const="flips", default=None,
                        help="flip test-time augmentation (4 passes per tile, slower)")
    parser.add_argument("--tta-mode", dest="tta", choices=tuple(MODES),
                        help="test-time augmentation mode: flips (as --tta) or d4 (8 passes: also rotations)")
    parser.add_argument("--scales", type=parse_scales, default=None, metavar="S,S,...",
                        help="multi-scale inference: segment at these multiples of the model's pixel size "
                             "(e.g. 0.8,0.9,1: finer pixels first) and average (default: 1, one pass)")


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
