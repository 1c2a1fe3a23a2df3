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
    """Make every Survey's tile fractions argmax counts (its per-tile share, `strategies.tile_share`)."""
    from phaseedge import strategies

    strategies.tile_share = hard_fractions


if __name__ == "__main__":
    patch_survey()
    from phaseedge.train.cli import main

    sys.exit(main(["eval", *sys.argv[1:]]))
