"""Test-time augmentation: exact for equivariant models, averaging otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from phaseedge import Segmenter, tta
from phaseedge.backends.base import Backend


class Pointwise(Backend):
    """probs = a fixed pointwise function of the pixel: equivariant to any flip."""

    name = "pointwise"

    def __init__(self, tile: int = 32, n: int = 3) -> None:
        self.tile, self.n_classes, self.max_batch = tile, n, 4
        self.class_names = tuple(f"c{i}" for i in range(n))
        self.calls = 0

    def infer(self, images, ratio):
        self.calls += 1
        x = images.astype(np.float32)
        logits = np.concatenate([x * k for k in range(self.n_classes)], axis=1) * 3.0
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class LeftBiased(Pointwise):
    """Class 1 on the left half of every tile: not flip-equivariant."""

    def infer(self, images, ratio):
        self.calls += 1
        b, _, t, _ = images.shape
        p = np.zeros((b, 2, t, t), np.float32)
        p[:, 1, :, : t // 2] = 1.0
        p[:, 0, :, t // 2 :] = 1.0
        return p


@pytest.mark.parametrize("mode", [True, "flips", "d4"])
def test_identity_model_gives_identical_output_with_tta(mode):
    frame = np.random.default_rng(0).integers(0, 65535, (97, 75), dtype=np.uint16)
    plain_backend = Pointwise()
    plain = Segmenter(plain_backend, overlap=0.25).segment(frame, return_probabilities=True)
    backend = Pointwise()
    seg = Segmenter(backend, overlap=0.25, tta=mode)
    augmented = seg.segment(frame, return_probabilities=True)
    np.testing.assert_array_equal(plain.labels, augmented.labels)
    np.testing.assert_array_equal(plain.probabilities, augmented.probabilities)
    passes = len(tta.MODES[seg.tta])
    assert seg.tta == ("flips" if mode is True else mode)
    assert backend.calls == passes * plain_backend.calls and plain_backend.calls >= 1


def test_tta_averages_the_unflipped_passes():
    backend = LeftBiased(tile=8, n=2)
    images = np.zeros((1, 1, 8, 8), np.float16)
    (probs,) = list(tta.infer(backend, [(images, np.zeros((1, 2), np.float32))], "flips"))
    np.testing.assert_array_equal(probs, np.full((1, 2, 8, 8), 0.5, np.float32))  # left/right cancel


class TopLeft(Pointwise):
    """Class 1 only on the tile's first row: moves under transposition as well as flips."""

    def infer(self, images, ratio):
        self.calls += 1
        b, _, t, _ = images.shape
        p = np.zeros((b, 2, t, t), np.float32)
        p[:, 0] = 1.0
        p[:, 1, 0, :] = 1.0
        p[:, 0, 0, :] = 0.0
        return p


def test_d4_maps_each_pass_back():
    """Each pass's output is mapped back to the tile: first row/last row/first column/last column."""
    (probs,) = list(tta.infer(TopLeft(tile=4, n=2), [(np.zeros((1, 1, 4, 4), np.float16),
                                                      np.zeros((1, 2), np.float32))], "d4"))
    expected = np.zeros((4, 4), np.float32)
    for transpose, rows, cols in tta.D4:  # where the row lands in the un-augmented tile
        m = np.zeros((4, 4), np.float32)
        m[0, :] = 1.0
        m = m.T if transpose else m
        m = np.flip(m, axis=tuple(ax for ax, on in ((0, rows), (1, cols)) if on)) if rows or cols else m
        expected += m
    expected /= len(tta.D4)
    np.testing.assert_allclose(probs[0, 1], expected)
    assert expected[0, 1] == 0.25 and expected[1, 1] == 0.0  # edges only, each edge a quarter of the passes
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


@pytest.mark.parametrize("bad", ["yes", 1, "rot"])
def test_tta_must_be_a_known_mode(bad):
    with pytest.raises(ValueError, match="tta"):
        Segmenter(Pointwise(), tta=bad)


def _cli_parser():
    """A command line with image paths and the test-time options, as `phaseedge segment` has."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("images", nargs="+")
    tta.add_arguments(p)
    return p


def test_cli_options_do_not_swallow_the_image_path():
    p = _cli_parser()
    args = p.parse_args(["--tta", "a.tif", "b.tif"])
    assert args.tta == "flips" and args.images == ["a.tif", "b.tif"]
    assert p.parse_args(["a.tif"]).tta is None
    assert p.parse_args(["--tta-mode", "d4", "a.tif"]).tta == "d4"
    with pytest.raises(SystemExit):
        p.parse_args(["--tta-mode", "rot", "a.tif"])


# ------------------------------------------------------------------ multi-scale inference
def _ramp(h: int = 97, w: int = 75) -> np.ndarray:
    """A smooth frame: resampling it changes almost nothing, so every scale sees the same phases."""
    y, x = np.mgrid[0:h, 0:w]
    return (60000.0 * (0.6 * x / w + 0.4 * y / h)).astype(np.uint16)


def test_scales_default_to_one_pass_at_the_models_pixel_size():
    frame = _ramp()
    a, b = Pointwise(), Pointwise()
    plain = Segmenter(a, overlap=0.25).segment(frame, return_probabilities=True)
    one = Segmenter(b, overlap=0.25, scales=[1.0]).segment(frame, return_probabilities=True)
    assert Segmenter(Pointwise()).scales == (1.0,)
    np.testing.assert_array_equal(plain.probabilities, one.probabilities)
    assert a.calls == b.calls


def test_multi_scale_averages_each_scales_probabilities_on_the_frame_grid():
    frame = _ramp()
    fine_only = Segmenter(Pointwise(), overlap=0.25, scales=(0.5,)).segment(frame, return_probabilities=True)
    plain = Segmenter(Pointwise(), overlap=0.25).segment(frame, return_probabilities=True)
    backend = Pointwise()
    both = Segmenter(backend, overlap=0.25, scales=(0.5, 1.0)).segment(frame, return_probabilities=True)
    assert fine_only.probabilities.shape == both.probabilities.shape == (3, 97, 75)  # the frame's own grid
    np.testing.assert_array_equal(both.probabilities,
                                  (fine_only.probabilities + plain.probabilities) / np.float32(2))
    np.testing.assert_array_equal(both.labels, both.probabilities.argmax(axis=0))
    assert both.counts.sum() == frame.size and both.fractions == pytest.approx(
        {c: float((both.labels == i).mean()) for i, c in enumerate(both.class_names)})
    # the 0.5 pass segments a frame of twice the side: about four times the tiles of the plain pass
    plain_calls = Pointwise()
    Segmenter(plain_calls, overlap=0.25).segment(frame)
    assert backend.calls > 3 * plain_calls.calls
    # a smooth frame is segmented alike at both scales
    assert (fine_only.labels == plain.labels).mean() > 0.98
    assert both.timings["total"] >= both.timings["infer"] > 0


def test_prepare_scales_resamples_by_pixel_size_or_by_the_scale_alone():
    from phaseedge.io import Frame
    from phaseedge.prepare import prepare_scales

    norm = {"method": "percentile", "low": 0.5, "high": 99.5}
    frame = _ramp(40, 30)
    plain, fine = prepare_scales(frame, norm, 5e-8, (1.0, 0.5))  # unknown pixel size: taken as the model's
    assert plain.frame.shape == (40, 30) and plain.original_shape is None
    assert fine.frame.shape == (80, 60) and fine.original_shape == (40, 30)
    tagged = Frame(pixels=frame, path=None, pixel_size_m=1e-7, band_rows=0, bits=16)
    at_model, coarse = prepare_scales(tagged, norm, 5e-8, (1.0, 2.0))  # frame pixels twice the model's
    assert at_model.frame.shape == (80, 60) and coarse.frame.shape == (40, 30) and coarse.original_shape is None


@pytest.mark.parametrize("bad", [(), (1.0, 1.0), (0.0,), (-1.0,), (float("nan"),), (5.0,), ("0.8",), (True,)])
def test_scales_must_be_distinct_numbers_in_range(bad):
    with pytest.raises(ValueError, match="scale"):
        Segmenter(Pointwise(), scales=bad)


def test_scales_on_the_command_line():
    p = _cli_parser()
    assert p.parse_args(["--scales", "0.8,0.9,1", "a.tif"]).scales == (0.8, 0.9, 1.0)
    assert p.parse_args(["a.tif"]).scales is None
    for bad in ("0.8,x", "0.8,0.8", "9"):
        with pytest.raises(SystemExit):
            p.parse_args(["--scales", bad, "a.tif"])


@pytest.mark.parametrize("mode", ["global", "local", "calibrate"])
def test_multi_scale_works_with_every_ratio_mode_and_entry_point(mode):
    frame = _ramp()
    seg = Segmenter(Pointwise(), overlap=0.25, scales=(0.8, 1.0), ratio_mode=mode)
    direct = seg.segment(frame, ratio=[0.5, 0.3, 0.2])
    auto = seg.segment(frame, ratio="auto")
    assert auto.ratio_source == "auto" and auto.ratio is not None
    streamed = list(seg.segment_many([frame, frame], ratio=[0.5, 0.3, 0.2]))
    queued = seg.submit(frame, ratio=[0.5, 0.3, 0.2]).result(timeout=60)
    for other in (*streamed, queued):
        np.testing.assert_array_equal(other.labels, direct.labels)
    assert direct.labels.shape == frame.shape and direct.probabilities is None
    seg.close()


class RatioRecorder(Pointwise):
    """Pointwise, recording the ratio rows each call was fed."""

    def __init__(self) -> None:
        super().__init__()
        self.ratios: list[np.ndarray] = []

    def infer(self, images, ratio):
        self.ratios.append(np.array(ratio, copy=True))
        return super().infer(images, ratio)


@pytest.mark.parametrize("spec", ["auto", {"c0": 0.5, "rest": "auto"}])
def test_multi_scale_resolves_an_estimated_ratio_once_and_feeds_it_to_every_scale(spec):
    frame = _ramp()
    backend = RatioRecorder()
    result = Segmenter(backend, overlap=0.25, scales=(0.8, 1.0)).segment(frame, ratio=spec)
    # the estimate is the one scale 1 alone gives (the reference scale: the model's pixel size)
    alone_backend = RatioRecorder()
    alone = Segmenter(alone_backend, overlap=0.25).segment(frame, ratio=spec)
    np.testing.assert_allclose(result.ratio, alone.ratio)
    assert result.ratio_source == alone.ratio_source
    fed = [row for r in backend.ratios for row in r if row.any()]
    assert fed and all(np.allclose(row, result.ratio) for row in fed)  # every ratio-fed tile, both scales
    # one ratio-free survey in all: the 0.8 scale reuses the estimate instead of surveying again
    def surveyed(calls: list[np.ndarray]) -> int:
        return sum(len(r) for r in calls if not r.any())
    assert surveyed(backend.ratios) == surveyed(alone_backend.ratios) > 0
