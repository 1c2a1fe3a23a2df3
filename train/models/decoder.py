"""SAM's mask decoder on the no-prompt path, one mask token per phase (as SAMed).

Keys follow the official ``mask_decoder.*`` / ``prompt_encoder.*`` layout. What the no-prompt
path never uses is left out: the IoU head (its output is ignored), the point/box embeddings and
the mask-input downscaler. The IoU *token* is kept: it takes part in the two-way attention, so
dropping it would change the mask tokens' outputs. Phases are exhaustive (no background class),
so n mask tokens give n logits.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from phaseedge.train.models.common import LayerNorm2d, MLPBlock
from torch import nn


class PositionEmbeddingRandom(nn.Module):
    """SAM's random-Fourier dense positional encoding (buffer key as in the official model)."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((2, num_pos_feats)))

    def forward(self, h: int, w: int) -> torch.Tensor:
        """[C, h, w] encoding of pixel centres; h, w are Python ints (a constant in export)."""
        g = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(h, device=g.device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=g.device, dtype=torch.float32) + 0.5) / w
        coords = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        coords = (2 * coords - 1) @ g.float()
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1).permute(2, 0, 1).to(g.dtype)


class NoPromptEncoder(nn.Module):
    """The parts of SAM's prompt encoder used without prompts: dense PE and no-mask embedding."""

    def __init__(self, embed_dim: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(image_pe [1,C,g,g], dense_embedding [1,C,g,g])."""
        pe = self.pe_layer(self.grid, self.grid).unsqueeze(0)
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, self.grid, self.grid)
        return pe, dense


class TokenAttention(nn.Module):
    """SAM's decoder attention (optional internal downsampling of the embedding)."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads {num_heads} must divide {self.internal_dim}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)
        self.scale = (self.internal_dim // num_heads) ** -0.5

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self._heads(self.q_proj(q))
        k = self._heads(self.k_proj(k))
        v = self._heads(self.v_proj(v))
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2)
        return self.out_proj(out.reshape(out.shape[0], out.shape[1], self.internal_dim))


class TwoWayAttentionBlock(nn.Module):
    def __init__(
        self, embedding_dim: int, num_heads: int, mlp_dim: int, downsample: int, skip_first_layer_pe: bool
    ) -> None:
        super().__init__()
        self.self_attn = TokenAttention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = TokenAttention(embedding_dim, num_heads, downsample)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = TokenAttention(embedding_dim, num_heads, downsample)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(
        self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int, downsample: int = 2
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, downsample, skip_first_layer_pe=i == 0)
            for i in range(depth)
        )
        self.final_attn_token_to_image = TokenAttention(embedding_dim, num_heads, downsample)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image_embedding = image_embedding.flatten(2).permute(0, 2, 1)
        image_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries, keys = point_embedding, image_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, image_pe)
        attn_out = self.final_attn_token_to_image(queries + point_embedding, keys + image_pe, keys)
        return self.norm_final_attn(queries + attn_out), keys


class HyperMLP(nn.Module):
    """SAM's decoder MLP (``layers.{i}``), ReLU between layers."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    """image embedding [B,C,g,g] -> low-resolution logits [B,n,4g,4g], one token per class."""

    def __init__(self, *, transformer_dim: int, transformer: TwoWayTransformer, n_classes: int) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.transformer = transformer
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(n_classes, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            HyperMLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(n_classes)
        )

    def forward(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, dense_embeddings: torch.Tensor
    ) -> torch.Tensor:
        b, c, h, w = image_embeddings.shape
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = tokens.unsqueeze(0).expand(b, -1, -1)
        src = image_embeddings + dense_embeddings
        pos = image_pe.expand(b, -1, -1, -1)
        hs, src = self.transformer(src, pos, tokens)
        mask_tokens_out = hs[:, 1 : 1 + self.n_classes, :]
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c2, h2, w2 = upscaled.shape
        return (hyper_in @ upscaled.reshape(b, c2, h2 * w2)).reshape(b, self.n_classes, h2, w2)
