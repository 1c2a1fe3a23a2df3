"""SAM's ViT image encoder, rewritten for export, with the official state-dict keys.

Differences from segment_anything.modeling.image_encoder (outputs are equal; see
tests/test_models_sam_reference.py):
- one grey input channel: SAM's RGB pixel normalisation and the three identical channels are
  folded into ``patch_embed.proj`` (sam_checkpoint.fold_rgb_patch_embed), so the input is the
  contract's [0,1] grey tile;
- the token grid is fixed at construction, so window padding and relative-position indices are
  constants (no shape arithmetic or interpolation at run time);
- LayerNorm2d is an nn.LayerNorm (one LayerNormalization node in ONNX);
- q is scaled before q @ k^T (as SAM does) to keep fp16 attention logits small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from phaseedge.train.models.common import LayerNorm2d, MLPBlock
from torch import nn


def _relative_index(size: int) -> torch.Tensor:
    """Index into a [2*size-1, d] relative-position table for every (query, key) pair."""
    coords = torch.arange(size)
    return coords[:, None] - coords[None, :] + (size - 1)


class Attention(nn.Module):
    """Multi-head self-attention with decomposed relative positions over a fixed s x s grid."""

    def __init__(self, dim: int, num_heads: int, size: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * size - 1, head_dim))
        self.register_buffer("rel_index", _relative_index(size), persistent=False)
        # Optional q/v LoRA (phaseedge.train.models.lora); None after merge().
        self.lora: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x)
        if self.lora is not None:
            qkv = self.lora(x, qkv)
        qkv = qkv.reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, h * w, -1).unbind(0)

        attn = (q * self.scale) @ k.transpose(-2, -1)
        rh = self.rel_pos_h[self.rel_index]  # [h, h, d]
        rw = self.rel_pos_w[self.rel_index]  # [w, w, d]
        r_q = q.reshape(b * self.num_heads, h, w, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
        attn = (attn.view(-1, h, w, h, w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).view(
            -1, h * w, h * w
        )
        attn = attn.softmax(dim=-1)
        x = (attn @ v).view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(x)


class Block(nn.Module):
    """Transformer block; windowed (window_size > 0) or global attention over a grid x grid map."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, grid: int, window_size: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, size=window_size if window_size > 0 else grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size
        self.grid = grid
        # Static padding: the grid is fixed, so the pad is a construction-time constant.
        self.pad = (window_size - grid % window_size) % window_size if window_size > 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            x = self._attend_windows(x)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))

    def _attend_windows(self, x: torch.Tensor) -> torch.Tensor:
        b, g, _, c = x.shape
        ws, p = self.window_size, self.grid + self.pad
        n = p // ws
        if self.pad:
            x = F.pad(x, (0, 0, 0, self.pad, 0, self.pad))
        x = x.view(b, n, ws, n, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b * n * n, ws, ws, c)
        x = self.attn(x)
        x = x.view(b, n, n, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, p, p, c)
        if self.pad:
            x = x[:, :g, :g, :]
        return x


class PatchEmbed(nn.Module):
    """Grey patch embedding: conv(1 -> dim, k=s=patch) on the [0,1] tile."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class ImageEncoderViT(nn.Module):
    """[B,1,T,T] grey in [0,1] -> [B,out_chans,T/16,T/16]; keys as SAM's ``image_encoder``."""

    def __init__(
        self,
        *,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        out_chans: int,
        window_size: int,
        global_attn_indexes: tuple[int, ...],
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"tile {img_size} must be a multiple of the patch size {patch_size}")
        grid = img_size // patch_size
        self.grid = grid
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, grid, 0 if i in global_attn_indexes else window_size)
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))
