"""`phaseedge-train eval` with ``ratio="auto"`` estimated from argmax pixel counts instead of mean probabilities.

The runtime's auto ratio is each tile's mean ratio-free probability (phaseedge.strategies.Survey);
the training ratio (paper Eq. 1) counts mask pixels. This script measures whether counting the
ratio-free pass's argmax labels, as Eq. 1 counts the mask, makes ``auto`` better: it did not
(docs/results.md, "Ratio without an expert"), so the runtime keeps the soft estimate.

usage: python scripts/hard_count_auto.py CHECKPOINT --data … --ratio-accuracy none,auto [eval flags]
"""

from __future__ import annotations

import sys

import numpy as np


def hard_fractions(probs: np.ndarray) -> np.ndarray:
    """Share of pixels whose argmax is each class, from probabilities [n, h, w]."""
    n = probs.shape[0]
    return np.bincount(probs.argmax(axis=0).ravel(), minlength=n) / probs[0].size


def patch_survey() -> None:
    """Make every Survey's tile fractions argmax counts over each tile's in-frame pixels."""
    import phaseedge.strategies as strategies
    from phaseedge.stitch import stream_tiles

    def tile_fractions(self) -> np.ndarray:
        if self._fractions is None:
            g, (h, w) = self.grid, self.frame.shape
            out = np.empty((g.n_tiles, self.backend.n_classes), np.float64)
            for sl, probs in stream_tiles(self.backend, self.frame, self.lo, self.hi, g.origins,
                                          self.zeros(g.n_tiles), g.batches(self.batch_size),
                                          self.timings, self.tta):
                for k, (y, x) in zip(range(sl.start, sl.stop), g.origins[sl]):
                    out[k] = hard_fractions(probs[k - sl.start, :, : h - y, : w - x])
            self._fractions = out
        return self._fractions

    strategies.Survey.tile_fractions = tile_fractions


if __name__ == "__main__":
    patch_survey()
    from phaseedge.train.cli import main

    sys.exit(main(["eval", *sys.argv[1:]]))
