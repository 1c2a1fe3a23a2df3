"""Pieces every phaseedge model shares: the forward contract, its input checks and the config.

The contract (DEVELOPERS.md): ``forward(image [B,1,T,T] float in [0,1], ratio [B,n]) -> logits
[B,n,T,T]``. Checks look at shapes only, never at tensor values, so tracing and ONNX export see
no data-dependent Python branches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from phaseedge.checkpoint_config import FORMAT_VERSION
from phaseedge.normalize import METHOD as NORMALIZATION

# NORMALIZATION: the per-frame percentile normalisation done before the model
# (phaseedge.normalize), recorded in every config so the runtime normalises exactly as training did.


class LayerNorm2d(nn.LayerNorm):
    """Channel LayerNorm for [B,C,H,W] maps.

    A subclass of nn.LayerNorm (same ``weight``/``bias`` keys as SAM's LayerNorm2d) so the
    exported graph holds one LayerNormalization node that TensorRT keeps in fp32, instead of
    SAM's hand-written mean/var arithmetic that overflows in fp16.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MLPBlock(nn.Module):
    """Two-layer MLP with SAM's key names (``lin1``, ``lin2``)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class SegmentationModel(nn.Module):
    """Base of every registered model: config, PLM flag, trainable parameters, input checks."""

    #: fully convolutional models take any tile side that is a multiple of this; None: ``tile`` only
    tile_multiple: int | None = None

    def __init__(self, *, n_classes: int, tile: int, config: dict[str, Any]) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.tile = tile
        self.config = config

    @property
    def plm_enabled(self) -> bool:
        return bool(self.config["plm"])

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser should update (frozen SAM encoder weights excluded)."""
        return [p for p in self.parameters() if p.requires_grad]

    def check_inputs(self, image: torch.Tensor, ratio: torch.Tensor) -> None:
        """Raise a clear error for inputs that break the forward contract (shapes only)."""
        if not isinstance(image, torch.Tensor) or not isinstance(ratio, torch.Tensor):
            raise TypeError("image and ratio must be torch tensors")
        if not image.is_floating_point() or not ratio.is_floating_point():
            raise TypeError(f"image and ratio must be floating point, got {image.dtype} and {ratio.dtype}")
        t = self.tile
        if image.dim() != 4 or image.shape[1] != 1:
            raise ValueError(
                f"image must be [B,1,{t},{t}] (grey, normalised to [0,1]), got {list(image.shape)}"
            )
        m = self.tile_multiple
        if m is not None:
            if image.shape[2] % m or image.shape[3] % m:
                raise ValueError(f"image tiles must be multiples of {m} on each side for this model, "
                                 f"got {image.shape[2]}x{image.shape[3]}")
        elif image.shape[2] != t or image.shape[3] != t:
            raise ValueError(
                f"image tiles must be {t}x{t} for this model (built with tile={t}), "
                f"got {image.shape[2]}x{image.shape[3]}"
            )
        if ratio.dim() != 2 or ratio.shape[1] != self.n_classes:
            raise ValueError(
                f"ratio must be [B,{self.n_classes}] (one entry per class, zeros = unknown), "
                f"got {list(ratio.shape)}"
            )
        if ratio.shape[0] != image.shape[0]:
            raise ValueError(f"ratio batch {ratio.shape[0]} != image batch {image.shape[0]}")


def make_config(
    *,
    architecture: str,
    arch_kwargs: dict[str, Any],
    n_classes: int,
    tile: int,
    plm: bool,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
) -> dict[str, Any]:
    """The JSON-able config of DEVELOPERS.md's checkpoint section (class names filled at save)."""
    return {
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "arch_kwargs": dict(arch_kwargs),
        "n_classes": n_classes,
        "class_names": None,
        "tile": tile,
        "plm": plm,
        "normalization": dict(NORMALIZATION),
        "lora_rank": lora_rank,
        "lora_alpha": lora_alpha,
        "merged": False,
        "pixel_size_m": None,  # set by training when frames are resampled to one pixel size
        "trained_on": None,  # dataset name or "synthetic", set by training
        "val_metrics": {},  # validation metrics of the saved epoch, set by training
    }
