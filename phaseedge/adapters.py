"""Hooks for acquisition software.

pycromanager image processors have the form ``fn(image, metadata) -> (image, metadata)``;
`pycromanager_processor` returns one that segments each frame and adds the phase
fractions to the metadata, passing the image through unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from phaseedge.segmenter import Segmenter

log = logging.getLogger(__name__)

Processor = Callable[[np.ndarray, dict[str, Any]], tuple[np.ndarray, dict[str, Any]]]


def pycromanager_processor(segmenter: Segmenter, ratio: Any = None, key: str = "phaseedge",
                           on_error: str = "record") -> Processor:
    """A ``fn(image, metadata) -> (image, metadata)`` that adds ``metadata[key]``:
    ``{"fractions": {phase: fraction}, "class_names", "ratio", "ratio_mode", "backend",
    "seconds"}`` (JSON-able, as pycromanager stores metadata as JSON).

    ``on_error="record"`` keeps the acquisition running when a frame cannot be
    segmented and stores ``{"error": reason}`` instead; ``"raise"`` propagates.
    The incoming metadata dict is not modified; a new one is returned.
    """
    if on_error not in ("record", "raise"):
        raise ValueError(f"on_error must be 'record' or 'raise', got {on_error!r}")
    from phaseedge import ratio as ratio_mod

    checked = ratio_mod.validate(ratio, segmenter.n_classes)  # refuse a bad ratio before acquisition starts

    def process(image: np.ndarray, metadata: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        out = dict(metadata)
        try:
            result = segmenter.segment(image, ratio=checked)
        except (ValueError, TypeError) as exc:
            if on_error == "raise":
                raise
            log.warning("phaseedge: frame not segmented: %s", exc)
            out[key] = {"error": str(exc)}
            return image, out
        summary = result.to_dict()
        out[key] = {k: summary[k] for k in ("fractions", "class_names", "ratio", "ratio_mode", "backend")}
        out[key]["seconds"] = result.timings["total"]
        return image, out

    return process
