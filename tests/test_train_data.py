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
    photometric,
    true_ratios,
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


def test_ratio_input_follows_eq4_eq5():
    import torch

    masks = torch.from_numpy(np.stack([np.repeat(np.arange(3), [70, 18, 12]).reshape(10, 10)] * 400))
    truth = true_ratios(masks, 3)[0].numpy()
    np.testing.assert_allclose(truth, [0.70, 0.18, 0.12], atol=1e-6)
    cfg = RatioConfig(alpha_min=0.3, p_zero=0.25, level="crop")
    r = input_ratios(masks, 3, np.random.default_rng(1), cfg).numpy()
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


def test_frame_level_ratio_is_the_frames_guess_not_the_crops():
    """As deployed: every crop of a frame gets a guess of the whole frame's ratio (Eq. 4-5)."""
    import torch

    masks = torch.zeros(64, 8, 8, dtype=torch.int64)  # crops that hold class 0 only
    frame = np.tile([0.5, 0.3, 0.2], (64, 1))
    cfg = RatioConfig(alpha_min=1.0, p_zero=0.0)  # exact guesses: the input is the frame's truth
    assert cfg.level == "frame"
    r = input_ratios(masks, 3, np.random.default_rng(0), cfg, frame).numpy()
    np.testing.assert_allclose(r, frame, atol=1e-6)
    crop = input_ratios(masks, 3, np.random.default_rng(0), RatioConfig(1.0, 0.0, "crop")).numpy()
    np.testing.assert_allclose(crop, np.tile([1.0, 0.0, 0.0], (64, 1)), atol=1e-6)
    with pytest.raises(ValueError, match="frame"):
        input_ratios(masks, 3, np.random.default_rng(0), cfg)
    with pytest.raises(ValueError, match="level"):
        RatioConfig.from_dict({"level": "tile"})


def test_sampler_reports_the_frame_of_each_crop():
    items = synthetic([1, 2], (64, 64), 3)
    items[1].normalized[:] = 1.0  # frame 1 is white: its crops can be told apart
    images, _, idx = CropSampler(items, 32, IDENTITY).sample(12, np.random.default_rng(0), return_index=True)
    assert idx.shape == (12,) and set(idx.tolist()) <= {0, 1}
    white = images.reshape(12, -1).min(dim=1).values == 1.0
    assert (white.numpy() == (idx.numpy() == 1)).all()


def test_class_centred_crops_oversample_a_rare_class():
    mask = np.zeros((256, 256), np.uint8)
    mask[200:206, 10:16] = 1  # 36 pixels of a rare class in a corner
    from phaseedge.train.data import LabelledImage

    item = LabelledImage("rare", (mask * 200).astype(np.uint8), mask)
    base = AugmentConfig(flip=False, rot90=False, max_angle=0.0, scale=(1.0, 1.0))
    plain = CropSampler([item], 32, base).sample(200, np.random.default_rng(0))[1]
    centred = CropSampler([item], 32, AugmentConfig(**{**base.to_dict(), "class_centred": 1.0}))
    hits = centred.sample(200, np.random.default_rng(0))[1]
    share = lambda m: float((m == 1).any(dim=(1, 2)).float().mean())
    assert share(plain) < 0.1
    assert 0.4 < share(hits) < 0.6  # half the crops pick class 1 of the two present


def test_noise_augmentation_is_seeded_and_bounded():
    import torch

    cfg = AugmentConfig(brightness=0.0, contrast=(1.0, 1.0), gamma=(1.0, 1.0), noise=0.05)
    x = torch.full((4, 1, 16, 16), 0.5)
    a = photometric(x, np.random.default_rng(1), cfg)
    b = photometric(x, np.random.default_rng(1), cfg)
    assert torch.equal(a, b) and float(a.std()) > 0.005 and float(a.min()) >= 0.0
    assert torch.equal(photometric(x, np.random.default_rng(1), AugmentConfig(**{**cfg.to_dict(), "noise": 0.0,
                                                                               "brightness": 0.0})), x)


def test_pixel_size_table_and_resampling(tmp_path):
    from phaseedge.train.data import LabelledImage, read_pixel_sizes, to_pixel_size

    table = tmp_path / "sizes.csv"
    table.write_text("image,pixel_size_m\na.png,2e-8\nb,1e-8\n")
    assert read_pixel_sizes(table) == {"a": 2e-8, "b": 1e-8}
    for bad, message in (("image,size\na,1\n", "columns"), ("image,pixel_size_m\na,-1\n", "metres"),
                         ("image,pixel_size_m\na,1e-8\na,2e-8\n", "twice")):
        table.write_text(bad)
        with pytest.raises(ValueError, match=message):
            read_pixel_sizes(table)
    mask = np.zeros((40, 60), np.uint8)
    mask[:, 30:] = 1
    coarse = LabelledImage("a", (mask * 100).astype(np.uint8), mask, pixel_size_m=2e-8)
    same = LabelledImage("b", coarse.image.copy(), mask.copy(), pixel_size_m=1e-8)
    out = to_pixel_size([coarse, same], 1e-8)
    assert out[0].mask.shape == (80, 120) and out[0].pixel_size_m == 1e-8
    assert out[0].mask[:, :59].max() == 0 and out[0].mask[:, 61:].min() == 1
    assert out[1] is same  # already at the target size: untouched
    with pytest.raises(ValueError, match="pixel size"):
        to_pixel_size([LabelledImage("c", coarse.image, mask)], 1e-8)
