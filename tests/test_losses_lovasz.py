"""The Lovász-softmax term (``loss.lovasz_weight``): it is 1 - IoU on hard predictions, it is
off by default, and it trains through the deep-supervision heads like Dice and CE."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from phaseedge.train.losses import LossConfig, lovasz_softmax_loss, segmentation_loss


def _iou(pred: torch.Tensor, truth: torch.Tensor, c: int) -> float:
    inter = ((pred == c) & (truth == c)).sum().item()
    union = ((pred == c) | (truth == c)).sum().item()
    return inter / union


def test_hard_predictions_give_the_mean_jaccard_loss_of_the_present_classes():
    g = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 3, (2, 16, 16), generator=g)  # classes 0..2 of 4: class 3 absent
    pred = torch.where(torch.rand(2, 16, 16, generator=g) < 0.3, torch.randint(0, 4, (2, 16, 16), generator=g), truth)
    probs = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float()
    want = sum(1.0 - _iou(pred, truth, c) for c in range(3)) / 3
    got = lovasz_softmax_loss(probs, truth, torch.ones(4)).item()
    assert got == pytest.approx(want, abs=1e-6)
    assert lovasz_softmax_loss(torch.nn.functional.one_hot(truth, 4).permute(0, 3, 1, 2).float(), truth,
                               torch.ones(4)).item() == pytest.approx(0.0, abs=1e-7)


def test_class_weights_weight_the_per_class_terms():
    truth = torch.tensor([[[0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1, 1]]])  # class 0: IoU 1/2, class 1: IoU 2/3
    probs = torch.nn.functional.one_hot(pred, 2).permute(0, 3, 1, 2).float()
    got = lovasz_softmax_loss(probs, truth, torch.tensor([3.0, 1.0])).item()
    assert got == pytest.approx((3 * 0.5 + 1 * (1 / 3)) / 4, abs=1e-6)


def test_the_term_is_off_by_default_and_reaches_every_head_when_weighted():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    aux = [torch.randn(2, 3, 8, 8, requires_grad=True)]
    masks = torch.randint(0, 3, (2, 16, 16))
    ratio = torch.full((2, 3), 1 / 3)
    w = torch.ones(3)
    _, parts = segmentation_loss(logits, masks, ratio, w, LossConfig(class_weights=None), aux_logits=aux)
    assert "lovasz_loss" not in parts
    only = LossConfig(class_weights=None, dice_weight=0.0, ce_weight=0.0, ratio_weight=0.0, lovasz_weight=1.0)
    total, parts = segmentation_loss(logits, masks, ratio, w, only, aux_logits=aux)
    assert parts["lovasz_loss"] > 0
    total.backward()
    assert logits.grad.abs().sum() > 0 and aux[0].grad.abs().sum() > 0


def test_a_negative_weight_is_refused():
    with pytest.raises(ValueError, match="lovasz_weight"):
        LossConfig.from_dict({"lovasz_weight": -1})
