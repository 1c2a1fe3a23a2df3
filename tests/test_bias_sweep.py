"""The offset fit of scripts/bias_sweep.py does what it says: a phase the model under-predicts gets
the push that recovers it, and a model that is already right keeps zero offsets."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # the script scores checkpoints
_spec = importlib.util.spec_from_file_location(
    "bias_sweep", Path(__file__).resolve().parents[1] / "scripts" / "bias_sweep.py")
_sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sweep)

NAMES = ["matrix", "austenite", "martensite_austenite", "precipitate", "defect"]


def _frame(ma_prob: float) -> tuple[np.ndarray, np.ndarray]:
    """Left half matrix, a third austenite, a strip of MA; MA pixels get p(MA) = ``ma_prob``, the rest matrix."""
    mask = np.zeros((30, 60), np.uint8)
    mask[:, 20:40] = 1
    mask[:, 40:50] = 2
    p = np.full((5, 30, 60), 0.01, np.float32)
    p[0][mask == 0], p[2][mask == 0] = 0.85, 0.11
    p[1][mask == 1] = 0.96
    p[2][mask == 2], p[0][mask == 2] = ma_prob, 0.97 - ma_prob
    p /= p.sum(axis=0, keepdims=True)
    return np.log(p), mask


def test_an_under_predicted_phase_gets_the_offset_that_recovers_it():
    lp, m = _frame(0.40)  # MA loses to matrix at every MA pixel: argmax misses it entirely
    zero = np.zeros(5, np.float32)
    assert _sweep.score([lp], [m], NAMES, zero)["ma"] == 0.0
    b = _sweep.fit_offsets([lp], [m], NAMES, [1, 2, 4])
    gap = np.log(0.57 / 0.40)  # what MA must gain over matrix at MA pixels
    margin = np.log(0.85 / 0.11)  # what it must not gain at matrix pixels
    assert gap < b[2] - b[0] < margin
    assert _sweep.score([lp], [m], NAMES, b)["main3"] == pytest.approx(100.0)
    assert b[0] == 0.0  # the reference class is never moved


def test_a_model_that_is_already_right_keeps_zero_offsets():
    lp, m = _frame(0.80)
    b = _sweep.fit_offsets([lp], [m], NAMES, [1, 2, 4])
    np.testing.assert_array_equal(b, np.zeros(5, np.float32))


def test_decide_rejects_offsets_of_the_wrong_length_or_not_finite():
    lp, _ = _frame(0.5)
    with pytest.raises(ValueError, match="5 finite"):
        _sweep.decide(lp, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="5 finite"):
        _sweep.decide(lp, np.array([0, np.nan, 0, 0, 0], np.float32))
