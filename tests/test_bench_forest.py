"""The classic peer (`phaseedge-bench forest`): ilastik features, balanced sample, forest, pooled scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("scipy")

from phaseedge.bench import cli, forest
from phaseedge.train.data import synthetic

SCALES = (0.7, 1.6, 3.5)  # fewer scales than ilastik's six keep the tests quick
NAMES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def frames():
    """12 small frames; at 96 px most hold one or two phases, synth-11 (the last-but-one) all three."""
    return synthetic(list(range(1, 13)), (96, 96), 3)


@pytest.fixture(scope="module")
def held_out(frames):
    test = frames[10]
    assert test.name == "synth-11" and (np.bincount(test.mask.ravel(), minlength=3) > 1000).all()
    return [f for f in frames if f is not test], test


def test_feature_stack_shape_and_finite(frames):
    feats = forest.pixel_features(frames[0].normalized)
    assert feats.shape == (96, 96, 1 + 8 * len(forest.SCALES)) == (96, 96, len(forest.feature_names()))
    assert feats.dtype == np.float32
    assert np.isfinite(feats).all()
    # largest eigenvalue first; the structure tensor is positive semi-definite
    names = forest.feature_names()
    for s in forest.SCALES:
        st1, st2 = feats[..., names.index(f"st_ev1_{s:g}")], feats[..., names.index(f"st_ev2_{s:g}")]
        h1, h2 = feats[..., names.index(f"hess_ev1_{s:g}")], feats[..., names.index(f"hess_ev2_{s:g}")]
        assert (st1 >= st2).all() and (st2 >= -1e-6).all() and (h1 >= h2).all()
    # the raw channel is the normalised frame barely smoothed; frame_features normalises a raw frame itself
    assert np.abs(feats[..., 0] - frames[0].normalized).mean() < 0.05
    np.testing.assert_array_equal(forest.frame_features(frames[0].image), feats)


def test_balanced_sample(frames):
    masks = [f.mask for f in frames]
    picks = forest.sample_pixels(masks, 3, 50, seed=0)
    for c in range(3):
        idx = [p[c] for p in picks]
        assert sum(i.size for i in idx) == 50
        assert all((m.ravel()[i] == c).all() for m, i in zip(masks, idx))
    again = forest.sample_pixels(masks, 3, 50, seed=0)
    assert all(np.array_equal(a, b) for pa, pb in zip(picks, again) for a, b in zip(pa, pb))
    # a class with fewer pixels than asked gives all it has
    total = sum(int((m == 2).sum()) for m in masks)
    assert sum(p[2].size for p in forest.sample_pixels(masks, 3, 10**9)) == total


def _fit(train, test, seed, per_class=300, trees=10):
    model, counts = forest.train(train, 3, per_class=per_class, trees=trees, seed=seed, scales=SCALES)
    return model, counts, forest.predict_frame(model, test.normalized, SCALES)


def test_deterministic(frames):
    train, test = frames[:2], frames[2]
    _, counts, a = _fit(train, test, 0)
    _, _, b = _fit(train, test, 0)
    available = sum(np.bincount(f.mask.ravel(), minlength=3) for f in train)
    assert counts.tolist() == np.minimum(300, available).tolist()  # class 1 has only 68 pixels
    assert a.dtype == np.uint8 and a.shape == test.mask.shape
    np.testing.assert_array_equal(a, b)
    _, _, c = _fit(train, test, 1)
    assert not np.array_equal(a, c)  # the seed is used


def test_beats_chance(held_out):
    train, test = held_out
    model, counts, _ = _fit(train, test, 0, per_class=500, trees=20)
    assert counts.tolist() == [500, 500, 500]
    report = forest.score(model, [test], NAMES, SCALES)
    truth = np.bincount(test.mask.ravel(), minlength=3) / test.mask.size
    # chance: always the majority class (accuracy 0.49), or uniform guessing (macro Dice about 1/3)
    assert report["pixel_accuracy"] > truth.max() + 0.15
    assert report["macro_dice_3"] > 0.6 and min(report["per_class_dice"].values()) > 0.5
    assert report["pixels"] == 96 * 96 and len(report["per_image"]) == 1
    assert "macro_dice_2" not in report and "macro_dice_main3" not in report


def test_score_labels_subsets():
    names = list(forest.METALDAM_CLASSES)
    truth = np.array([[0, 0, 1, 1, 2, 2, 3, 4]], np.uint8)
    pred = np.array([[0, 0, 1, 1, 2, 2, 4, 4]], np.uint8)  # precipitate missed entirely
    r = forest.score_labels([("x", pred, truth), ("y", truth, truth)], names)
    dice = r["per_class_dice"]  # pooled over both frames
    assert dice["precipitate"] == pytest.approx(2 * 1 / (1 + 2)) and dice["defect"] == pytest.approx(2 * 2 / (3 + 2))
    assert r["macro_dice_5"] == pytest.approx((3 + 2 / 3 + 0.8) / 5)
    assert r["macro_dice_4"] == pytest.approx((3 + 0.8) / 4)
    assert r["macro_dice_main3"] == 1.0
    assert [p["name"] for p in r["per_image"]] == ["x", "y"] and r["per_image"][1]["macro_dice"] == 1.0
    # frame x: predicted fractions differ from true ones in two classes by 1/8 each; frame y exact
    assert r["fraction_mae"] == pytest.approx((2 / 8 / 5 + 0) / 2)


def test_cli_registered(tmp_path, monkeypatch, capsys, frames):
    parser = cli.build_parser()
    args = parser.parse_args(["forest", "--data", "d", "--train-split", "t", "--val-split", "v"])
    assert (args.per_class, args.trees, args.seed, args.class_names) == (20000, 100, 0, forest.METALDAM_CLASSES)
    assert cli.main(["forest", "--data", str(tmp_path / "missing"), "--train-split", str(tmp_path / "t.txt"),
                     "--val-split", str(tmp_path / "v.txt")]) == 2
    assert "error" in capsys.readouterr().err


def test_metaldam_frame_features(metaldam_dir):
    from phaseedge.train.data import load_folder, read_split

    name = read_split(metaldam_dir / "splits" / "val.txt")[0]
    (item,) = load_folder(metaldam_dir, 5, [name])
    crop = item.normalized[:128, :160]  # the whole frame takes seconds; the code path is the same
    feats = forest.pixel_features(crop)
    assert feats.shape == (128, 160, len(forest.feature_names())) and np.isfinite(feats).all()
    assert json.dumps(forest.feature_names())
