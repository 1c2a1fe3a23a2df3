"""Training objective (paper Sec. 3.2): weighted Dice + cross-entropy, plus lambda * MSE
between the predicted soft phase ratio (mean softmax over the crop) and the crop's true ratio.

``lovasz_weight`` adds the Lovász-softmax loss (Berman et al. 2018), a convex surrogate of
the per-class Jaccard index computed over the batch: it ranks each class's pixel errors and
weights them by how much each one costs the IoU. Measured against Dice for MetalDAM, where most
errors lie on phase boundaries, it scored lower and costs a sort per class and head, so it is
off by default (docs/results.md, "Levers on the single model").

With deep supervision (a U-Net's ``deep_supervision`` heads) each coarser head adds its own
Dice + CE against the mask sampled at its grid, weighted 1/2, 1/4, ... and the segmentation
terms normalised to sum 1, as nnU-Net does; the ratio term stays on the full-resolution output.

The ratio term is what ties the PLM's output to its ratio input; it is kept for the
baseline too, so that the only difference between the two runs is the module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from phaseedge.train.settings import check_known


@dataclass
class LossConfig:
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    ratio_weight: float = 1.0  # lambda
    lovasz_weight: float = 0.0
    class_weights: str | list[float] | None = "auto"  # "auto": from training pixel frequencies
    smooth: float = 1.0  # Dice smoothing, in pixels

    @classmethod
    def from_dict(cls, d: dict) -> LossConfig:
        check_known(cls, d, "loss")
        cfg = cls(**d)
        for name in ("dice_weight", "ce_weight", "ratio_weight", "lovasz_weight", "smooth"):
            if getattr(cfg, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0")
        if isinstance(cfg.class_weights, str) and cfg.class_weights != "auto":
            raise ValueError(f"loss.class_weights must be 'auto', null or a list, got {cfg.class_weights!r}")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


def auto_class_weights(frequencies: np.ndarray, cap: float = 10.0) -> np.ndarray:
    """Inverse square-root frequency, mean 1, capped: rare phases (MetalDAM's precipitates,
    0.24 % of pixels) count without letting one noisy class dominate."""
    f = np.asarray(frequencies, np.float64)
    w = 1.0 / np.sqrt(np.maximum(f, 1e-4))
    w = w / w[f > 0].mean() if (f > 0).any() else np.ones_like(f)
    return np.minimum(w, cap).astype(np.float32)


def resolve_class_weights(cfg: LossConfig, frequencies: np.ndarray) -> np.ndarray:
    n = len(frequencies)
    if cfg.class_weights is None:
        return np.ones(n, np.float32)
    if cfg.class_weights == "auto":
        return auto_class_weights(frequencies)
    w = np.asarray(cfg.class_weights, np.float32)
    if w.shape != (n,) or (w < 0).any():
        raise ValueError(f"loss.class_weights must be {n} non-negative numbers, got {cfg.class_weights}")
    return w


def soft_dice_loss(
    probs: torch.Tensor, onehot: torch.Tensor, weights: torch.Tensor, smooth: float
) -> torch.Tensor:
    """1 - weighted mean over classes of the batch soft Dice; classes absent from both the
    batch's truth and prediction give Dice 1 through the smoothing term."""
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)
    return 1.0 - (dice * weights).sum() / weights.sum()


def lovasz_softmax_loss(probs: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over the classes present in the batch's truth of the Lovász extension of
    1 - IoU (Berman et al. 2018, ``classes='present'``), pooled over the batch's pixels."""
    n = probs.shape[1]
    flat = probs.permute(0, 2, 3, 1).reshape(-1, n)
    labels = masks.reshape(-1)
    losses, ws = [], []
    for c in range(n):
        fg = (labels == c).to(flat.dtype)
        if not fg.any() or weights[c] == 0:
            continue
        errors, order = torch.sort((fg - flat[:, c]).abs(), descending=True)
        fg_sorted = fg[order]
        # gradient of the Jaccard loss along the sorted errors (the Lovász extension's weights)
        inter = fg_sorted.sum() - fg_sorted.cumsum(0)
        union = fg_sorted.sum() + (1.0 - fg_sorted).cumsum(0)
        jac = 1.0 - inter / union
        grad = torch.cat([jac[:1], jac[1:] - jac[:-1]])
        losses.append(torch.dot(errors, grad))
        ws.append(weights[c])
    if not losses:
        return probs.sum() * 0.0
    w = torch.stack(ws)
    return (torch.stack(losses) * w).sum() / w.sum()


def _seg_terms(
    logits: torch.Tensor, masks: torch.Tensor, w: torch.Tensor, cfg: LossConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(CE, Dice loss, Lovász loss, softmax) of fp32 logits [B,n,h,w] against masks [B,h,w];
    the Lovász term is 0 unless it is weighted (it sorts every pixel of every class)."""
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(masks, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    lovasz = lovasz_softmax_loss(probs, masks, w) if cfg.lovasz_weight else probs.new_zeros(())
    return F.cross_entropy(logits, masks, weight=w), soft_dice_loss(probs, onehot, w, cfg.smooth), lovasz, probs


def _weighted(cfg: LossConfig, ce: torch.Tensor, dice: torch.Tensor, lovasz: torch.Tensor) -> torch.Tensor:
    return cfg.ce_weight * ce + cfg.dice_weight * dice + cfg.lovasz_weight * lovasz


def _mask_at(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The mask at a coarser head's grid: the pixel at the centre of each cell."""
    sy, sx = masks.shape[1] // size[0], masks.shape[2] // size[1]
    if sy < 1 or sx < 1 or masks.shape[1] != sy * size[0] or masks.shape[2] != sx * size[1]:
        raise ValueError(f"a deep-supervision head of {size} does not divide the mask {tuple(masks.shape[1:])}")
    return masks[:, sy // 2::sy, sx // 2::sx]


def segmentation_loss(
    logits: torch.Tensor,
    masks: torch.Tensor,
    ratio_true: torch.Tensor,
    class_weights: torch.Tensor,
    cfg: LossConfig,
    aux_logits: list[torch.Tensor] | None = None,
    soft: torch.Tensor | None = None,
    soft_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts. logits [B,n,T,T], masks int64 [B,T,T], ratio_true [B,n];
    ``aux_logits``: deep-supervision heads, finest first (each coarser by 2); ``soft``: a
    distillation teacher's probabilities [B,n,T,T], ``soft_weight`` of the CE target
    (``phaseedge.train.distill``; Dice stays on the annotation)."""
    w = class_weights.to(logits.device, torch.float32)
    ce, dice, lovasz, probs = _seg_terms(logits.float(), masks, w, cfg)  # the loss in fp32 under autocast
    extra = {}
    if soft is not None and soft_weight:
        ce_teacher = F.cross_entropy(logits.float(), soft.to(logits.device, torch.float32), weight=w)
        extra["ce_teacher"] = ce_teacher
        ce = (1.0 - soft_weight) * ce + soft_weight * ce_teacher
    seg = _weighted(cfg, ce, dice, lovasz)
    if aux_logits:
        total_weight = 1.0
        for k, aux in enumerate(aux_logits):
            a_ce, a_dice, a_lovasz, _ = _seg_terms(aux.float(), _mask_at(masks, tuple(aux.shape[-2:])), w, cfg)
            seg = seg + 0.5 ** (k + 1) * _weighted(cfg, a_ce, a_dice, a_lovasz)
            total_weight += 0.5 ** (k + 1)
        seg = seg / total_weight
    ratio_mse = F.mse_loss(probs.mean(dim=(2, 3)), ratio_true.to(probs))
    total = seg + cfg.ratio_weight * ratio_mse
    parts = {"loss": total, "ce": ce, "dice_loss": dice, "ratio_mse": ratio_mse, **extra}
    if cfg.lovasz_weight:
        parts["lovasz_loss"] = lovasz
    return total, {k: v.item() for k, v in parts.items()}
