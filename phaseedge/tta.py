"""Test-time augmentation: each tile is also run flipped, and the un-flipped probabilities
are averaged, so a model trained with flips gives its flip-averaged answer.

The average is a pairwise sum divided by a power of two: for a model that is equivariant
to flips (a pointwise function) the result is bit-identical to a plain pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from phaseedge.backends.base import Backend

#: (flip rows, flip columns) of each pass; the first is the plain tile
FLIPS: tuple[tuple[bool, bool], ...] = ((False, False), (False, True), (True, False), (True, True))


def _flip(a: np.ndarray, rows: bool, cols: bool) -> np.ndarray:
    axes = tuple(ax for ax, on in ((-2, rows), (-1, cols)) if on)
    return np.flip(a, axis=axes) if axes else a


def infer_flips(backend: Backend, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[np.ndarray]:
    """Like ``backend.infer_many`` but each batch's probabilities are the mean over FLIPS."""
    for images, ratio in batches:
        passes = []
        for rows, cols in FLIPS:
            x = np.ascontiguousarray(_flip(images, rows, cols))
            probs = np.asarray(backend.infer(x, ratio), np.float32)  # a copy: infer may reuse its buffer
            passes.append(_flip(probs, rows, cols))
        while len(passes) > 1:  # pairwise: exact for equal passes
            passes = [passes[i] + passes[i + 1] for i in range(0, len(passes), 2)]
        yield passes[0] / np.float32(len(FLIPS))
