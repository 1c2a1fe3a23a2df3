"""Self-supervised pretraining of a U-Net on the training frames' images, labels unused
(Models Genesis, Zhou et al., MedIA 2021): the network restores a crop from a corrupted copy
(local pixel shuffling, a random monotone intensity curve, in- or out-painting with noise)
and so learns texture and context before it sees a label. All weights but the 1x1 classifier
carry over to the supervised stage; the restoration head is dropped.

It runs inside ``fit`` when ``pretrain.steps`` > 0, before the first epoch, from its own
random stream (the supervised crops and ratios are the same draws as without it), so the
one difference an ablation sees is the starting weights.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from phaseedge.train.augment import AugmentConfig, CropSampler
from phaseedge.train.data import LabelledImage
from phaseedge.train.settings import check_known
from torch import nn
from tqdm import tqdm

#: the pretraining crops draw from numpy.random.default_rng((seed, PRETRAIN_STREAM))
PRETRAIN_STREAM = 1


@dataclass
class PretrainConfig:
    """Models Genesis' transform rates (their 2D defaults); ``steps`` 0 switches it off."""

    steps: int = 0
    lr: float = 1e-3  # poly-decayed over ``steps``
    p_shuffle: float = 0.5  # local pixel shuffling
    p_nonlinear: float = 0.9  # a random monotone (or inverted) Bezier intensity curve
    p_paint: float = 0.9  # painting; of which out-painting:
    p_outpaint: float = 0.8

    @classmethod
    def from_dict(cls, d: dict) -> PretrainConfig:
        check_known(cls, d, "pretrain")
        cfg = cls(**d)
        if isinstance(cfg.steps, bool) or not isinstance(cfg.steps, int) or cfg.steps < 0:
            raise ValueError(f"pretrain.steps must be an integer >= 0, got {cfg.steps!r}")
        if not cfg.lr > 0:
            raise ValueError(f"pretrain.lr must be > 0, got {cfg.lr}")
        for name in ("p_shuffle", "p_nonlinear", "p_paint", "p_outpaint"):
            if not 0.0 <= getattr(cfg, name) <= 1.0:
                raise ValueError(f"pretrain.{name} must be in [0, 1], got {getattr(cfg, name)}")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------ corruptions
def local_shuffle(x: np.ndarray, rng: np.random.Generator, blocks: int = 200) -> np.ndarray:
    """Permute the pixels inside ``blocks`` random windows of side 1..T/10: local texture
    is destroyed, the layout kept."""
    out = x.copy()
    h, w = x.shape
    top = max(1, min(h, w) // 10)
    for _ in range(blocks):
        bh, bw = int(rng.integers(1, top + 1)), int(rng.integers(1, top + 1))
        y, xx = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        win = out[y : y + bh, xx : xx + bw]
        win[...] = rng.permutation(win.ravel()).reshape(bh, bw)
    return out


def bezier_intensity(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Map intensities through a cubic Bezier from (0,0) to (1,1) with random inner control
    points, sorted to a monotone curve; half the time inverted."""
    t = np.linspace(0.0, 1.0, 1000)
    p = np.array([[0.0, 0.0], rng.random(2), rng.random(2), [1.0, 1.0]])
    bern = np.stack([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3], axis=1)
    xs, ys = np.sort(bern @ p[:, 0]), np.sort(bern @ p[:, 1])
    if rng.random() < 0.5:
        ys = ys[::-1]
    return np.interp(x, xs, ys).astype(x.dtype)


def _box(rng: np.random.Generator, h: int, w: int, lo: float, hi: float) -> tuple[slice, slice]:
    bh = int(rng.integers(max(1, int(h * lo)), max(2, int(h * hi))))
    bw = int(rng.integers(max(1, int(w * lo)), max(2, int(w * hi))))
    y, xx = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    return slice(y, y + bh), slice(xx, xx + bw)


def paint(x: np.ndarray, rng: np.random.Generator, outpaint: bool) -> np.ndarray:
    """In-painting: up to 5 boxes (T/6..T/3) replaced by noise. Out-painting: all noise but
    up to 5 boxes (3T/7..4T/7) of the original. Each box after the first with p = 0.95."""
    h, w = x.shape
    out = rng.random(x.shape).astype(x.dtype) if outpaint else x.copy()
    lo, hi = (3 / 7, 4 / 7) if outpaint else (1 / 6, 1 / 3)
    for k in range(5):
        if k and rng.random() >= 0.95:
            break
        ys, xs = _box(rng, h, w, lo, hi)
        out[ys, xs] = x[ys, xs] if outpaint else rng.random((ys.stop - ys.start, xs.stop - xs.start))
    return out


def corrupt(x: np.ndarray, rng: np.random.Generator, cfg: PretrainConfig) -> np.ndarray:
    """One crop [T,T] in [0,1] through Models Genesis' chain: shuffle, intensity, paint."""
    if rng.random() < cfg.p_shuffle:
        x = local_shuffle(x, rng)
    if rng.random() < cfg.p_nonlinear:
        x = bezier_intensity(x, rng)
    if rng.random() < cfg.p_paint:
        x = paint(x, rng, outpaint=rng.random() < cfg.p_outpaint)
    return x


# ------------------------------------------------------------------------ the stage
def pretrain(
    model: nn.Module,
    cfg: PretrainConfig,
    items: list[LabelledImage],
    *,
    tile: int,
    batch_size: int,
    augment: AugmentConfig,
    seed: int,
    cast: torch.dtype | None,
    memory_format: torch.memory_format,
    out: Path | None = None,
    progress: bool = True,
) -> dict:
    """Restore corrupted crops for ``cfg.steps`` steps with a temporary 1-channel head in
    place of ``model.classifier``; the model keeps every other weight it learned. Writes
    ``out/pretrain.json`` (loss every 100 steps, minutes) when ``out`` is given."""
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Conv2d):
        raise ValueError(f"pretraining needs a U-Net (a 1x1 conv classifier); {type(model).__name__} has none")  # noqa: TRY004 - a user setting
    device = next(model.parameters()).device
    rng = np.random.default_rng((seed, PRETRAIN_STREAM))
    # geometry and intensity as in training; no noise (it cannot be restored) and no label-driven crops
    sampler = CropSampler(items, tile, replace(augment, class_centred=0.0, noise=0.0))
    head = nn.Conv2d(classifier.in_channels, 1, kernel_size=1).to(device, memory_format=memory_format)
    model.classifier = head
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=cast == torch.float16)
    n_classes = classifier.out_channels
    t0 = time.monotonic()
    curve: list[dict] = []
    running = 0.0
    model.train()
    try:
        for step in tqdm(range(cfg.steps), desc="pretrain", disable=not progress, leave=False):
            clean, _ = sampler.sample(batch_size, rng)
            dirty = torch.from_numpy(np.stack([corrupt(c[0].numpy(), rng, cfg) for c in clean])[:, None])
            for group in opt.param_groups:
                group["lr"] = cfg.lr * (1.0 - step / cfg.steps) ** 0.9
            dirty = dirty.to(device).contiguous(memory_format=memory_format)
            zeros = torch.zeros(batch_size, n_classes, device=device)
            with torch.autocast(device.type, dtype=cast or torch.float32, enabled=cast is not None):
                restored = model(dirty, zeros)
            loss = F.mse_loss(torch.sigmoid(restored.float()), clean.to(device))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            running += loss.item()
            if (step + 1) % 100 == 0 or step + 1 == cfg.steps:
                n = (step % 100) + 1
                curve.append({"step": step + 1, "mse": running / n})
                running = 0.0
    finally:
        model.classifier = classifier
    summary = {"config": cfg.to_dict(), "minutes": round((time.monotonic() - t0) / 60.0, 3), "curve": curve}
    if out is not None:
        (out / "pretrain.json").write_text(json.dumps(summary, indent=1))
    if curve and not math.isfinite(curve[-1]["mse"]):
        raise FloatingPointError(f"pretraining diverged: restoration MSE {curve[-1]['mse']}")
    return summary
