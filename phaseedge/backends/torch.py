"""PyTorch backend: a training checkpoint directory or an in-memory ``nn.Module``.

For reference and debugging (parity with the exported graphs), and for tiled
whole-image evaluation during training: ``Segmenter(model=<module>, backend="torch")``.
torch is imported here only, never by ``import phaseedge``. Checkpoint directories are a
training artefact: `_load_checkpoint` is the runtime's one door into ``phaseedge.train``
(lazy, only for a directory; an ``nn.Module`` or an exported graph never opens it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from phaseedge.backends.base import DEFAULT_NORMALIZATION, Backend

try:
    import torch
except ImportError as exc:  # the registry turns this into "install phaseedge[train]"
    raise ImportError("torch is not installed") from exc


class TorchBackend(Backend):
    """Runs a model following the PyTorch forward contract (logits; softmax is applied here).

    model: checkpoint directory (`phaseedge.train.checkpoint.load`) or an ``nn.Module``
    with ``tile``, ``n_classes`` and ``config``. A directory is loaded onto GPU ``device``
    when CUDA is available, else the CPU; a module stays where it is. options:
    ``max_batch`` (default 8), ``class_names`` (for modules whose config has none).
    """

    name = "torch"
    precision = "fp32"

    def __init__(self, model: Any, device: int = 0, max_batch: int = 8,
                 class_names: list[str] | tuple[str, ...] | None = None) -> None:
        if isinstance(model, (str, os.PathLike)):
            path = Path(model)
            if not path.is_dir():
                raise ValueError(f"the torch backend takes a checkpoint directory or an nn.Module, got {path}")
            module = _load_checkpoint(path, f"cuda:{int(device)}" if torch.cuda.is_available() else "cpu")
        elif isinstance(model, torch.nn.Module):
            module = model
        else:
            raise TypeError(f"the torch backend takes a checkpoint directory or an nn.Module, "
                            f"got {type(model).__name__}")
        for attr in ("tile", "n_classes"):
            if not isinstance(getattr(module, attr, None), int):
                raise TypeError(f"the model has no integer .{attr}: not a phaseedge segmentation model")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        config = dict(getattr(module, "config", {}) or {})
        names = class_names or config.get("class_names") or [f"class{i}" for i in range(module.n_classes)]
        if len(names) != module.n_classes:
            raise ValueError(f"{len(names)} class names for a model with {module.n_classes} classes")
        self.module = module
        self.tile = module.tile
        self.n_classes = module.n_classes
        self.class_names = tuple(str(c) for c in names)
        self.normalization = dict(config.get("normalization") or DEFAULT_NORMALIZATION)
        self.pixel_size_m = config.get("pixel_size_m")
        self.trained_on = config.get("trained_on")
        self.max_batch = max_batch
        first = next(module.parameters(), None)
        self._torch_device = first.device if first is not None else torch.device("cpu")
        self.device = str(self._torch_device)

    def infer(self, images: np.ndarray, ratio: np.ndarray) -> np.ndarray:
        self.check_batch(images, ratio)
        x = torch.from_numpy(np.asarray(images, np.float32)).to(self._torch_device)
        r = torch.tensor(np.asarray(ratio, np.float32), device=self._torch_device)  # a copy: ratios may be read-only
        was_training = self.module.training
        self.module.eval()  # a module handed over from training must not update BN statistics
        try:
            with torch.inference_mode():
                probs = torch.softmax(self.module(x, r).float(), dim=1)
        finally:
            self.module.train(was_training)
        return probs.cpu().numpy()

    def infer_many(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[np.ndarray]:
        """On a GPU the next batch runs while the caller stitches this one."""
        if self._torch_device.type == "cuda":
            return self.infer_ahead(batches)
        return super().infer_many(batches)

    def close(self) -> None:
        self.module = None


def _load_checkpoint(path: Path, where: str) -> Any:
    """A training checkpoint directory as a module on ``where`` (`phaseedge.train.checkpoint.load`)."""
    try:
        from phaseedge.train.checkpoint import load
    except ImportError as exc:
        raise ImportError(f"loading the checkpoint {path} needs phaseedge's training extra: "
                          "pip install 'phaseedge[train]' (or export it with phaseedge-export)") from exc
    return load(path, map_location=where)
