"""phaseedge.normalize: frame range, normalisation and the per-frame checks."""

from __future__ import annotations

import numpy as np
import pytest

from phaseedge import normalize


def test_frame_range_percentiles_small_frame():
    img = np.arange(1000, dtype=np.uint16).reshape(20, 50)
    lo, hi = normalize.frame_range(img)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(img, [0.5, 99.5])))
    assert isinstance(lo, float) and isinstance(hi, float)


def test_frame_range_big_frame_subsampled_deterministic(monkeypatch):
    monkeypatch.setattr(normalize, "MAX_SAMPLES", 1000)
    img = np.random.default_rng(0).integers(0, 4000, (300, 200)).astype(np.uint16)
    a = normalize.frame_range(img)
    assert a == normalize.frame_range(img.copy())
    full = np.percentile(img, [0.5, 99.5])
    assert abs(a[0] - full[0]) < 150 and abs(a[1] - full[1]) < 150


def test_constant_frame_has_hi_above_lo():
    lo, hi = normalize.frame_range(np.full((8, 8), 7, np.uint8))
    assert lo == 7.0 and hi > lo
    out = normalize.apply(np.full((8, 8), 7, np.uint8), lo, hi)
    assert np.all(out == 0)


def test_apply_clips_and_dtype():
    img = np.array([[0, 50], [100, 200]], np.uint8)
    out = normalize.apply(img, 50, 150)
    np.testing.assert_allclose(out, [[0, 0], [0.5, 1]])
    assert out.dtype == np.float32
    assert normalize.apply(img, 50, 150, np.float16).dtype == np.float16
    with pytest.raises(ValueError):
        normalize.apply(img, 5, 5)
    with pytest.raises(TypeError):
        normalize.apply(img, 0, 1, np.uint8)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_check_frame_native_no_copy_read_only(dtype):
    img = np.ones((4, 5), dtype)
    out = normalize.check_frame(img)
    assert out.dtype == dtype and np.shares_memory(out, img)
    assert not out.flags.writeable and img.flags.writeable


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.float64, np.float16])
def test_check_frame_converts_other_numeric(dtype):
    img = np.arange(12, dtype=dtype).reshape(3, 4)
    out = normalize.check_frame(img)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, img.astype(np.float32))


@pytest.mark.parametrize("dtype", [bool, np.complex64, object])
def test_check_frame_refuses_dtype(dtype):
    with pytest.raises(TypeError, match="dtype"):
        normalize.check_frame(np.zeros((4, 4), dtype))


def test_check_frame_nan_inf():
    for bad in (np.nan, np.inf, -np.inf):
        img = np.zeros((5, 5), np.float32)
        img[3, 2] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            normalize.check_frame(img)


@pytest.mark.parametrize("shape", [(0, 5), (1, 1), (1, 10), (5,), (2, 3, 4, 5), (4, 4, 2)])
def test_check_frame_bad_shapes(shape):
    with pytest.raises(ValueError):
        normalize.check_frame(np.zeros(shape, np.uint8))


def test_check_frame_colour():
    grey = np.random.default_rng(1).integers(0, 255, (6, 7), dtype=np.uint8)
    rgb = np.dstack([grey, grey, grey])
    np.testing.assert_array_equal(normalize.check_frame(rgb), grey)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    np.testing.assert_array_equal(normalize.check_frame(rgba), grey)
    np.testing.assert_array_equal(normalize.check_frame(grey[..., None]), grey)
    np.testing.assert_array_equal(normalize.check_frame(grey[None]), grey)
    rgb[2, 3, 1] ^= 1
    with pytest.raises(ValueError, match="different channels"):
        normalize.check_frame(rgb)
