"""phaseedge: phase segmentation of steel SEM micrographs.

Importing this package never imports torch: the runtime runs on ONNX Runtime or
TensorRT alone. Heavy pieces load lazily on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access, PEP 562)
_LAZY = {
    "Segmenter": "phaseedge.segmenter",
    "default_model": "phaseedge.bundled",
    "Result": "phaseedge.result",
}

__all__ = ["Result", "Segmenter", "__version__", "default_model"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'phaseedge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
