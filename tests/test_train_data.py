"""Labelled-folder loading, band cropping, bad-data errors, crops and the simulated ratio input."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile

pytest.importorskip("torch")

from phaseedge.train.augment import (
    AugmentConfig,
    CropSampler,
    RatioConfig,
    input_ratios,
    sliding_windows,
    true_ratios,
    window_origins,
)
from phaseedge.train.data import load_folder, read_split, synthetic

from phaseedge import synth
from phaseedge.normalize import frame_range

IDENTITY = AugmentConfig(
    flip=False,
    rot90=False,
    max_angle=0.0,
    scale=(1.0, 1.0),
    brightness=0.0,
    contrast=(1.0, 1.0),
    gamma=(1.0, 1.0),
)


def _folder(tmp_path, frames: dict, masks: dict):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name, img in frames.items():
        if name.endswith(".tif"):
            tifffile.imwrite(tmp_path / "images" / name, img)
        else:
            cv2.imwrite(str(tmp_path / "images" / name), img)
    for name, m in masks.items():
        cv2.imwrite(str(tmp_path / "labels" / f"{name}.png"), m)
    return tmp_path


def test_band_crop_16bit_and_rgb_mask(tmp_path):
    img16, mask = synth.micrograph((80, 64), n_phases=3, seed=7, dtype=np.uint16, band=12)
    img8, mask8 = synth.micrograph((40, 48), n_phases=3, seed=8, dtype=np.uint8)
    rgb_mask = np.repeat(mask8[..., None], 3, axis=2)  # like MetalDAM's micrograph26.png
    root = _folder(tmp_path, {"a.tif": img16, "b.png": img8}, {"a": mask, "b": rgb_mask})
    (tmp_path / "split.txt").write_text("b\n# comment\n\na.tif\n")
    items = load_folder(root, 3, read_split(tmp_path / "split.txt"))
    assert [it.name for it in items] == ["b", "a"]
    a = items[1]
    assert a.image.shape == mask.shape == (68, 64) and a.image.dtype == np.uint16
    np.testing.assert_array_equal(a.image, img16[:68])
    np.testing.assert_array_equal(items[0].mask, mask8)
    lo, hi = frame_range(img16[:68])
    np.testing.assert_allclose(a.normalized, np.clip((img16[:68] - lo) / (hi - lo), 0, 1), atol=1e-6)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no mask"),
        ("values", "label value 3"),
        ("small", "smaller than its mask"),
        ("colour", "colour"),
    ],
)
def test_bad_data_names_the_file(tmp_path, case, message):
    img, mask = synth.micrograph((32, 32), n_phases=3, seed=1, dtype=np.uint8)
    masks = {"x": mask}
    if case == "missing":
        masks = {}
    elif case == "values":
        masks = {"x": np.where(mask == 0, 3, mask).astype(np.uint8)}
    elif case == "small":
        img = img[:20]
    elif case == "colour":
        img = np.stack([img, img, 255 - img], axis=2)
    root = _folder(tmp_path, {"x.png": img}, masks)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as err:
        load_folder(root, 3)
    assert "x.png" in str(err.value)


def test_identity_crops_are_frame_windows():
    items = synthetic([5], (96, 80), n_classes=3)
    sampler = CropSampler(items, 32, IDENTITY)
    images, masks = sampler.sample(6, np.random.default_rng(0))
    frame, mask = items[0].normalized, items[0].mask
    for img, m in zip(images[:, 0].numpy(), masks.numpy()):
        hits = [
            (y, x)
            for y in range(96 - 31)
            for x in range(80 - 31)
            if np.array_equal(mask[y : y + 32, x : x + 32], m)
            and np.allclose(frame[y : y + 32, x : x + 32], img, atol=1e-5)
        ]
        assert hits, "an unaugmented crop must be an exact window of the frame"


def test_augmented_crops_keep_image_and_mask_aligned():
    """Mask pixels of one class must still sit on that class's grey texture after warping:
    compare mean grey per class in crops with the frame's, for a frame whose phases differ in grey."""
    mask = np.zeros((128, 128), np.uint8)
    mask[:, 64:] = 1
    mask[40:90, 20:50] = 2
    image = (mask * 100 + 20).astype(np.uint8)
    from phaseedge.train.data import LabelledImage

    item = LabelledImage("steps", image, mask)
    cfg = AugmentConfig(brightness=0.0, contrast=(1.0, 1.0), gamma=(1.0, 1.0))
    images, masks = CropSampler([item], 48, cfg).sample(16, np.random.default_rng(3))
    assert set(np.unique(masks.numpy())) <= {0, 1, 2}
    for k in range(3):
        sel = masks.numpy() == k
        if sel.sum() > 100:
            vals = images[:, 0].numpy()[sel]
            expected = item.normalized[mask == k][0]
            assert (
                np.median(np.abs(vals - expected)) < 1e-3
            )  # nearest mask vs bilinear image agree inside regions


def test_sliding_windows_cover_frames_and_pad_small_ones():
    assert window_origins(100, 70, 32) == [(y, x) for y in (0, 32, 64, 68) for x in (0, 32, 38)]
    items = synthetic([1], (20, 40), 3)
    batches = list(sliding_windows(items, 32, 4))
    assert len(batches) == 1 and batches[0][0].shape == (2, 1, 32, 32)
    np.testing.assert_array_equal(batches[0][1][0, :20, :32].numpy(), items[0].mask[:, :32])


def test_ratio_input_follows_eq4_eq5():
    import torch

    masks = torch.from_numpy(np.stack([np.repeat(np.arange(3), [70, 18, 12]).reshape(10, 10)] * 400))
    truth = true_ratios(masks, 3)[0].numpy()
    np.testing.assert_allclose(truth, [0.70, 0.18, 0.12], atol=1e-6)
    r = input_ratios(masks, 3, np.random.default_rng(1), RatioConfig(alpha_min=0.3, p_zero=0.25)).numpy()
    zero = (r == 0).all(axis=1)
    assert 0.15 < zero.mean() < 0.35
    g = r[~zero]
    np.testing.assert_allclose(g.sum(axis=1), 1.0, atol=1e-5)
    # each guess is G_i = a P_i + (1 - a)(1 - P_i)/(n - 1) with one a per crop, a in [0.3, 1]
    spread = (1 - truth) / 2
    alphas = (g - spread) / (truth - spread)
    np.testing.assert_allclose(alphas, alphas[:, :1].repeat(3, axis=1), atol=1e-4)
    assert alphas.min() >= 0.3 - 1e-4 and alphas.max() <= 1 + 1e-4
    assert alphas[:, 0].std() > 0.15  # drawn over the range, not a constant
