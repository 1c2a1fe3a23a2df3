"""Knowledge distillation from a trained teacher (Hinton et al. 2015; "born-again" networks,
Furlanello et al. 2018): the student's cross-entropy target mixes the annotation with the
teacher's class probabilities, ``(1 - weight) * one-hot + weight * teacher``.

Why: a seed ensemble scores higher than either member (docs/results.md) but costs two
passes at inference; distilling it into one model of the same size keeps one pass. The
teacher runs once per fit over each whole training frame, at the training pixel size, as
deployment runs it (``phaseedge.Segmenter``: tiles, blending, its own ``scales``), fed the
frame's true ratio: the best a teacher can say about a frame whose annotation is known. The
crop sampler warps these maps with each crop's own affine (bilinear), so the crops and their
random draws are those of the same run without a teacher.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from phaseedge.train.data import LabelledImage
from phaseedge.train.settings import check_known
from tqdm import tqdm

from phaseedge import ratio as ratio_ops
from phaseedge.segmenter import Segmenter


@dataclass
class DistillConfig:
    """``teacher``: a checkpoint directory (one model or a ``phaseedge-train ensemble``); None = off."""

    teacher: str | None = None
    weight: float = 0.5  # the teacher's share of the cross-entropy target
    scales: list[float] | None = None  # the teacher's inference scales (Segmenter ``scales``)

    @classmethod
    def from_dict(cls, d: dict) -> DistillConfig:
        check_known(cls, d, "distill")
        cfg = cls(**d)
        w = cfg.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 < w <= 1.0:
            raise ValueError(f"distill.weight must be in (0, 1], got {w!r}")
        if cfg.teacher is not None and not isinstance(cfg.teacher, str):
            raise ValueError(f"distill.teacher must be a checkpoint directory or null, got {cfg.teacher!r}")
        if cfg.scales is not None and (
            not isinstance(cfg.scales, list) or not cfg.scales
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in cfg.scales)
        ):
            raise ValueError(f"distill.scales must be a non-empty list of positive numbers or null, got {cfg.scales!r}")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


def teacher_probabilities(
    cfg: DistillConfig, items: list[LabelledImage], class_names: list[str], progress: bool = False
) -> list[np.ndarray]:
    """The teacher's class probabilities for each frame, float32 [n, H, W] on the frame's grid."""
    if cfg.teacher is None:
        raise ValueError("distill.teacher is not set")
    where = Path(cfg.teacher)
    if not where.is_dir():
        raise FileNotFoundError(f"distillation teacher not found (a checkpoint directory): {where}")
    n = len(class_names)
    out = []
    with Segmenter(str(where), backend="torch", overlap=0.25,
                   scales=tuple(cfg.scales) if cfg.scales else None) as seg:
        if list(seg.class_names) != list(class_names):
            raise ValueError(f"the teacher's classes {list(seg.class_names)} are not the student's {class_names}")
        for it in tqdm(items, desc="teacher", disable=not progress):
            # the item is already at the training pixel size: the raw pixels, no pixel size,
            # so the Segmenter runs it as it is
            result = seg.segment(it.image, ratio=ratio_ops.from_mask(it.mask, n), return_probabilities=True)
            probs = np.asarray(result.probabilities, np.float32)
            if probs.shape != (n, *it.mask.shape):
                raise ValueError(f"{it.name}: teacher probabilities {probs.shape}, expected {(n, *it.mask.shape)}")
            out.append(probs)
    return out
