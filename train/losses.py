"""Training objective (paper Sec. 3.2): weighted Dice + cross-entropy, plus lambda * MSE
between the predicted soft phase ratio (mean softmax over the crop) and the crop's true ratio.

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
    class_weights: str | list[float] | None = "auto"  # "auto": from training pixel frequencies
    smooth: float = 1.0  # Dice smoothing, in pixels

    @classmethod
    def from_dict(cls, d: dict) -> LossConfig:
        check_known(cls, d, "loss")
        cfg = cls(**d)
        for name in ("dice_weight", "ce_weight", "ratio_weight", "smooth"):
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


def segmentation_loss(
    logits: torch.Tensor,
    masks: torch.Tensor,
    ratio_true: torch.Tensor,
    class_weights: torch.Tensor,
    cfg: LossConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts. logits [B,n,T,T], masks int64 [B,T,T], ratio_true [B,n]."""
    logits = logits.float()  # the loss in fp32 under autocast
    n = logits.shape[1]
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(masks, n).permute(0, 3, 1, 2).to(probs.dtype)
    w = class_weights.to(logits.device, torch.float32)
    ce = F.cross_entropy(logits, masks, weight=w)
    dice = soft_dice_loss(probs, onehot, w, cfg.smooth)
    ratio_mse = F.mse_loss(probs.mean(dim=(2, 3)), ratio_true.to(probs))
    total = cfg.ce_weight * ce + cfg.dice_weight * dice + cfg.ratio_weight * ratio_mse
    parts = {"loss": total, "ce": ce, "dice_loss": dice, "ratio_mse": ratio_mse}
    return total, {k: v.item() for k, v in parts.items()}
