"""phaseedge: phase segmentation of steel SEM micrographs.

Importing this package never imports torch: the runtime runs on ONNX Runtime or
TensorRT alone. Heavy pieces load lazily on first attribute access.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
