"""A training checkpoint's ``config.json``, read without torch: what `phaseedge info`, the
benchmarks, the exporter and `phaseedge.train.checkpoint.load` all need to know about a
checkpoint directory before (or instead of) building the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG = "config.json"
#: the checkpoint layout this phaseedge writes and reads
FORMAT_VERSION = 1
REQUIRED = (
    "format_version", "architecture", "arch_kwargs", "n_classes", "class_names", "tile", "plm",
    "normalization", "lora_rank", "lora_alpha", "merged",
)  # fmt: skip


def read_config(directory: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint directory, checked for the fields a model is rebuilt from."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG} in {directory}: not a phaseedge checkpoint directory")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    missing = [k for k in REQUIRED if k not in config] if isinstance(config, dict) else list(REQUIRED)
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}")
    if config["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {config['format_version']} is not supported ({FORMAT_VERSION} is)")
    return config
