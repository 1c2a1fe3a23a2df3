"""The guided filter of scripts/refine_sweep.py is correct: it measured worse than no refinement on
MetalDAM (docs/results.md), and that result stands only if the filter does what it says."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # the script scores checkpoints
_spec = importlib.util.spec_from_file_location(
    "refine_sweep", Path(__file__).resolve().parents[1] / "scripts" / "refine_sweep.py")
_sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sweep)
guide_image, guided_filter = _sweep.guide_image, _sweep.guided_filter


def _two_class(p0: np.ndarray) -> np.ndarray:
    return np.stack([p0, 1.0 - p0]).astype(np.float32)


def test_a_blurred_boundary_snaps_to_the_edge_of_the_guide():
    """The model's boundary sits 3 px left of the image's edge and is smooth; refined, it follows the image."""
    x = np.arange(64, dtype=np.float32)
    guide = np.tile((x >= 32).astype(np.float32), (16, 1))
    p0 = np.tile(1.0 / (1.0 + np.exp((x - 28.5) / 4.0)), (16, 1))  # class 0 up to column 28
    before = _two_class(p0).argmax(axis=0)
    after = guided_filter(_two_class(p0), guide, radius=8, eps=1e-3).argmax(axis=0)
    assert (before[:, 29:32] == 1).all()  # the unrefined boundary is off by 3 columns
    np.testing.assert_array_equal(after, np.tile((x >= 32).astype(np.int64), (16, 1)))


def test_probabilities_that_follow_the_guide_are_kept_and_constants_stay_constant():
    rng = np.random.default_rng(0)
    guide = rng.random((40, 50), dtype=np.float32)
    kept = guided_filter(_two_class(guide), guide, radius=2, eps=1e-6)
    np.testing.assert_allclose(kept[0], guide, atol=1e-3)
    flat = np.full((3, 40, 50), 1 / 3, np.float32)
    np.testing.assert_allclose(guided_filter(flat, guide, radius=4, eps=1e-2), flat, atol=1e-5)


def test_output_is_a_distribution_per_pixel():
    rng = np.random.default_rng(1)
    probs = rng.random((5, 30, 20), dtype=np.float32)
    probs /= probs.sum(axis=0, keepdims=True)
    out = guided_filter(probs, guide_image(rng.integers(0, 65535, (30, 20), dtype=np.uint16)), 3, 1e-2)
    assert out.shape == probs.shape and out.dtype == np.float32
    assert (out >= 0).all()
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)


def test_guide_image_is_robust_to_hot_pixels_and_flat_frames():
    frame = np.tile(np.arange(100, dtype=np.uint16), (100, 1))
    frame[0, 0] = 65535  # one hot pixel must not squash the rest of the range
    g = guide_image(frame)
    assert g.dtype == np.float32 and g.min() == 0.0 and g.max() == 1.0
    assert 0.45 < float(g[50, 50]) < 0.55
    assert np.isfinite(guide_image(np.full((8, 8), 7, np.uint8))).all()
    assert guide_image(np.zeros((8, 8, 3), np.uint8)).shape == (8, 8)


@pytest.mark.parametrize(
    "probs,guide,radius,eps,match",
    [
        (np.zeros((2, 8, 8), np.float32), np.zeros((8, 9), np.float32), 2, 1e-2, "share H, W"),
        (np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32), 2, 1e-2, "share H, W"),
        (np.zeros((2, 8, 8), np.float32), np.zeros((8, 8), np.float32), 0, 1e-2, "radius"),
        (np.zeros((2, 8, 8), np.float32), np.zeros((8, 8), np.float32), 1.5, 1e-2, "radius"),
        (np.zeros((2, 8, 8), np.float32), np.zeros((8, 8), np.float32), 2, 0.0, "eps"),
        (np.zeros((2, 8, 8), np.float32), np.zeros((8, 8), np.float32), 2, float("nan"), "eps"),
    ],
)
def test_bad_arguments_are_refused(probs, guide, radius, eps, match):
    with pytest.raises(ValueError, match=match):
        guided_filter(probs, guide, radius, eps)


def test_a_guide_that_is_not_an_image_is_refused():
    with pytest.raises(ValueError, match="2-D frame"):
        guide_image(np.zeros(10, np.float32))
