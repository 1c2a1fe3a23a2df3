"""Backend registry: a name (or "auto") and a model -> a ready `Backend`.

Backend modules are imported only when chosen, so `import phaseedge` never pulls
in onnxruntime, TensorRT or torch.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from phaseedge.backends.base import Backend

# name -> (module, class, what to install when the import fails)
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "onnxruntime": (
        "phaseedge.backends.onnxruntime",
        "OnnxRuntimeBackend",
        "pip install 'phaseedge[cpu]' (CPU) or 'phaseedge[gpu]' (onnxruntime-gpu)",
    ),
    "tensorrt": ("phaseedge.backends.tensorrt", "TensorRTBackend", "pip install 'phaseedge[gpu]'"),
    "torch": ("phaseedge.backends.torch", "TorchBackend", "pip install 'phaseedge[train]' torch==2.13.0"),
    "triton": ("phaseedge.backends.triton", "TritonBackend", "pip install 'phaseedge[triton]'"),
}
#: model strings that name a served model (phaseedge.backends.triton), not a file
REMOTE_SCHEMES: tuple[str, ...] = ("triton://", "triton+grpc://", "triton+http://")

BACKENDS: tuple[str, ...] = tuple(_REGISTRY)


def _is_torch_module(model: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")  # a module object implies torch is already imported
    return torch is not None and isinstance(model, torch.nn.Module)


def is_remote(model: Any) -> bool:
    """``model`` is a ``triton://...`` URL: nothing on disk to look for."""
    return isinstance(model, str) and model.startswith(REMOTE_SCHEMES)


def auto_backend_name(model: Any) -> str:
    """The fastest backend that can run ``model``, judged from what it is.

    ``.engine`` -> tensorrt; ``.onnx`` -> onnxruntime (which picks the TensorRT, CUDA
    or CPU provider by availability); a checkpoint directory or an ``nn.Module`` -> torch;
    a ``triton://`` URL -> triton.
    """
    if _is_torch_module(model):
        return "torch"
    if is_remote(model):
        return "triton"
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a path, 'default', a Backend or a torch nn.Module, got {type(model).__name__}")
    path = Path(model)
    if path.is_dir():
        return "torch"
    suffix = path.suffix.lower()
    if suffix == ".engine":
        return "tensorrt"
    if suffix == ".onnx":
        return "onnxruntime"
    raise ValueError(f"cannot tell which backend runs {str(path)!r}: expected a .onnx or .engine file or a checkpoint directory")


def backend_class(name: str) -> type[Backend]:
    """Import and return the class registered under ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} or 'auto'")
    module_name, class_name, install = _REGISTRY[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"backend {name!r} is not available ({exc}); install it with: {install}") from exc
    return getattr(module, class_name)


def get_backend(name: str, model: Any, device: int = 0, **options: Any) -> Backend:
    """Construct backend ``name`` ("auto" chooses) for ``model`` on GPU ``device``.

    This does the heavy set-up (session / engine / weights); callers that want cheap
    construction defer this call, as `phaseedge.Segmenter` does.
    """
    if name == "auto":
        name = auto_backend_name(model)
    return backend_class(name)(model, device=device, **options)


__all__ = ["BACKENDS", "REMOTE_SCHEMES", "Backend", "auto_backend_name", "backend_class", "get_backend", "is_remote"]
