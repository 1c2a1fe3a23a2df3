"""Distillation: teacher maps warp with the crops, the loss mixes them in, a fit runs with a teacher."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from phaseedge.train.augment import AugmentConfig, CropSampler
from phaseedge.train.distill import DistillConfig, teacher_probabilities
from phaseedge.train.loop import fit
from phaseedge.train.losses import LossConfig, segmentation_loss
from tiny_fit import NAMES, tiny_config


def _onehot(mask: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n, dtype=np.float32)[mask].transpose(2, 0, 1)


def test_soft_targets_follow_each_crop_and_draw_nothing(fit_frames):
    items = fit_frames[0]
    cfg = AugmentConfig(max_angle=0.0, scale=(1.0, 1.0), class_centred=0.5)  # flips and 90-degree turns
    soft = [_onehot(it.mask, 3) for it in items]
    plain = CropSampler(items, 32, cfg).sample(6, np.random.default_rng(4), return_index=True)
    images, masks, idx, warped = CropSampler(items, 32, cfg, soft=soft).sample(
        6, np.random.default_rng(4), return_index=True, return_soft=True)
    assert torch.equal(images, plain[0]) and torch.equal(masks, plain[1]) and torch.equal(idx, plain[2])
    assert warped.shape == (6, 3, 32, 32)
    assert torch.equal(warped.argmax(dim=1), masks)  # on the pixel grid: the one-hot map is the mask
    with pytest.raises(ValueError, match="no soft targets"):
        CropSampler(items, 32, cfg).sample(2, np.random.default_rng(0), return_soft=True)
    with pytest.raises(ValueError, match="one \\[n,H,W\\] array per frame"):
        CropSampler(items, 32, cfg, soft=soft[:1])


def test_loss_mixes_the_teacher_into_the_ce_target():
    torch.manual_seed(0)
    masks = torch.randint(0, 3, (2, 8, 8))
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    ratio = torch.full((2, 3), 1 / 3)
    w, cfg = torch.ones(3), LossConfig()
    hard, _ = segmentation_loss(logits, masks, ratio, w, cfg)
    onehot = torch.nn.functional.one_hot(masks, 3).permute(0, 3, 1, 2).float()
    same, parts = segmentation_loss(logits, masks, ratio, w, cfg, soft=onehot, soft_weight=0.5)
    assert torch.allclose(same, hard) and "ce_teacher" in parts  # a teacher that agrees changes nothing
    uniform = torch.full_like(onehot, 1 / 3)
    mixed, parts = segmentation_loss(logits, masks, ratio, w, cfg, soft=uniform, soft_weight=0.5)
    expected = (0.5 * torch.nn.functional.cross_entropy(logits, masks) - 0.5 * logits.log_softmax(1).mean(1).mean()).detach()
    assert abs(parts["ce"] - expected.item()) < 1e-5
    grad_hard = torch.autograd.grad(hard, logits)[0]
    grad_mixed = torch.autograd.grad(mixed, logits)[0]
    assert not torch.allclose(grad_hard, grad_mixed)


def test_bad_distill_settings_are_refused():
    for bad in ({"weight": 0.0}, {"weight": 1.5}, {"weight": True}, {"scales": []}, {"scales": [0.9, -1]},
                {"teacher": 3}, {"teachers": "x"}):
        with pytest.raises(ValueError):
            DistillConfig.from_dict(bad)




def test_a_fit_learns_from_a_teacher(fit_frames, tmp_path):
    train, val = fit_frames
    fit(tiny_config(epochs=1), train, val, tmp_path / "teacher", progress=False)
    teacher = str(tmp_path / "teacher" / "best")
    probs = teacher_probabilities(DistillConfig(teacher=teacher, scales=[0.9, 1.0]), train, NAMES)
    assert [p.shape for p in probs] == [(3, *it.mask.shape) for it in train]
    assert all(np.allclose(p.sum(axis=0), 1.0, atol=1e-3) for p in probs)

    out = tmp_path / "student"
    fit(tiny_config(epochs=1, distill={"teacher": teacher, "weight": 0.7}), train, val, out, progress=False)
    record = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert record["train"]["ce_teacher"] > 0
    assert json.loads((out / "config.json").read_text())["distill"] == {"teacher": teacher, "weight": 0.7,
                                                                         "scales": None}
    with pytest.raises(ValueError, match="not the student's"):
        teacher_probabilities(DistillConfig(teacher=teacher), train, ["a", "b", "c"])
    with pytest.raises(FileNotFoundError, match="teacher not found"):
        fit(tiny_config(epochs=1, distill={"teacher": str(tmp_path / "nowhere")}), train, val, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()  # nothing half-written
