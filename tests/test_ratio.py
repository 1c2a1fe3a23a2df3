"""phaseedge.ratio: Eq. 1, Eq. 4-5 (paper examples), validation and prior-shift calibration."""

from __future__ import annotations

import numpy as np
import pytest

from phaseedge import ratio

P = [0.7, 0.18, 0.12]


@pytest.mark.parametrize(
    "alpha, expected",
    [(0.5, [0.425, 0.295, 0.28]), (0.9, [0.645, 0.203, 0.152]), (0.3, [0.315, 0.341, 0.344])],
)
def test_guess_matches_paper_examples(alpha, expected):
    g = ratio.guess(P, alpha)
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, expected, atol=6e-4)
    assert g.sum() == pytest.approx(1.0, abs=1e-6)


def test_guess_limits_and_batch():
    np.testing.assert_allclose(ratio.guess(P, 1.0), P, atol=1e-7)
    np.testing.assert_allclose(ratio.guess(P, 0.0), [0.15, 0.41, 0.44], atol=1e-7)
    batch = ratio.guess([P, [0.2, 0.3, 0.5]], [0.5, 1.0])
    np.testing.assert_allclose(batch[0], ratio.guess(P, 0.5))
    np.testing.assert_allclose(batch[1], [0.2, 0.3, 0.5], atol=1e-7)
    np.testing.assert_array_equal(ratio.guess([1.0], 0.3), [1.0])


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_guess_rejects_bad_accuracy(alpha):
    with pytest.raises(ValueError, match="accuracy"):
        ratio.guess(P, alpha)


def test_from_mask():
    mask = np.array([[0, 0, 1], [2, 0, 1]], np.uint8)
    r = ratio.from_mask(mask, 4)
    assert r.dtype == np.float32
    np.testing.assert_allclose(r, [3 / 6, 2 / 6, 1 / 6, 0.0])
    with pytest.raises(ValueError, match="label 2"):
        ratio.from_mask(mask, 2)
    with pytest.raises(ValueError, match="negative"):
        ratio.from_mask(np.array([-1, 0]), 2)
    with pytest.raises(ValueError, match="empty"):
        ratio.from_mask(np.zeros((0, 3), np.uint8), 2)
    with pytest.raises(TypeError):
        ratio.from_mask(np.zeros(3, np.float32), 2)


def test_validate_unknown_and_normalises():
    assert ratio.validate(None, 3) is None
    assert ratio.validate([0, 0, 0], 3) is None
    r = ratio.validate([60, 30, 10], 3)
    assert r.dtype == np.float32
    np.testing.assert_allclose(r, [0.6, 0.3, 0.1], rtol=1e-6)
    inp = np.array([0.2, 0.2, 0.2])
    ratio.validate(inp, 3)
    np.testing.assert_array_equal(inp, [0.2, 0.2, 0.2])  # input untouched


@pytest.mark.parametrize(
    "bad, match",
    [
        ([0.5, float("nan"), 0.5], "NaN"),
        ([0.5, float("inf"), 0.5], "NaN or inf"),
        ([0.5, -0.1, 0.6], "negative"),
        ([0.5, 0.5], "2 values but the model has 3"),
        ([[0.5, 0.3, 0.2]], "1-D"),
        (["a", "b", "c"], "sequence"),
    ],
)
def test_validate_rejects(bad, match):
    with pytest.raises(ValueError, match=match):
        ratio.validate(bad, 3)


def _random_probs(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(0, 2, (n, *shape))
    e = np.exp(logits - logits.max(axis=0))
    return (e / e.sum(axis=0)).astype(np.float32)


def test_prior_shift_matches_target_fractions():
    probs = _random_probs(3, (40, 50))
    target = np.array([0.6, 0.3, 0.1], np.float32)
    b = ratio.prior_shift(probs, target)
    assert b.shape == (3,) and b.dtype == np.float32
    out = ratio.calibrate(probs, target)
    assert out.shape == probs.shape and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_allclose(out.reshape(3, -1).mean(axis=1), target, atol=1e-3)
    # a softmax of shifted log-probabilities, as documented
    manual = np.exp(np.log(probs) + b[:, None, None])
    np.testing.assert_allclose(out, manual / manual.sum(axis=0), rtol=1e-4, atol=1e-6)


def test_calibrate_keeps_input_and_unknown_is_identity():
    probs = _random_probs(3, (8, 9), seed=1).astype(np.float16)
    before = probs.copy()
    same = ratio.calibrate(probs, None)
    np.testing.assert_array_equal(same, before.astype(np.float32))
    ratio.calibrate(probs, [0.1, 0.1, 0.8])
    np.testing.assert_array_equal(probs, before)


def test_prior_shift_zero_ratio_class_is_suppressed_but_finite():
    probs = _random_probs(3, (30, 30), seed=2)
    b = ratio.prior_shift(probs, [0.5, 0.5, 0.0])
    assert np.all(np.isfinite(b)) and np.all(np.abs(b) <= ratio.MAX_SHIFT)
    out = ratio.calibrate(probs, [0.5, 0.5, 0.0])
    assert out[2].mean() < 2 * ratio.MIN_RATIO


def test_prior_shift_batched_and_already_matching():
    probs = _random_probs(2, (4, 16, 16), seed=3)
    frac = probs.reshape(2, -1).mean(axis=1)
    b = ratio.prior_shift(probs, frac)
    np.testing.assert_allclose(b, 0.0, atol=1e-4)
    with pytest.raises(ValueError, match="3 values"):
        ratio.prior_shift(probs, [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="shape"):
        ratio.calibrate(np.zeros(3, np.float32), [1, 1, 1])


NAMES3 = ("ferrite", "martensite", "bainite")


def test_ratio_by_name_in_any_case_and_order():
    r = ratio.validate({"Bainite": 0.1, "FERRITE": 0.6, "martensite": 0.3}, 3, NAMES3)
    np.testing.assert_allclose(r, [0.6, 0.3, 0.1], rtol=1e-6)
    np.testing.assert_allclose(ratio.validate({"martensite": 1}, 3, NAMES3), [0, 1, 0])  # left out = 0


@pytest.mark.parametrize("bad, exc, message", [
    ({"pearlite": 0.5}, ValueError, "not a class of this model.*ferrite, martensite, bainite"),
    ({"ferrite": 0.5, "Ferrite": 0.5}, ValueError, "twice"),
    ({"ferrite": -0.1, "bainite": 0.5}, ValueError, "negative"),
    ({"ferrite": 0, "bainite": 0}, ValueError, "sums to zero"),
    ({"ferrite": "lots"}, TypeError, "number"),
    ({1: 0.5}, TypeError, "class names"),
])
def test_bad_named_ratios_say_why(bad, exc, message):
    with pytest.raises(exc, match=message):
        ratio.validate(bad, 3, NAMES3)


def test_named_ratio_needs_the_class_names():
    with pytest.raises(ValueError, match="class names"):
        ratio.validate({"ferrite": 1.0}, 3)


def test_partial_ratio_completes_from_the_estimate():
    names = ["ferrite", "martensite", "bainite"]
    part = ratio.check({"Martensite": 0.25, "rest": "AUTO"}, 3, names)
    assert isinstance(part, ratio.Partial) and part.known == ((1, 0.25),)
    np.testing.assert_allclose(part.complete([0.6, 0.3, 0.2]), [0.75 * 0.75, 0.25, 0.75 * 0.25], rtol=1e-6)
    np.testing.assert_allclose(part.complete([0.0, 1.0, 0.0]), [0.375, 0.25, 0.375], rtol=1e-6)  # even split
    np.testing.assert_allclose(ratio.check({"martensite": 1.0, "rest": "auto"}, 3, names).complete([0.5, 0, 0.5]),
                               [0, 1, 0], atol=1e-7)
    assert ratio.check("auto", 3) == ratio.AUTO and ratio.check(part, 3) is part
    with pytest.raises(ValueError, match="model has 2"):
        ratio.check(part, 2)
    with pytest.raises(ValueError, match="'auto'"):
        ratio.check("some", 3)
    with pytest.raises(ValueError, match="class names"):
        ratio.check({"martensite": 0.1, "rest": "auto"}, 3)


def test_em_prior_recovers_a_shifted_prior():
    """Posteriors of a calibrated classifier trained at prior (0.5, 0.5), on a frame whose real
    prior is (0.8, 0.2): their mean is biased towards 0.5, EM recovers about 0.8."""
    rng = np.random.default_rng(0)
    y = rng.random(20000) < 0.2  # class 1 with p = 0.2
    x = rng.normal(np.where(y, 1.0, -1.0), 1.0)
    p1 = 1.0 / (1.0 + np.exp(-2.0 * x))  # exact posterior of N(+-1, 1) at equal priors
    probs = np.stack([1 - p1, p1]).astype(np.float32)
    naive = probs.mean(axis=1)
    est = ratio.em_prior(probs, [0.5, 0.5])
    assert abs(est[1] - 0.2) < 0.02 < abs(naive[1] - 0.2)
    with pytest.raises(ValueError, match="training class prior"):
        ratio.em_prior(probs, [0, 0])
