"""Host ops: the numpy reference against independent definitions, and the native module
against the numpy reference (bit for bit, since both use the same float32 arithmetic)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from phaseedge import hostops
from phaseedge.hostops import gaussian_1d, owned_intervals

ref = hostops.numpy_impl
try:
    from phaseedge import _hostops as native
except ImportError:
    native = None
needs_native = pytest.mark.skipif(native is None, reason="native extension phaseedge._hostops is not built")

IMPLS = [pytest.param(ref, id="numpy"), pytest.param(native, id="native", marks=needs_native)]
FRAME_DTYPES = [np.uint8, np.uint16, np.float32]
BATCH_DTYPES = [np.float16, np.float32]


def _frame(rng: np.random.Generator, shape: tuple[int, int], dtype: type) -> np.ndarray:
    if dtype is np.float32:
        return (rng.standard_normal(shape) * 50 + 100).astype(np.float32)
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def _edge_origins(h: int, w: int, tile: int) -> np.ndarray:
    """Corners, edges hanging over by various amounts, and an interior tile."""
    ys = [-(tile - 1), -3, 0, h // 3, h - tile, h - 1]
    xs = [-(tile - 1), -1, 0, w // 2, w - tile + 2, w - 1]
    return np.array([(y, x) for y in ys for x in xs], dtype=np.int64)


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16 if a.dtype == np.float16 else np.uint32)


def _band_case(rng: np.random.Generator, n: int, h: int, w: int, tile: int, batch: int, pdtype: type):
    probs = rng.random((batch, n, tile, tile)).astype(pdtype)
    origins = np.stack([rng.integers(-tile + 1, h, batch), rng.integers(-tile + 1, w, batch)], 1)
    return probs, origins.astype(np.int64)


# ---------------------------------------------------------------- gather_tiles
@pytest.mark.parametrize("dtype", FRAME_DTYPES)
def test_gather_reference_matches_symmetric_pad(dtype: type) -> None:
    rng = np.random.default_rng(1)
    frame = _frame(rng, (23, 17), dtype)
    tile = 40  # bigger than the frame: mirrored more than once
    origins = np.array([[-39, -39], [-5, 3], [22, 16], [0, 0]], dtype=np.int64)
    out = np.empty((4, 1, tile, tile), np.float32)
    ref.gather_tiles(frame, origins, tile, 10.0, 200.0, out)
    pad = 2 * tile
    padded = np.pad(frame, pad, mode="symmetric").astype(np.float64)
    for b, (y, x) in enumerate(origins):
        want = np.clip((padded[y + pad:y + pad + tile, x + pad:x + pad + tile] - 10) / 190, 0, 1)
        np.testing.assert_allclose(out[b, 0], want, rtol=1e-6, atol=1e-7)


@needs_native
@pytest.mark.parametrize("odtype", BATCH_DTYPES)
@pytest.mark.parametrize("dtype", FRAME_DTYPES)
def test_gather_native_equals_reference(dtype: type, odtype: type) -> None:
    rng = np.random.default_rng(2)
    h, w, tile = 61, 45, 19
    frame = _frame(rng, (h, w), dtype)
    origins = _edge_origins(h, w, tile)
    lo, hi = (20.0, 230.0) if dtype is not np.uint16 else (1000.0, 60000.0)
    a = np.full((len(origins), 1, tile, tile), 7, odtype)
    b = np.full_like(a, 9)
    ref.gather_tiles(frame, origins, tile, lo, hi, a)
    native.gather_tiles(frame, origins, tile, lo, hi, b)
    np.testing.assert_array_equal(_bits(a), _bits(b))


@needs_native
def test_float_to_half_rounds_like_numpy() -> None:
    """Every half in [0, 1], the exact midpoints between neighbours (ties to even) and the
    floats just beside them, through gather (lo=0, hi=1 makes it the identity) and finish."""
    halves = np.arange(0, 0x3C01, dtype=np.uint16).view(np.float16).astype(np.float32)
    mids = (halves[:-1].astype(np.float64) + halves[1:]) / 2  # exact in float32 (12 bits)
    x = np.concatenate([halves, mids, np.nextafter(mids, 0), np.nextafter(mids, 1)]).astype(np.float32)
    frame = np.concatenate([x, np.zeros((-x.size) % 4096, np.float32)]).reshape(-1, 64)
    origins = np.stack([np.arange(0, frame.shape[0], 64), np.zeros(frame.shape[0] // 64)], 1).astype(np.int64)
    tiles = np.empty((len(origins), 1, 64, 64), np.float16)
    native.gather_tiles(frame, origins, 64, 0.0, 1.0, tiles)
    np.testing.assert_array_equal(_bits(tiles.reshape(-1)), _bits(frame.reshape(-1).astype(np.float16)))
    # beyond [0, 1]: large values, overflow to inf, negatives, subnormals, via probs_out (wsum = 1)
    big = np.concatenate([np.float32(2.0) ** np.arange(-26, 17, 0.37), [65504, 65519.99, 65520, 1e6]])
    vals = np.concatenate([big, -big]).astype(np.float32)
    acc = vals.reshape(1, 1, -1)
    wsum = np.ones((1, vals.size), np.float32)
    probs = np.empty((1, 1, vals.size), np.float16)
    native.finish(acc, wsum, 1, np.empty((1, vals.size), np.uint8), np.zeros(1, np.int64), probs_out=probs)
    with np.errstate(over="ignore"):  # the overflow to inf is what is being compared
        want = vals.astype(np.float16)
    np.testing.assert_array_equal(_bits(probs.reshape(-1)), _bits(want))


# ---------------------------------------------------------------- accumulate
@needs_native
def test_half_to_float_exact_for_every_half() -> None:
    bits = np.arange(0, 0x10000, dtype=np.uint32).astype(np.uint16)
    finite = np.isfinite(bits.view(np.float16))
    probs = bits[finite][: 128 * 128 * 3].view(np.float16)
    probs = np.concatenate([probs, np.zeros(128 * 128 * 4 - probs.size, np.float16)]).reshape(4, 1, 128, 128)
    acc = np.zeros((1, 128, 128 * 4), np.float32)
    origins = np.array([[0, 128 * i] for i in range(4)], np.int64)
    ones = np.ones((4, 128), np.float32)
    native.accumulate(acc, np.zeros((128, 512), np.float32), probs, origins, ones, ones)
    want = np.concatenate(list(probs[:, 0].astype(np.float32)), axis=1)
    np.testing.assert_array_equal(acc[0], want)


@needs_native
@pytest.mark.parametrize("pdtype", BATCH_DTYPES)
@pytest.mark.parametrize("blend", ["gaussian", "owned", "random"])
def test_accumulate_native_equals_reference(pdtype: type, blend: str) -> None:
    rng = np.random.default_rng(3)
    n, h, w, tile, batch = 3, 33, 71, 21, 9
    probs, origins = _band_case(rng, n, h, w, tile, batch, pdtype)
    if blend == "gaussian":
        wy = np.tile(gaussian_1d(tile), (batch, 1))
        wx = wy.copy()
    elif blend == "owned":
        origins[:, 1] = np.linspace(-4, w - tile + 4, batch).round().astype(np.int64)
        wx = owned_intervals(origins[:, 1], tile, w)
        wy = np.ones((batch, tile), np.float32)
    else:
        wy, wx = rng.random((2, batch, tile), dtype=np.float32)
    outs = []
    for impl in (ref, native):
        acc = np.full((n, h, w), 0.5, np.float32)
        wsum = np.full((h, w), 0.25, np.float32)
        for _ in range(2):  # accumulation adds to what is there
            impl.accumulate(acc, wsum, probs, origins, wy, wx)
        outs.append((acc, wsum))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    assert outs[0][1].max() > 0.25  # something was added


@pytest.mark.parametrize("impl", IMPLS)
def test_accumulate_clips_to_band(impl) -> None:
    acc = np.zeros((2, 4, 6), np.float32)
    wsum = np.zeros((4, 6), np.float32)
    probs = np.ones((1, 2, 3, 3), np.float32)
    probs[0, 1] = 2
    w = np.array([[1, 2, 4]], np.float32)
    impl.accumulate(acc, wsum, probs, np.array([[-1, 4]], np.int64), w, w)
    want = np.zeros((4, 6), np.float32)
    want[0:2, 4:6] = np.outer([2, 4], [1, 2])
    np.testing.assert_array_equal(wsum, want)
    np.testing.assert_array_equal(acc[1], 2 * want)
    impl.accumulate(acc, wsum, probs, np.array([[10, 0]], np.int64), w, w)  # outside the band: no-op
    np.testing.assert_array_equal(wsum, want)


# ---------------------------------------------------------------- finish
@needs_native
@pytest.mark.parametrize("podtype", [None, np.float16, np.float32])
@pytest.mark.parametrize("weighted", [False, True])
def test_finish_native_equals_reference(weighted: bool, podtype: type | None) -> None:
    rng = np.random.default_rng(4)
    n, h, w, rows = 4, 27, 53, 19
    acc = rng.random((n, h, w), dtype=np.float32)
    acc[1, :5] = acc[2, :5]  # exact ties
    wsum = rng.random((h, w), dtype=np.float32) + 0.1
    cw = np.array([1.0, 0.7, 1.3, 2.0], np.float32) if weighted else None
    res = []
    for impl in (ref, native):
        labels = np.full((rows, w), 255, np.uint8)
        counts = np.arange(n, dtype=np.int64) * 10
        big = None if podtype is None else np.full((n, h + 5, w), -1, podtype)
        probs_out = None if big is None else big[:, 3:3 + rows]  # a row band of a bigger array
        impl.finish(acc, wsum, rows, labels, counts, cw, probs_out)
        res.append((labels, counts, big))
    np.testing.assert_array_equal(res[0][0], res[1][0])
    np.testing.assert_array_equal(res[0][1], res[1][1])
    assert res[0][1].sum() == rows * w + np.arange(n).sum() * 10
    if podtype is not None:
        np.testing.assert_array_equal(_bits(res[0][2]), _bits(res[1][2]))
        assert np.all(res[1][2][:, :3] == -1) and np.all(res[1][2][:, 3 + rows:] == -1)


@pytest.mark.parametrize("impl", IMPLS)
def test_finish_semantics(impl) -> None:
    acc = np.array([[[1, 2, 3, 2]], [[1, 1, 3, 4]], [[0, 2, 3, 4]]], np.float32)  # [3, 1, 4]
    wsum = np.array([[2, 4, 1, 8]], np.float32)
    labels = np.empty((1, 4), np.uint8)
    counts = np.zeros(3, np.int64)
    probs = np.empty((3, 1, 4), np.float32)
    impl.finish(acc, wsum, 1, labels, counts, probs_out=probs)
    assert labels.tolist() == [[0, 0, 0, 1]]  # ties → lowest class
    assert counts.tolist() == [3, 1, 0]
    np.testing.assert_allclose(probs, acc / wsum)
    impl.finish(acc, wsum, 1, labels, counts, class_weights=np.array([1, 1, 2], np.float32))
    assert labels.tolist() == [[0, 2, 2, 2]]
    assert counts.tolist() == [4, 1, 3]


@pytest.mark.parametrize("impl", IMPLS)
def test_finish_rejects_uncovered_pixels_and_keeps_counts(impl) -> None:
    acc = np.ones((2, 3, 5), np.float32)
    wsum = np.ones((3, 5), np.float32)
    wsum[1, 3] = 0
    counts = np.zeros(2, np.int64)
    impl.finish(acc, wsum, 1, np.empty((1, 5), np.uint8), counts)  # row 0 is fine
    with pytest.raises(ValueError, match=r"row 1, col 3"):
        impl.finish(acc, wsum, 3, np.empty((3, 5), np.uint8), counts)
    assert counts.tolist() == [5, 0]


# ---------------------------------------------------------------- whole-frame stitching
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("blend", ["gaussian", "owned"])
def test_stitch_frame_in_bands(impl, blend: str) -> None:
    """Tiles whose probabilities are a function of frame position stitch back to that function;
    with owned intervals every pixel has weight exactly 1."""
    rng = np.random.default_rng(5)
    n, h, w, tile, stride = 3, 45, 58, 16, 11
    truth = rng.random((n, h, w), dtype=np.float32)
    ys = sorted({*range(0, h - tile, stride), h - tile})
    xs = sorted({*range(0, w - tile, stride), w - tile})
    if blend == "owned":
        wy_all, wx_all = owned_intervals(ys, tile, h), owned_intervals(xs, tile, w)
    else:
        g = gaussian_1d(tile)
        wy_all, wx_all = np.tile(g, (len(ys), 1)), np.tile(g, (len(xs), 1))
    labels = np.empty((h, w), np.uint8)
    probs = np.empty((n, h, w), np.float32)
    counts = np.zeros(n, np.int64)
    acc = np.zeros((n, tile, w), np.float32)
    wsum = np.zeros((tile, w), np.float32)
    top = 0  # frame row of the band's first row
    for i, y in enumerate(ys + [h]):
        if y > top:  # rows above y are final: finish them and slide the band
            d = y - top
            impl.finish(acc, wsum, d, labels[top:top + d], counts, probs_out=probs[:, top:top + d])
            acc = np.concatenate([acc[:, d:], np.zeros((n, d, w), np.float32)], 1)
            wsum = np.concatenate([wsum[d:], np.zeros((d, w), np.float32)], 0)
            top += d
        if y == h:
            break
        tiles = np.stack([truth[:, y:y + tile, x:x + tile] for x in xs]).astype(np.float16)
        origins = np.array([[y - top, x] for x in xs], np.int64)
        impl.accumulate(acc, wsum, tiles, origins, np.repeat(wy_all[i:i + 1], len(xs), 0), wx_all)
        if blend == "owned":
            assert set(np.unique(wsum[: min(tile, h - top)])) <= {0.0, 1.0}
    want = truth.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(probs, want, rtol=2e-6, atol=1e-7)
    np.testing.assert_array_equal(labels, np.argmax(probs, 0))
    np.testing.assert_array_equal(counts, np.bincount(labels.ravel(), minlength=n))


# ---------------------------------------------------------------- windows
def _coverage(w: np.ndarray, starts: list[int], length: int) -> np.ndarray:
    """Total weight each pixel of [0, length) gets from per-tile windows w [B, T]."""
    cov = np.zeros(length)
    for s, row in zip(starts, w, strict=True):
        k = np.arange(s, s + w.shape[1])
        keep = (k >= 0) & (k < length)
        cov[k[keep]] += row[keep]
    return cov


def test_owned_intervals_nearest_centre() -> None:
    starts, tile, length = [0, 7, 14, 14, 20], 10, 30
    w = owned_intervals(starts, tile, length)
    owner = np.full(length, -1)
    for i, s in enumerate(starts):
        for k in np.flatnonzero(w[i]):
            assert owner[s + k] == -1, "pixel owned twice"
            owner[s + k] = i
    centres = np.array(starts) + (tile - 1) / 2
    nearest = np.argmin(np.abs(np.arange(length)[:, None] - centres[None, :]), axis=1)  # ties → first
    np.testing.assert_array_equal(owner, nearest)
    assert w[3].sum() == 0  # duplicate start: the earlier twin owns everything
    np.testing.assert_array_equal(_coverage(owned_intervals([-3, 4], 8, 10), [-3, 4], 10), np.ones(10))


def test_owned_intervals_rejects_gaps() -> None:
    with pytest.raises(ValueError, match="gap"):
        owned_intervals([0, 20], 8, 28)
    with pytest.raises(ValueError, match="gap"):
        owned_intervals([2, 8], 8, 16)  # pixel 0 uncovered
    with pytest.raises(ValueError, match="gap"):
        owned_intervals([0, 8], 8, 17)  # last pixel uncovered
    np.testing.assert_array_equal(_coverage(owned_intervals([8, 0], 10, 18), [8, 0], 18), np.ones(18))


def test_gaussian_window() -> None:
    g = gaussian_1d(33)
    assert g.dtype == np.float32 and g.shape == (33,)
    assert g[16] == 1 and np.all(g[:16] < 1)
    np.testing.assert_array_equal(g, g[::-1])
    assert np.all(np.diff(g[:17]) >= 0)
    assert gaussian_1d(64, sigma_scale=0.05, min_weight=0.01).min() == np.float32(0.01)
    with pytest.raises(ValueError):
        gaussian_1d(0)


# ---------------------------------------------------------------- bad arguments
def _good() -> dict:
    n, h, w, t, b = 2, 8, 9, 4, 3
    return {
        "gather": {"frame": np.zeros((h, w), np.uint16), "origins": np.zeros((b, 2), np.int64), "tile": t,
                       "lo": 0.0, "hi": 1.0, "out": np.zeros((b, 1, t, t), np.float16)},
        "accumulate": {"acc": np.zeros((n, h, w), np.float32), "wsum": np.zeros((h, w), np.float32),
                           "probs": np.zeros((b, n, t, t), np.float16), "origins": np.zeros((b, 2), np.int64),
                           "wy": np.ones((b, t), np.float32), "wx": np.ones((b, t), np.float32)},
        "finish": {"acc": np.zeros((n, h, w), np.float32), "wsum": np.ones((h, w), np.float32), "rows": 5,
                       "labels": np.zeros((5, w), np.uint8), "counts": np.zeros(n, np.int64),
                       "class_weights": np.ones(n, np.float32), "probs_out": np.zeros((n, 5, w), np.float32)},
    }


def _readonly(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


BAD = [
    ("gather", "frame", lambda a: a.astype(np.int32), TypeError),
    ("gather", "frame", lambda a: a.tolist(), TypeError),
    ("gather", "frame", lambda a: a[:, ::2], ValueError),
    ("gather", "frame", lambda a: a[None], ValueError),
    ("gather", "frame", lambda a: a.astype(">u2"), TypeError),
    ("gather", "origins", lambda a: a.astype(np.int32), TypeError),
    ("gather", "origins", lambda a: a[:2], ValueError),
    ("gather", "origins", lambda a: a + [[0, 9]], ValueError),   # x = 9 = frame width
    ("gather", "origins", lambda a: a - [[4, 0]], ValueError),   # y = -tile
    ("gather", "tile", lambda a: 5, ValueError),
    ("gather", "hi", lambda a: 0.0, ValueError),
    ("gather", "hi", lambda a: float("nan"), ValueError),
    ("gather", "out", lambda a: a.astype(np.float64), TypeError),
    ("gather", "out", _readonly, ValueError),
    ("gather", "out", lambda a: np.zeros((3, 1, 4, 8), np.float16)[..., ::2], ValueError),
    ("accumulate", "acc", lambda a: a[:, :, :-1], ValueError),
    ("accumulate", "acc", lambda a: a.astype(np.float16), TypeError),
    ("accumulate", "acc", lambda a: np.asfortranarray(a), ValueError),
    ("accumulate", "wsum", lambda a: a[:-1], ValueError),
    ("accumulate", "probs", lambda a: a[:, :1], ValueError),
    ("accumulate", "probs", lambda a: a.astype(np.uint8), TypeError),
    ("accumulate", "probs", lambda a: a.transpose(0, 1, 3, 2), ValueError),
    ("accumulate", "origins", lambda a: a[:, :1], ValueError),
    ("accumulate", "wy", lambda a: a[:, :3], ValueError),
    ("accumulate", "wx", lambda a: a.astype(np.float64), TypeError),
    ("finish", "rows", lambda a: 9, ValueError),
    ("finish", "rows", lambda a: -1, ValueError),
    ("finish", "labels", lambda a: a.astype(np.int64), TypeError),
    ("finish", "labels", lambda a: a[:4], ValueError),
    ("finish", "labels", _readonly, ValueError),
    ("finish", "counts", lambda a: a[:1], ValueError),
    ("finish", "counts", lambda a: a.astype(np.int32), TypeError),
    ("finish", "class_weights", lambda a: a[:1], ValueError),
    ("finish", "class_weights", lambda a: a.astype(np.float64), TypeError),
    ("finish", "probs_out", lambda a: a[:, :, :-1], ValueError),
    ("finish", "probs_out", lambda a: np.zeros((2, 5, 18), np.float32)[:, :, ::2], ValueError),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("fn", "arg", "spoil", "exc"), BAD, ids=[f"{f}-{a}-{i}" for i, (f, a, _, _) in enumerate(BAD)])
def test_bad_arguments_raise(impl, fn: str, arg: str, spoil, exc: type) -> None:
    kw = _good()[fn]
    func = {"gather": impl.gather_tiles, "accumulate": impl.accumulate, "finish": impl.finish}[fn]
    func(**kw)  # the unspoilt call works
    kw[arg] = spoil(kw[arg])
    with pytest.raises(exc):
        func(**kw)


# ---------------------------------------------------------------- dispatch
def test_dispatch_names_backend_and_forcing_numpy_works() -> None:
    assert hostops.BACKEND == ("native" if hostops.native_impl is not None else "numpy")
    code = (
        "import logging, numpy as np; logging.basicConfig(level=logging.INFO)\n"
        "from phaseedge import hostops\n"
        "out = np.empty((1, 1, 4, 4), np.float32)\n"
        "hostops.gather_tiles(np.arange(30, dtype=np.uint8).reshape(5, 6), np.array([[-1, 3]]), 4, 0, 29, out)\n"
        "print(hostops.BACKEND, float(out[0, 0, 0, 0]))\n"
    )
    env = dict(os.environ, PHASEEDGE_NO_NATIVE="1")
    r = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["numpy", str(float(np.float32(3) * np.float32(1 / 29)))]
    assert "host ops: numpy (PHASEEDGE_NO_NATIVE is set)" in r.stderr


# ---------------------------------------------------------------- phaseedge-bench host
@pytest.mark.skipif(hostops.native_impl is None, reason="host ops run on numpy (extension not built or disabled)")
def test_bench_host_small_frame(capsys) -> None:
    from phaseedge.bench.cli import main

    rc = main(["host", "--frame", "150x97", "--classes", "3", "--tile", "32", "--batch", "3", "--runs", "1",
               "--blend", "center", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["identical"] is True
    assert report["frame"] == {"width": 150, "height": 97, "dtype": "uint16"} and report["tiles"] > 1
    for key in ("native_s", "numpy_s"):
        assert report[key] > 0
        assert set(report[f"{key[:-2]}_steps_s"]) == {"gather", "accumulate", "finish"}
    assert report["speedup"] == pytest.approx(report["numpy_s"] / report["native_s"], abs=0.006)
