"""phaseedge.metrics on hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from phaseedge import metrics

# flattened: truth 0 0 1 1 2 2, pred 0 1 1 1 2 0; class 3 appears in neither
TRUTH = np.array([[0, 0, 1], [1, 2, 2]], np.uint8)
PRED = np.array([[0, 1, 1], [1, 2, 0]], np.uint8)


def test_confusion_matrix_rows_truth_cols_pred():
    cm = metrics.confusion(PRED, TRUTH, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])


def test_per_class_scores_by_hand():
    d = metrics.dice(PRED, TRUTH, 4)
    np.testing.assert_allclose(d[:3], [2 * 1 / 4, 2 * 2 / 5, 2 * 1 / 3])
    assert np.isnan(d[3])  # absent from both: undefined, not 0 or 1
    j = metrics.iou(PRED, TRUTH, 4)
    np.testing.assert_allclose(j[:3], [1 / 3, 2 / 3, 1 / 2])
    assert np.isnan(j[3])


def test_macro_means_skip_absent_classes():
    assert metrics.macro_dice(PRED, TRUTH, 4) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert metrics.miou(PRED, TRUTH, 4) == pytest.approx(0.5)
    assert metrics.pixel_accuracy(PRED, TRUTH, 4) == pytest.approx(4 / 6)


def test_class_only_in_prediction_scores_zero():
    truth = np.zeros((2, 2), np.uint8)
    pred = np.array([[0, 0], [0, 1]], np.uint8)
    d = metrics.dice(pred, truth, 2)
    np.testing.assert_allclose(d, [2 * 3 / 7, 0.0])
    assert metrics.macro_dice(pred, truth, 2) == pytest.approx(3 / 7)


def test_fractions_and_error():
    np.testing.assert_allclose(metrics.fractions(TRUTH, 4), [1 / 3, 1 / 3, 1 / 3, 0])
    assert metrics.fraction_error(PRED, TRUTH, 4) == pytest.approx((0 + 1 / 6 + 1 / 6 + 0) / 4)
    assert metrics.fraction_error(TRUTH, TRUTH, 4) == 0.0


def test_fractions_from_counts_is_the_step_fractions_uses():
    counts = np.bincount(TRUTH.ravel(), minlength=4)
    np.testing.assert_array_equal(metrics.fractions_from_counts(counts), metrics.fractions(TRUTH, 4))
    assert metrics.fractions_from_counts([3, 1]).tolist() == [0.75, 0.25]
    assert np.isnan(metrics.fractions_from_counts(np.zeros(3, np.int64))).all()


def test_perfect_prediction():
    assert metrics.macro_dice(TRUTH, TRUTH, 3) == 1.0
    assert metrics.miou(TRUTH, TRUTH, 3) == 1.0


def test_accumulator_pools_pixels_and_matches_functions():
    cm = metrics.ConfusionMatrix(4, class_names=["a", "b", "c", "d"])
    cm.update(PRED[:1], TRUTH[:1])
    cm.update(PRED[1:], TRUTH[1:])
    np.testing.assert_allclose(cm.dice(), metrics.dice(PRED, TRUTH, 4))
    np.testing.assert_allclose(cm.iou(), metrics.iou(PRED, TRUTH, 4))
    assert cm.macro_dice() == pytest.approx(metrics.macro_dice(PRED, TRUTH, 4))
    assert cm.pixel_accuracy() == pytest.approx(4 / 6)
    assert cm.fraction_error() == pytest.approx(1 / 12)
    s = cm.summary()
    json.dumps(s)  # JSON-able, NaN mapped to None
    assert s["per_class_dice"]["d"] is None and s["pixels"] == 6
    cm.reset()
    assert np.isnan(cm.macro_dice()) and cm.matrix.sum() == 0


def test_empty_accumulator_is_nan_not_error():
    cm = metrics.ConfusionMatrix(2)
    assert np.isnan(cm.macro_dice()) and np.isnan(cm.pixel_accuracy())


@pytest.mark.parametrize(
    "pred, truth, err",
    [
        (PRED, TRUTH[:, :2], ValueError),
        (PRED, TRUTH.astype(np.float32), TypeError),
        (PRED + 5, TRUTH, ValueError),
        (PRED.astype(np.int16) - 1, TRUTH, ValueError),
    ],
)
def test_bad_inputs(pred, truth, err):
    with pytest.raises(err):
        metrics.dice(pred, truth, 4)


def test_bad_class_names():
    with pytest.raises(ValueError, match="class names"):
        metrics.ConfusionMatrix(3, class_names=["a"])
