"""phaseedge.synth: determinism, phase count, dtypes, sizes, information band."""

from __future__ import annotations

import numpy as np
import pytest

from phaseedge import synth


def test_same_seed_same_image_and_different_seed_differs():
    a, ma = synth.micrograph((96, 130), seed=3)
    b, mb = synth.micrograph((96, 130), seed=3)
    c, _ = synth.micrograph((96, 130), seed=4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_phase_count(n):
    _, mask = synth.micrograph((512, 512), n_phases=n, seed=1)
    assert mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) == set(range(n))
    assert synth.class_names(n) == list(synth.PHASE_NAMES[:n])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_dtypes_and_range(dtype):
    img, _ = synth.micrograph((64, 80), dtype=dtype, seed=2)
    assert img.dtype == dtype and img.shape == (64, 80)
    if dtype == np.float32:
        assert 0.0 <= img.min() and img.max() <= 1.0
    else:
        assert img.max() > np.iinfo(dtype).max // 2  # uses the dynamic range


def test_dtypes_agree_on_content():
    a, ma = synth.micrograph((64, 64), dtype=np.float32, seed=5)
    b, mb = synth.micrograph((64, 64), dtype=np.uint8, seed=5)
    np.testing.assert_array_equal(ma, mb)
    assert np.abs(a * 255 - b.astype(np.float32)).max() <= 0.51


def test_size_range_small_and_chunk_crossing():
    img, mask = synth.micrograph((64, 64), seed=0)
    assert img.shape == mask.shape == (64, 64)
    # taller than one generation chunk (256 rows): grains continue across the chunk seam
    tall_img, tall = synth.micrograph((600, 300), seed=0, dtype=np.float32)
    changes = np.mean(tall[1:] != tall[:-1], axis=1)
    assert changes[255] <= 2 * np.median(changes) + 0.05
    step = np.abs(np.diff(tall_img, axis=0)).mean(axis=1)
    assert step[255] < 1.5 * np.median(step)


def test_not_separable_by_a_global_threshold():
    img, mask = synth.micrograph((512, 512), n_phases=3, seed=7, dtype=np.float32)
    best = 0.0
    for t in np.linspace(0.05, 0.95, 91):
        for lo, hi in ((0, 1), (1, 2), (0, 2)):
            sel = (mask == lo) | (mask == hi)
            above = img[sel] > t
            is_hi = mask[sel] == hi
            balanced = 0.5 * (above[is_hi].mean() + (~above[~is_hi]).mean())
            best = max(best, balanced, 1 - balanced)
    assert best < 0.85


def test_band_rows_are_excluded_from_mask():
    img, mask = synth.micrograph((200, 160), seed=1, band=40, dtype=np.uint8)
    assert img.shape == (200, 160) and mask.shape == (160, 160)
    panel = img[160:]
    assert np.mean((panel == 0) | (panel == 255)) > 0.99  # a flat, saturated panel
    plain, _ = synth.micrograph((200, 160), seed=1, dtype=np.uint8)
    assert plain.shape == (200, 160)


@pytest.mark.parametrize(
    "kwargs, err",
    [
        ({"shape": (4, 64)}, ValueError),
        ({"shape": (64,)}, ValueError),
        ({"shape": (64, 64), "n_phases": 0}, ValueError),
        ({"shape": (64, 64), "n_phases": 6}, ValueError),
        ({"shape": (64, 64), "dtype": np.int32}, TypeError),
        ({"shape": (64, 64), "band": 60}, ValueError),
        ({"shape": (64, 64), "band": -1}, ValueError),
    ],
)
def test_bad_arguments(kwargs, err):
    with pytest.raises(err):
        synth.micrograph(**kwargs)
