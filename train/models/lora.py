"""LoRA on q and v of every encoder block's fused qkv Linear (as SAMed).

W'_q = W_q + (alpha/r) B_q A_q and W'_v = W_v + (alpha/r) B_v A_v; k is untouched. A is
Kaiming-uniform and B zero, so a fresh LoRA model computes exactly what the base model does.
The adapters live beside ``attn.qkv`` (``attn.lora.q_a`` ...), never around it, so the official
SAM keys keep their names; ``merge_lora`` folds them into ``qkv`` and removes them, leaving a
plain SAM encoder for export.
"""

from __future__ import annotations

import math

import torch
from phaseedge.train.models.sam_encoder import Attention
from torch import nn


class QVLoRA(nn.Module):
    """Low-rank update of the q and v thirds of a fused qkv projection."""

    def __init__(self, dim: int, rank: int, alpha: float) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.scale = alpha / rank
        self.q_a = nn.Linear(dim, rank, bias=False)
        self.q_b = nn.Linear(rank, dim, bias=False)
        self.v_a = nn.Linear(dim, rank, bias=False)
        self.v_b = nn.Linear(rank, dim, bias=False)
        for a, b in ((self.q_a, self.q_b), (self.v_a, self.v_b)):
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            nn.init.zeros_(b.weight)

    def forward(self, x: torch.Tensor, qkv: torch.Tensor) -> torch.Tensor:
        """``qkv`` (= qkv(x)) with its q and v thirds updated; k passes through as it is."""
        q, k, v = qkv.chunk(3, dim=-1)
        dq = self.q_b(self.q_a(x)) * self.scale
        dv = self.v_b(self.v_a(x)) * self.scale
        return torch.cat([q + dq, k, v + dv], dim=-1)

    def delta_weight(self) -> torch.Tensor:
        """The [3*dim, dim] weight update this adapter adds to qkv."""
        dq = self.q_b.weight @ self.q_a.weight
        dv = self.v_b.weight @ self.v_a.weight
        return torch.cat([dq, torch.zeros_like(dq), dv], dim=0) * self.scale


def apply_lora(encoder: nn.Module, rank: int, alpha: float) -> None:
    """Attach a QVLoRA to every Attention in ``encoder`` (in place)."""
    for module in encoder.modules():
        if isinstance(module, Attention):
            module.lora = QVLoRA(module.qkv.in_features, rank, alpha).to(module.qkv.weight.device)


@torch.no_grad()
def merge_lora(encoder: nn.Module) -> int:
    """Fold every adapter into its qkv weight and remove it; returns how many were merged."""
    merged = 0
    for module in encoder.modules():
        if isinstance(module, Attention) and module.lora is not None:
            w = module.qkv.weight
            w.add_(module.lora.delta_weight().to(w.dtype))
            module.lora = None
            merged += 1
    return merged
