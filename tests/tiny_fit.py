"""The tiny training set-up the fit tests share: three synthetic phases, 32-px crops, one thread."""

from __future__ import annotations

from typing import Any

from phaseedge.train.loop import FitConfig

NAMES = ["ferrite", "martensite", "bainite"]


def tiny_config(**kw: Any) -> FitConfig:
    """A unet-tiny fit of 8 crops per epoch (epochs as FitConfig defaults them unless given)."""
    base = {"model": "unet-tiny", "tile": 32, "batch_size": 4, "crops_per_epoch": 8, "lr": 3e-3,
            "class_names": NAMES, "seed": 3}
    base.update(kw)
    return FitConfig.from_dict(base)
