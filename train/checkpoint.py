"""Trained-model checkpoints: a directory with ``model.safetensors`` + ``config.json``.

safetensors holds tensors only (no pickle, nothing runs on load); config.json holds what is
needed to rebuild the model through the registry and to run it (DEVELOPERS.md, "Checkpoint").
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from phaseedge.train.models import build_model
from phaseedge.train.models.common import SegmentationModel
from phaseedge.train.models.sam import LoRASam
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from phaseedge.checkpoint_config import CONFIG, read_config

__all__ = ["CONFIG", "WEIGHTS", "load", "read_config", "save"]

WEIGHTS = "model.safetensors"


def save(
    model: SegmentationModel,
    directory: str | Path,
    class_names: list[str] | tuple[str, ...] | None = None,
    merged: bool = True,
) -> Path:
    """Write ``model`` to ``directory`` (created); returns the directory.

    With ``merged=True`` (default) a LoRA model is saved with its adapters folded into the
    encoder (a copy is merged; ``model`` itself is left as it is), ready for export.
    """
    if not isinstance(model, SegmentationModel):
        raise TypeError(f"expected a phaseedge model from build_model, got {type(model).__name__}")
    names = list(class_names) if class_names is not None else model.config.get("class_names")
    if names is None:
        raise ValueError("class_names are required (one name per class, e.g. ['ferrite', 'martensite', ...])")
    if len(names) != model.n_classes or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"class_names must be {model.n_classes} non-empty strings, got {names!r}")
    if merged and isinstance(model, LoRASam) and not model.config["merged"]:
        model = copy.deepcopy(model).merge()
    config: dict[str, Any] = copy.deepcopy(model.config)
    config["class_names"] = names
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(
        state, str(directory / WEIGHTS), metadata={"format": "pt", "architecture": config["architecture"]}
    )
    (directory / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def load(directory: str | Path, map_location: str | torch.device = "cpu") -> SegmentationModel:
    """Rebuild the model from config.json, load its weights, return it in eval mode."""
    directory = Path(directory)
    config = read_config(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS} in checkpoint directory {directory}")
    model = build_model(
        config["architecture"],
        config["n_classes"],
        plm=config["plm"],
        tile=config["tile"],
        **config["arch_kwargs"],
    )
    if config["merged"] and isinstance(model, LoRASam):
        model.merge()  # fresh adapters are zero: merging only removes them, matching the saved keys
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{weights} is not a readable safetensors file: {exc}") from exc
    _check_state(model, state, weights)
    model.load_state_dict(state, strict=True)
    model.config["class_names"] = config["class_names"]
    model.config["normalization"] = config["normalization"]
    for key in ("pixel_size_m", "trained_on", "val_metrics"):
        model.config[key] = config.get(key)
    return model.to(map_location).eval()


def _check_state(model: SegmentationModel, state: dict[str, torch.Tensor], path: Path) -> None:
    """Name every missing, unexpected or mis-shaped tensor instead of torch's terse error."""
    target = model.state_dict()
    problems = [f"missing {k}" for k in target if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in target]
    problems += [
        f"{k}: file {list(v.shape)}, model {list(target[k].shape)}"
        for k, v in state.items()
        if k in target and v.shape != target[k].shape
    ]
    if problems:
        shown = "\n  ".join(problems[:20]) + (
            f"\n  ... {len(problems) - 20} more" if len(problems) > 20 else ""
        )
        raise ValueError(f"{path} does not match the model its config.json describes:\n  {shown}")
