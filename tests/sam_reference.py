"""The reference SAM classes from segment-anything 1.0, imported without its package __init__.

``import segment_anything`` runs build_sam -> predictor -> utils.transforms, which imports
torchvision (not installed: on a CPU-only machine it drags in a CUDA torch). The ``modeling``
subpackage needs only torch, so an empty package module is put in its place first.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from functools import partial
from pathlib import Path

import pytest
import torch


def reference_modeling() -> types.ModuleType:
    """segment_anything.modeling, or skip the test when segment-anything is not installed."""
    if "segment_anything" not in sys.modules:
        spec = importlib.util.find_spec("segment_anything")
        if spec is None or spec.submodule_search_locations is None:
            pytest.skip("segment-anything (test reference) is not installed")
        package = types.ModuleType("segment_anything")
        package.__path__ = [str(Path(p)) for p in spec.submodule_search_locations]
        sys.modules["segment_anything"] = package
    return importlib.import_module("segment_anything.modeling")


def reference_sam(spec, tile: int, n_classes: int):
    """(ImageEncoderViT, PromptEncoder, MaskDecoder) built as build_sam.py does, for one spec."""
    m = reference_modeling()
    enc, dec = spec.encoder, spec.decoder
    dim = enc["out_chans"]
    grid = tile // enc["patch_size"]
    encoder = m.ImageEncoderViT(
        img_size=tile,
        patch_size=enc["patch_size"],
        embed_dim=enc["embed_dim"],
        depth=enc["depth"],
        num_heads=enc["num_heads"],
        mlp_ratio=enc["mlp_ratio"],
        out_chans=dim,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=enc["window_size"],
        global_attn_indexes=enc["global_attn_indexes"],
    )
    prompt = m.PromptEncoder(
        embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(tile, tile), mask_in_chans=16
    )
    decoder = m.MaskDecoder(
        num_multimask_outputs=n_classes - 1,
        transformer=m.TwoWayTransformer(
            depth=dec["depth"], embedding_dim=dim, mlp_dim=dec["mlp_dim"], num_heads=dec["num_heads"]
        ),
        transformer_dim=dim,
        iou_head_depth=3,
        iou_head_hidden_dim=dim,
    )
    return encoder, prompt, decoder


def randomize_(*modules: torch.nn.Module, seed: int = 0) -> None:
    """Random values for every parameter and buffer (SAM zero-inits pos_embed and rel_pos)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            for t in [*module.parameters(), *module.buffers()]:
                if t.is_floating_point():
                    t.copy_(torch.randn(t.shape, generator=g) * 0.2)


def official_state_dict(encoder, prompt, decoder) -> dict[str, torch.Tensor]:
    """The key layout of sam_vit_*.pth."""
    state = {}
    for prefix, module in (
        ("image_encoder.", encoder),
        ("prompt_encoder.", prompt),
        ("mask_decoder.", decoder),
    ):
        state.update({prefix + k: v.clone() for k, v in module.state_dict().items()})
    return state
