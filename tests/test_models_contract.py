"""The forward contract of every registered model: shapes, PLM effect, gradients, input checks."""

from __future__ import annotations

import json

import pytest
import torch
from phaseedge.train.models import build_model

torch.set_num_threads(2)

SMALL = [
    ("unet-tiny", None, {}),
    ("attention-unet", 32, {"width": 4, "depth": 2}),
    ("sam-tiny", 64, {}),
    ("sam-tiny", 128, {}),
]


def _inputs(model, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = model.tile
    image = torch.rand(batch, 1, t, t, generator=g)
    ratio = torch.softmax(torch.randn(batch, model.n_classes, generator=g), dim=1)
    return image, ratio


@pytest.mark.parametrize(("name", "tile", "kwargs"), SMALL)
@pytest.mark.parametrize("plm", [True, False])
def test_output_shape_and_config(name, tile, kwargs, plm):
    model = build_model(name, 3, plm=plm, tile=tile, **kwargs)
    image, ratio = _inputs(model)
    logits = model(image, ratio)
    assert logits.shape == (2, 3, model.tile, model.tile)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert model.plm_enabled is plm
    config = json.loads(json.dumps(model.config))
    assert config["architecture"] == name and config["n_classes"] == 3 and config["plm"] is plm
    assert config["tile"] == model.tile
    assert (
        build_model(config["architecture"], 3, plm=plm, tile=config["tile"], **config["arch_kwargs"]).config
        == config
    )


@pytest.mark.parametrize(("name", "tile", "kwargs"), SMALL)
def test_ratio_changes_logits_only_with_plm(name, tile, kwargs):
    torch.manual_seed(0)
    on = build_model(name, 3, plm=True, tile=tile, **kwargs).eval()
    off = build_model(name, 3, plm=False, tile=tile, **kwargs).eval()
    image, ratio = _inputs(on, batch=1)
    other = torch.tensor([[0.9, 0.05, 0.05]])
    unknown = torch.zeros(1, 3)
    with torch.no_grad():
        a, b, z = on(image, ratio), on(image, other), on(image, unknown)
        assert (a - b).abs().max() > 1e-6
        assert torch.isfinite(z).all()
        assert torch.equal(off(image, ratio), off(image, other))
        assert torch.equal(off(image, ratio), off(image, unknown))
    assert not any("plm" in k for k in off.state_dict())


@pytest.mark.parametrize("name", ["unet-tiny", "sam-tiny"])
def test_gradients_reach_only_trainable_parameters(name):
    model = build_model(name, 3)
    image, ratio = _inputs(model)
    model(image, ratio).square().mean().backward()
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable
    for pname, p in model.named_parameters():
        if id(p) in trainable:
            assert p.grad is not None, pname
        else:
            assert p.grad is None, pname
    assert any(p.grad.abs().sum() > 0 for p in model.trainable_parameters())


def test_attention_unet_gates_every_skip():
    plain = build_model("unet", 3, plm=False)
    gated = build_model("attention-unet", 3, plm=False)
    assert plain.gates is None and len(gated.gates) == 4
    extra = sum(p.numel() for p in gated.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == sum(p.numel() for p in gated.gates.parameters()) > 0


def test_sam_trains_lora_plm_and_decoder_but_not_the_encoder():
    model = build_model("sam-tiny", 3)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    encoder = {n for n in names if n.startswith("image_encoder.")}
    assert encoder and all(".attn.lora." in n for n in encoder)
    assert any(n.startswith("mask_decoder.") for n in names)
    assert any(n.startswith("plm.") for n in names)
    assert "prompt_encoder.no_mask_embed.weight" in names
    assert not model.image_encoder.patch_embed.proj.weight.requires_grad


@pytest.mark.parametrize(
    ("shape", "ratio_shape", "message"),
    [
        ((2, 3, 64, 64), (2, 3), "grey"),
        ((2, 1, 32, 32), (2, 3), "64x64"),
        ((2, 1, 64, 64), (2, 4), "one entry per class"),
        ((2, 1, 64, 64), (3, 3), "batch"),
        ((1, 64, 64), (1, 3), "grey"),
    ],
)
def test_bad_inputs_raise_clear_errors(shape, ratio_shape, message):
    model = build_model("sam-tiny", 3, plm=False)
    with pytest.raises(ValueError, match=message):
        model(torch.rand(shape), torch.rand(ratio_shape))


def test_integer_image_is_rejected():
    model = build_model("unet-tiny", 3)
    with pytest.raises(TypeError, match="floating"):
        model(torch.zeros(1, 1, 32, 32, dtype=torch.uint8), torch.zeros(1, 3))


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("sam-vit-x", 3), {}, "unknown model"),
        (("unet", 1), {}, "n_classes"),
        (("sam-tiny", 3), {"tile": 70}, "multiple of 16"),
        (("unet-tiny", 3), {"tile": 30}, "divisible"),
        (("unet-tiny", 3), {"lora_rank": 4}, "does not take lora_rank"),
        (("sam-tiny", 3), {"lora_rank": -1}, "lora_rank"),
    ],
)
def test_build_model_rejects_bad_arguments(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(*args, **kwargs)


@pytest.mark.parametrize(("tile", "grid"), [(512, 32), (1024, 64)])
def test_sam_vit_b_shapes_at_both_tiles(tile, grid):
    """Real ViT-B sizes, shapes only: the meta device computes no values."""
    with torch.device("meta"):
        model = build_model("sam-vit-b", 3, tile=tile)
        image, ratio = torch.empty(2, 1, tile, tile), torch.empty(2, 3)
        assert model.image_encoder(image).shape == (2, 256, grid, grid)
        features = model.plm(model.image_encoder(image), ratio)
        assert model.mask_decoder(features, *model.prompt_encoder()).shape == (2, 3, 4 * grid, 4 * grid)
        assert model(image, ratio).shape == (2, 3, tile, tile)
    assert model.image_encoder.pos_embed.shape == (1, grid, grid, 768)
    global_blocks = [i for i, b in enumerate(model.image_encoder.blocks) if b.window_size == 0]
    assert global_blocks == [2, 5, 8, 11]
    assert model.image_encoder.blocks[2].attn.rel_pos_h.shape == (2 * grid - 1, 64)
    assert model.image_encoder.blocks[0].attn.rel_pos_h.shape == (27, 64)


@pytest.mark.parametrize(("name", "dim", "depth", "global_blocks"), [
    ("sam-vit-l", 1024, 24, [5, 11, 17, 23]),
    ("sam-vit-h", 1280, 32, [7, 15, 23, 31]),
])  # fmt: skip
def test_larger_sam_encoders_follow_build_sam(name, dim, depth, global_blocks):
    with torch.device("meta"):
        model = build_model(name, 4)
    blocks = model.image_encoder.blocks
    assert len(blocks) == depth and blocks[0].attn.qkv.in_features == dim
    assert [i for i, b in enumerate(blocks) if b.window_size == 0] == global_blocks
    assert model.config["lora_rank"] == 512 and model.tile == 512
