"""scripts/hard_count_auto.py measured the argmax-count auto ratio against the runtime's soft one
(docs/results.md); that comparison stands only if the counts are the argmax shares."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location(
    "hard_count_auto", Path(__file__).resolve().parents[1] / "scripts" / "hard_count_auto.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)


def test_counts_are_argmax_shares_not_mean_probabilities():
    probs = np.zeros((3, 2, 2), np.float32)
    probs[0] = [[0.6, 0.6], [0.6, 0.2]]  # class 0 wins 3 of 4 pixels by a small margin
    probs[1] = [[0.4, 0.4], [0.4, 0.0]]
    probs[2] = [[0.0, 0.0], [0.0, 0.8]]
    hard = _mod.hard_fractions(probs)
    np.testing.assert_allclose(hard, [0.75, 0.0, 0.25])
    soft = probs.mean(axis=(1, 2))
    assert soft[1] > 0.25 and hard[1] == 0.0  # the soft estimate gives the never-winning class 30 %
    assert hard.sum() == 1.0
