"""Segmenter end to end on tiny ONNX graphs and a numpy fake backend (MONAI-style checks)."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from runtime_graphs import write_graph

from phaseedge import Segmenter
from phaseedge.backends.base import Backend
from phaseedge.normalize import apply, frame_range
from phaseedge.strategies import local_ratios


class AffineBackend(Backend):
    """probs = [x, 1 - x] in numpy: fast, exact, and lets tests block or count calls."""

    name = "fake"

    def __init__(self, tile: int = 16, max_batch: int = 4, gate: threading.Event | None = None) -> None:
        self.tile, self.n_classes, self.max_batch = tile, 2, max_batch
        self.class_names = ("bright", "dark")
        self.gate = gate
        self.started = threading.Event()
        self.calls = 0

    def infer(self, images, ratio):
        self.check_batch(images, ratio)
        self.calls += 1
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        x = images.astype(np.float32)
        return np.concatenate([x, 1 - x], axis=1)


@pytest.fixture(scope="module")
def affine(tmp_path_factory):
    return write_graph(tmp_path_factory.mktemp("g") / "affine.onnx", "affine", tile=32, n=2, max_batch=4)


@pytest.fixture(scope="module")
def ratio_graph(tmp_path_factory):
    return write_graph(tmp_path_factory.mktemp("g") / "ratio.onnx", "ratio", tile=32, n=3, max_batch=4)


def _reference(img: np.ndarray) -> np.ndarray:
    lo, hi = frame_range(img)
    return apply(img, lo, hi, np.float16).astype(np.float32)


def _frame(shape, seed=0, dtype=np.uint16):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4000, shape).astype(dtype)


@pytest.mark.parametrize("shape", [(2, 2), (5, 7), (32, 32), (33, 70), (100, 37), (131, 97)])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.6])
@pytest.mark.parametrize("blend", ["gaussian", "center"])
def test_stitched_probabilities_reproduce_the_input(affine, shape, overlap, blend):
    img = _frame(shape, seed=shape[0] * 1000 + shape[1])
    with Segmenter(affine, overlap=overlap, blend=blend) as seg:
        r = seg.segment(img, return_probabilities=True)
    ref = _reference(img)
    np.testing.assert_allclose(r.probabilities[0], ref, rtol=0, atol=2e-6)
    np.testing.assert_allclose(r.probabilities.sum(axis=0), 1.0, atol=1e-3)  # fp16 graph output
    clear = np.abs(ref - 0.5) > 1e-3  # away from exact ties
    assert np.array_equal(r.labels[clear], (ref < 0.5)[clear].astype(np.uint8))
    assert r.labels.dtype == np.uint8 and r.labels.shape == shape


@pytest.mark.parametrize("blend", ["gaussian", "center"])
def test_many_overlaps_and_batch_sizes_on_an_odd_frame(blend):
    img = _frame((211, 157), seed=3)
    ref = _reference(img)
    for overlap, bs in [(0.1, 1), (0.1, 3), (0.4, 3), (0.4, 64), (0.9, 64)]:
        seg = Segmenter(AffineBackend(tile=24, max_batch=64), overlap=overlap, blend=blend, batch_size=bs)
        r = seg.segment(img, return_probabilities=True)
        np.testing.assert_allclose(r.probabilities[0], ref, atol=2e-6)


@pytest.mark.parametrize("shape", [(32, 32), (20, 27)])
def test_a_frame_that_fits_one_tile_gives_the_untiled_result(affine, shape):
    img = _frame(shape, seed=7)
    seg = Segmenter(affine, blend="center")
    r = seg.segment(img, return_probabilities=True)
    lo, hi = frame_range(img)
    padded = np.pad(img, [(0, 32 - shape[0]), (0, 32 - shape[1])], mode="symmetric")
    x = apply(padded, lo, hi, np.float16)[None, None]
    direct = seg.backend.infer(x, np.zeros((1, 2), np.float32))[0, :, : shape[0], : shape[1]].astype(np.float32)
    assert np.array_equal(r.probabilities, direct)
    assert np.array_equal(r.labels, np.argmax(direct, axis=0).astype(np.uint8))
    g = Segmenter(affine, blend="gaussian").segment(img)
    assert np.array_equal(g.labels, r.labels)


def test_result_fields(affine):
    img = _frame((70, 45))
    r = Segmenter(affine).segment(img)
    assert r.class_names == ("phase0", "phase1")
    assert set(r.fractions) == set(r.class_names)
    assert abs(sum(r.fractions.values()) - 1) < 1e-12
    assert r.counts.sum() == img.size
    assert r.fractions["phase1"] == pytest.approx((r.labels == 1).mean())
    assert {"prepare", "tiles", "infer", "stitch", "finish", "total"} <= set(r.timings)
    assert r.probabilities is None
    assert r.to_dict()["pixel_counts"]["phase0"] == int((r.labels == 0).sum())


def test_equal_channel_rgb_is_grey_and_input_is_untouched(affine):
    img = _frame((40, 50))
    rgb = np.repeat(img[..., None], 3, axis=2)
    before = rgb.copy()
    seg = Segmenter(affine)
    assert np.array_equal(seg.segment(rgb).labels, seg.segment(img).labels)
    assert np.array_equal(rgb, before)


@pytest.mark.parametrize("bad,exc,match", [
    (np.full((10, 10), np.nan, np.float32), ValueError, "NaN"),
    (np.array([[0.0, np.inf], [1.0, 2.0]], np.float32), ValueError, "NaN or inf"),
    (np.zeros((0, 5), np.uint8), ValueError, "too small"),
    (np.zeros((1, 1), np.uint8), ValueError, "too small"),
    (np.zeros((4, 4, 3), np.uint8) + np.arange(3, dtype=np.uint8), ValueError, "different channels"),
    (np.zeros((4, 4), bool), TypeError, "dtype"),
    (np.zeros((2, 4, 4, 4), np.uint8), ValueError, "2-D"),
])
def test_bad_images_are_refused(affine, bad, exc, match):
    with pytest.raises(exc, match=match):
        Segmenter(affine).segment(bad)


@pytest.mark.parametrize("ratio,match", [
    ([0.5, 0.3, 0.2], "3 values but the model has 2"),
    ([-0.1, 1.1], "negative"),
    ([np.nan, 1.0], "NaN"),
])
def test_bad_ratios_are_refused(affine, ratio, match):
    with pytest.raises(ValueError, match=match):
        Segmenter(affine).segment(_frame((8, 8)), ratio=ratio)


def test_bad_settings_are_refused(affine, tmp_path):
    for kw, exc in [({"overlap": 1.0}, ValueError), ({"blend": "max"}, ValueError),
                    ({"ratio_mode": "sometimes"}, ValueError), ({"batch_size": 0}, ValueError),
                    ({"backend": "magic"}, ValueError), ({"queue_size": 0}, ValueError)]:
        with pytest.raises(exc):
            Segmenter(affine, **kw)
    with pytest.raises(FileNotFoundError):
        Segmenter(tmp_path / "missing.onnx")
    (tmp_path / "m.xyz").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot tell"):
        Segmenter(tmp_path / "m.xyz")


def test_construction_is_cheap(affine):
    seg = Segmenter(affine)
    assert seg._backend is None  # nothing loaded until first use
    with seg:
        assert seg._backend is not None
    assert seg._backend is None  # closed


def test_four_threads_give_the_same_results_as_one(affine):
    frames = [_frame((90 + 7 * i, 61 + 5 * i), seed=i) for i in range(8)]
    seg = Segmenter(affine, overlap=0.5)
    ref = [seg.segment(f).labels for f in frames]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda f: seg.segment(f).labels, frames * 2))
    for a, b in zip(got, ref * 2):
        assert np.array_equal(a, b)


def test_segment_many_and_submit_match_segment(affine):
    frames = [_frame((50 + i, 40 + 3 * i), seed=i) for i in range(5)]
    seg = Segmenter(affine, queue_size=2)
    ref = [seg.segment(f).labels for f in frames]
    many = list(seg.segment_many(iter(frames)))
    assert [m.labels.shape for m in many] == [r.shape for r in ref]
    assert all(np.array_equal(m.labels, r) for m, r in zip(many, ref))
    futures = [seg.submit(f) for f in frames]
    assert all(np.array_equal(f.result(timeout=30).labels, r) for f, r in zip(futures, ref))
    bad = seg.submit(np.full((5, 5), np.nan, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        bad.result(timeout=30)
    seg.close()


def test_segment_many_raises_at_the_bad_frame(affine):
    frames = [_frame((20, 20)), np.zeros((1, 1), np.uint8), _frame((20, 20))]
    it = Segmenter(affine).segment_many(frames)
    assert next(it).labels.shape == (20, 20)
    with pytest.raises(ValueError, match="too small"):
        next(it)


def test_submit_queue_is_bounded():
    gate = threading.Event()
    backend = AffineBackend(gate=gate)
    seg = Segmenter(backend, queue_size=1)
    img = _frame((16, 16))
    first = seg.submit(img)
    assert backend.started.wait(10)  # the worker holds frame 1 inside infer
    second = seg.submit(img)  # waits in the queue
    with pytest.raises(queue.Full):
        seg.submit(img, block=False)
    with pytest.raises(queue.Full):
        seg.submit(img, timeout=0.05)
    gate.set()
    assert np.array_equal(first.result(10).labels, second.result(10).labels)
    seg.close()


def test_submit_copies_the_frame():
    gate = threading.Event()
    seg = Segmenter(AffineBackend(gate=gate))
    img = _frame((16, 16))
    expected = Segmenter(AffineBackend()).segment(img).labels
    fut = seg.submit(img)
    img[:] = 0  # acquisition software reuses its buffer
    gate.set()
    assert np.array_equal(fut.result(10).labels, expected)
    seg.close()


# ------------------------------------------------------------------ ratio modes
def _distance(r, target):
    return float(np.abs(r.fraction_vector - np.asarray(target)).sum())


def test_ratio_modes_use_the_ratio(ratio_graph):
    img = _frame((150, 120), seed=11)
    target = [0.15, 0.15, 0.7]
    res = {m: Segmenter(ratio_graph, ratio_mode=m, overlap=0.25).segment(img, ratio=target)
           for m in ("none", "global", "local", "calibrate")}
    base = _distance(res["none"], target)
    for mode in ("global", "local", "calibrate"):
        assert _distance(res[mode], target) < base, mode
    # calibrated probabilities are the ones the labels are the argmax of
    cal = Segmenter(ratio_graph, ratio_mode="calibrate").segment(img, ratio=target, return_probabilities=True)
    assert (np.argmax(cal.probabilities, axis=0) == cal.labels).mean() > 0.999  # up to float ties
    np.testing.assert_allclose(cal.probabilities.sum(axis=0), 1, atol=1e-5)
    # without a ratio, every mode is the same ratio-free pass
    free = {m: Segmenter(ratio_graph, ratio_mode=m).segment(img).labels for m in ("global", "local", "calibrate")}
    assert all(np.array_equal(v, res["none"].labels) for v in free.values())


def test_local_mode_runs_two_passes_and_calibrate_a_sampled_one(monkeypatch):
    from phaseedge import strategies

    monkeypatch.setattr(strategies, "CALIBRATE_PIXELS", 32 * 16 * 16)  # 32 of this grid's 16-px tiles
    img = _frame((100, 100), seed=2)
    counts = {}
    for mode in ("global", "local", "calibrate"):
        backend = AffineBackend(tile=16, max_batch=4)
        Segmenter(backend, ratio_mode=mode).segment(img, ratio=[0.3, 0.7])
        counts[mode] = backend.calls
    assert counts["local"] == 2 * counts["global"]
    assert counts["global"] < counts["calibrate"] <= counts["global"] + -(-32 // 4)


def test_local_ratios_match_the_frame_total_and_stay_ratios():
    rng = np.random.default_rng(0)
    f = rng.dirichlet([1, 1, 1], size=12)
    area = rng.integers(50, 200, 12).astype(float)
    target = np.array([0.5, 0.3, 0.2])
    out = local_ratios(f, area, target)
    np.testing.assert_allclose(out.sum(axis=1), 1, atol=1e-6)
    np.testing.assert_allclose((out * (area / area.sum())[:, None]).sum(axis=0), target, atol=1e-4)
    # tiles keep their order of class content
    assert np.corrcoef(out[:, 0], f[:, 0])[0, 1] > 0.5
    zero = local_ratios(f, area, np.array([0.0, 0.5, 0.5]))
    assert np.all(zero[:, 0] == 0) and np.all(np.isfinite(zero))


# ------------------------------------------------------------------ memory and imports
def test_stitching_memory_is_a_band_not_the_frame():
    """Peak allocations while segmenting stay near labels + one band, far below a
    full-frame probability buffer (n x H x W float32)."""
    h, w, tile = 1200, 900, 64
    img = _frame((h, w))
    seg = Segmenter(AffineBackend(tile=tile, max_batch=8), overlap=0.25)
    seg.segment(img[:100, :100])  # warm up lazy imports outside the measurement
    tracemalloc.start()
    seg.segment(img)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    labels = h * w
    band = 3 * tile * w * 4  # n + 1 float32 rows of one band
    full_frame_probs = 2 * h * w * 4
    assert peak < labels + 4 * band + 4 * 1024 * 1024
    assert peak < full_frame_probs / 2


def test_import_stays_light():
    code = ("import sys, phaseedge; phaseedge.Segmenter; phaseedge.Result; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_pycromanager_processor_adds_fractions(affine):
    from phaseedge.adapters import pycromanager_processor

    seg = Segmenter(affine)
    fn = pycromanager_processor(seg, ratio=[1, 1])
    img = _frame((40, 30))
    meta = {"Axes": {"time": 0}}
    out_img, out_meta = fn(img, meta)
    assert out_img is img and meta == {"Axes": {"time": 0}}
    assert out_meta["phaseedge"]["fractions"] == seg.segment(img, ratio=[1, 1]).fractions
    assert out_meta["phaseedge"]["ratio"] == [0.5, 0.5]
    _, bad = fn(np.full((4, 4), np.nan, np.float32), {})
    assert "NaN" in bad["phaseedge"]["error"]
    with pytest.raises(ValueError, match="NaN"):
        pycromanager_processor(seg, on_error="raise")(np.full((4, 4), np.nan, np.float32), {})
    with pytest.raises(ValueError, match="negative"):
        pycromanager_processor(seg, ratio=[-1, 2])


def test_a_failing_batch_closes_the_backend_pipeline_at_once():
    class Broken(AffineBackend):
        closed = False

        def infer_many(self, batches):
            try:
                for k, (images, ratio) in enumerate(batches):
                    out = self.infer(images, ratio)
                    yield out if k < 2 else out[:, :1]  # third batch: wrong shape
            finally:
                Broken.closed = True

    seg = Segmenter(Broken(tile=16, max_batch=2))
    with pytest.raises(RuntimeError, match="returned shape") as excinfo:
        seg.segment(_frame((80, 80)))
    # closed although the traceback (held by excinfo, as by any error handler or logger)
    # still references the frames: not left for the garbage collector, because a GPU
    # backend holds its pipeline lock until its iterator ends
    assert excinfo.traceback and Broken.closed


def test_overlay_colours_classes_and_draws_a_legend(affine):
    from phaseedge.result import palette

    img = _frame((600, 700), seed=4)
    r = Segmenter(affine).segment(img)
    plain = r.overlay(img, alpha=1.0, legend=False)
    assert plain.shape == (600, 700, 3) and plain.dtype == np.uint8
    assert np.array_equal(plain, palette(2)[r.labels])  # alpha 1: pure class colours
    with_legend = r.overlay(img)
    assert not np.array_equal(with_legend[:20, :20], r.overlay(img, legend=False)[:20, :20])
    with pytest.raises(ValueError, match="differs"):
        r.overlay(img[:10])
    with pytest.raises(ValueError, match="alpha"):
        r.overlay(img, alpha=2)


def test_pipelined_backend_gives_the_same_result():
    class Ahead(AffineBackend):
        def infer_many(self, batches):
            return self.infer_ahead(batches)

    img = _frame((150, 170), seed=9)
    a = Segmenter(Ahead(tile=24, max_batch=3), overlap=0.5).segment(img, return_probabilities=True)
    b = Segmenter(AffineBackend(tile=24, max_batch=3), overlap=0.5).segment(img, return_probabilities=True)
    assert np.array_equal(a.probabilities, b.probabilities) and np.array_equal(a.labels, b.labels)


def test_paths_and_io_frames_are_accepted_everywhere(affine, tmp_path):
    import tifffile

    from phaseedge.io import read_image

    img = _frame((60, 80), seed=12)
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, img)
    seg = Segmenter(affine)
    ref = seg.segment(img).labels
    assert np.array_equal(seg.segment(path).labels, ref)
    assert np.array_equal(seg.segment(read_image(path)).labels, ref)
    assert np.array_equal(seg.submit(read_image(path)).result(30).labels, ref)
    assert np.array_equal(seg.submit(str(path)).result(30).labels, ref)
    assert all(np.array_equal(r.labels, ref) for r in seg.segment_many([path, read_image(path)]))
    seg.close()


def test_frames_are_resampled_to_the_model_pixel_size(affine):
    import cv2

    from phaseedge.io import Frame
    from phaseedge.resample import resample_frame

    img = _frame((90, 120), seed=21)
    frame = Frame(pixels=img, path=None, pixel_size_m=10e-9, band_rows=0, bits=16)
    plain = Segmenter(affine)
    seg = Segmenter(affine, model_pixel_size_m=20e-9)  # the model saw 2x coarser pixels
    res = seg.segment(frame, return_probabilities=True)
    # same as segmenting the half-size frame, then taking the argmax of its probabilities
    # resampled (bilinear) to the frame's grid: smooth boundaries at the frame's resolution
    small = plain.segment(resample_frame(img, 0.5), return_probabilities=True)
    assert small.labels.shape == (45, 60)
    up = np.stack([cv2.resize(c, (120, 90), interpolation=cv2.INTER_LINEAR) for c in small.probabilities])
    expected = up.argmax(axis=0).astype(np.uint8)
    assert res.labels.shape == img.shape and np.array_equal(res.labels, expected)
    assert res.probabilities.shape == (2, 90, 120)
    assert np.allclose(res.probabilities.sum(axis=0), 1.0, atol=1e-3)  # the graph outputs float16
    counts = np.bincount(expected.ravel(), minlength=2)
    assert list(res.fractions.values()) == pytest.approx(list(counts / counts.sum()))
    # submit keeps the Frame's pixel size; frames without one, or at the model's size, are not resampled
    assert np.array_equal(seg.submit(frame).result(30).labels, expected)
    assert np.array_equal(seg.segment(img).labels, plain.segment(img).labels)
    same = Frame(pixels=img, path=None, pixel_size_m=20.1e-9, band_rows=0, bits=16)
    assert np.array_equal(seg.segment(same).labels, plain.segment(img).labels)
    seg.close()
    plain.close()


def test_the_models_own_pixel_size_is_the_default(affine):
    from phaseedge.io import Frame

    img = _frame((90, 120), seed=22)
    frame = Frame(pixels=img, path=None, pixel_size_m=10e-9, band_rows=0, bits=16)
    explicit = Segmenter(affine, model_pixel_size_m=20e-9).segment(frame).labels
    seg = Segmenter(affine)
    seg.backend.pixel_size_m = 20e-9  # what a sidecar or checkpoint config with pixel_size_m gives
    assert np.array_equal(seg.segment(frame).labels, explicit)
    override = Segmenter(affine, model_pixel_size_m=10e-9)
    override.backend.pixel_size_m = 20e-9
    assert np.array_equal(override.segment(frame).labels, Segmenter(affine).segment(img).labels)


@pytest.mark.parametrize("bad", [0, -1e-9, float("nan"), "20nm", True])
def test_bad_model_pixel_size_is_refused(affine, bad):
    with pytest.raises(ValueError, match="model_pixel_size_m"):
        Segmenter(affine, model_pixel_size_m=bad)


def test_resampling_to_nothing_is_refused():
    from phaseedge.resample import resample_frame

    with pytest.raises(ValueError, match="too small"):
        resample_frame(np.zeros((10, 10), np.uint16), 0.1)
