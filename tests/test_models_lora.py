"""LoRA on q and v: a fresh adapter is a no-op, merge() folds it exactly, merged models are clean."""

from __future__ import annotations

import torch
from phaseedge.train.models import build_model
from phaseedge.train.models.lora import QVLoRA

torch.set_num_threads(2)


def _inputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 1, model.tile, model.tile, generator=g), torch.rand(2, 3, generator=g)


def test_fresh_lora_model_equals_base_model():
    torch.manual_seed(0)
    base = build_model("sam-tiny", 3, lora_rank=0).eval()
    lora = build_model("sam-tiny", 3, lora_rank=8, lora_alpha=16).eval()
    missing, unexpected = lora.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(".lora." in k for k in missing)
    image, ratio = _inputs(base)
    with torch.no_grad():
        assert torch.equal(lora(image, ratio), base(image, ratio))


def test_adapter_shapes_scale_and_init():
    adapter = QVLoRA(dim=32, rank=8, alpha=4.0)
    assert adapter.scale == 0.5
    assert adapter.q_a.weight.shape == (8, 32) and adapter.q_b.weight.shape == (32, 8)
    assert adapter.q_a.weight.abs().sum() > 0 and adapter.v_a.weight.abs().sum() > 0
    assert not adapter.q_b.weight.any() and not adapter.v_b.weight.any()
    with torch.no_grad():
        adapter.q_b.weight.normal_()
        adapter.v_b.weight.normal_()
    x = torch.randn(5, 32)
    delta = adapter(x, torch.zeros(5, 96))  # applied to a zero qkv: the update itself
    assert not delta[:, 32:64].any(), "k must not be adapted"
    torch.testing.assert_close(delta[:, :32], 0.5 * x @ (adapter.q_b.weight @ adapter.q_a.weight).T)
    torch.testing.assert_close(delta, x @ adapter.delta_weight().T)


def test_merge_matches_unmerged_and_removes_adapters():
    torch.manual_seed(0)
    model = build_model("sam-tiny", 3, lora_rank=4, lora_alpha=8).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora." in name:
                p.normal_(0, 0.3)
    image, ratio = _inputs(model)
    with torch.no_grad():
        unmerged = model(image, ratio)
        qkv_before = model.image_encoder.blocks[0].attn.qkv.weight.clone()
        model.merge()
        merged = model(image, ratio)
    assert model.config["merged"] is True
    assert not any(isinstance(m, QVLoRA) for m in model.modules())
    assert not any(".lora." in k for k in model.state_dict())
    assert not torch.equal(model.image_encoder.blocks[0].attn.qkv.weight, qkv_before)
    rel = (merged - unmerged).abs().max() / unmerged.abs().max()
    assert rel < 1e-5, rel
