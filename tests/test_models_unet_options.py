"""U-Net options of the MetalDAM ablation: residual encoder stages, deep supervision and the
normalisation layer."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from phaseedge.train import checkpoint
from phaseedge.train.augment import true_ratios
from phaseedge.train.data import synthetic
from phaseedge.train.loop import FitConfig, fit
from phaseedge.train.losses import LossConfig, segmentation_loss
from phaseedge.train.models import build_model
from phaseedge.train.models.unet import ResidualBlock

NAMES = ["ferrite", "martensite", "bainite"]


def test_residual_block_adds_its_input_and_projects_a_width_change():
    block = ResidualBlock(4, 4).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        for p in block.body.parameters():
            p.zero_()  # body gives 0 (BatchNorm weight and bias zeroed): out = relu(x)
        torch.testing.assert_close(block(x), torch.relu(x))
    assert isinstance(ResidualBlock(4, 8).skip, torch.nn.Sequential)  # 1x1 conv + BN
    assert ResidualBlock(4, 8)(x).shape == (2, 8, 8, 8)


def test_residual_unet_has_residual_encoder_stages_and_same_contract():
    plain = build_model("unet-tiny", 3, tile=32)
    res = build_model("unet-tiny", 3, tile=32, residual=True)
    assert all(isinstance(b, ResidualBlock) for b in res.down)
    assert not any(isinstance(b, ResidualBlock) for b in plain.down)
    assert res.config["arch_kwargs"]["residual"] is True
    assert "residual" not in plain.config["arch_kwargs"]  # old checkpoints keep loading unchanged
    x, r = torch.rand(2, 1, 32, 32), torch.zeros(2, 3)
    assert res.eval()(x, r).shape == plain.eval()(x, r).shape == (2, 3, 32, 32)
    with pytest.raises(TypeError, match="residual"):
        build_model("unet-tiny", 3, tile=32, residual="yes")


def test_deep_supervision_heads_are_coarser_and_forward_ignores_them():
    model = build_model("unet", 3, tile=64, width=4, depth=3, deep_supervision=2).eval()
    x, r = torch.rand(1, 1, 64, 64), torch.rand(1, 3)
    logits, aux = model.forward_with_aux(x, r)
    assert [a.shape[-1] for a in aux] == [32, 16]  # finest first
    torch.testing.assert_close(model(x, r), logits)
    with torch.no_grad():  # the heads do not feed the output
        for head in model.aux_heads:
            head.weight.add_(1.0)
    torch.testing.assert_close(model(x, r), logits)
    for bad in (3, -1, True):
        with pytest.raises(ValueError, match="deep_supervision"):
            build_model("unet", 3, tile=64, width=4, depth=3, deep_supervision=bad)


def test_instance_norm_normalises_each_sample_alone_and_is_recorded():
    """InstanceNorm blocks: a sample's training-mode output does not depend on its batch mates
    (BatchNorm's does), the choice is in the config for the checkpoint, the default leaves no key."""
    torch.manual_seed(0)
    inst = build_model("unet-tiny", 3, tile=32, norm="instance").train()
    batch = build_model("unet-tiny", 3, tile=32).train()
    kinds = {type(m) for m in inst.modules()}
    assert torch.nn.InstanceNorm2d in kinds and torch.nn.BatchNorm2d not in kinds
    assert inst.config["arch_kwargs"]["norm"] == "instance"
    assert "norm" not in batch.config["arch_kwargs"]  # old checkpoints keep loading unchanged
    x, r = torch.rand(2, 1, 32, 32), torch.zeros(2, 3)
    mates = torch.cat([x[:1], 3.0 * torch.rand(1, 1, 32, 32)])
    with torch.no_grad():
        torch.testing.assert_close(inst(mates, r)[:1], inst(x, r)[:1])
        assert not torch.allclose(batch(mates, r)[:1], batch(x, r)[:1], atol=1e-4)
    for bad in ("layer", "Instance", None):
        with pytest.raises(ValueError, match="norm must be one of batch, instance"):
            build_model("unet-tiny", 3, tile=32, norm=bad)


def test_deep_supervision_loss_weights_halve_and_normalise():
    masks = torch.from_numpy(np.tile(np.repeat(np.arange(3), 4), (1, 16, 1)))  # [1,16,12], three 4-wide bands
    onehot = torch.nn.functional.one_hot(masks, 3).permute(0, 3, 1, 2).float()
    good = 50.0 * onehot
    cfg, w = LossConfig(ratio_weight=0.0), torch.ones(3)
    plain, _ = segmentation_loss(good, masks, true_ratios(masks, 3), w, cfg)
    # perfect heads at 1/2 and 1/4 resolution change nothing; a wrong 1/2 head adds 0.5 / 1.75 of its loss
    half, quarter = good[:, :, 1::2, 1::2], good[:, :, 2::4, 2::4]
    same, _ = segmentation_loss(good, masks, true_ratios(masks, 3), w, cfg, [half, quarter])
    torch.testing.assert_close(same, plain * (1.0 / 1.75) + 0.0, atol=1e-4, rtol=0)
    wrong_half = half.roll(1, dims=1)
    bad_alone, _ = segmentation_loss(wrong_half, masks[:, 1::2, 1::2], true_ratios(masks, 3), w, cfg)
    bad, _ = segmentation_loss(good, masks, true_ratios(masks, 3), w, cfg, [wrong_half, quarter])
    assert bad.item() == pytest.approx((plain.item() + 0.5 * bad_alone.item() + 0.25 * 0.0) / 1.75, abs=1e-3)
    with pytest.raises(ValueError, match="does not divide"):
        segmentation_loss(good, masks, true_ratios(masks, 3), w, cfg, [good[:, :, :5, :5]])


def test_fit_trains_the_heads_and_the_checkpoint_reloads(tmp_path):
    torch.set_num_threads(1)
    train, val = synthetic([101, 102], (96, 96), 3), synthetic([201], (64, 64), 3)
    cfg = FitConfig.from_dict({
        "model": "unet-tiny", "model_kwargs": {"residual": True, "deep_supervision": 1, "norm": "instance"},
        "tile": 32,
        "batch_size": 4, "crops_per_epoch": 8, "lr": 3e-3, "class_names": NAMES, "seed": 3, "epochs": 1,
    })
    torch.manual_seed(cfg.seed)  # fit seeds torch the same way before it builds the model
    before = build_model("unet-tiny", 3, tile=32, residual=True, deep_supervision=1, norm="instance")
    fit(cfg, train, val, tmp_path / "run", progress=False)
    model = checkpoint.load(tmp_path / "run" / "best")
    saved = json.loads((tmp_path / "run" / "best" / "config.json").read_text())["arch_kwargs"]
    assert saved["deep_supervision"] == 1 and saved["norm"] == "instance"
    assert isinstance(model.down[0].body[1], torch.nn.InstanceNorm2d)
    assert model.down[0].skip[0].weight.shape == before.down[0].skip[0].weight.shape
    assert not torch.equal(model.aux_heads[0].weight, before.aux_heads[0].weight)  # the head's loss trained it


@pytest.mark.slow  # a real (dynamo) ONNX export: about 12 s of CPU
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_export_keeps_the_residual_stages_and_drops_the_heads(tmp_path):
    """The exported graph is forward(): residual encoder in, deep-supervision heads out."""
    import onnx
    from phaseedge.export.onnx_export import export_model, model_info

    torch.manual_seed(0)
    model = build_model("unet-tiny", 3, tile=32, residual=True, deep_supervision=1).eval()
    path = export_model(model, model_info(model, tuple(NAMES)), tmp_path / "m.onnx", batch=(1, 2, 4),
                        log=lambda *a: None).path
    graph = onnx.load(str(path)).graph
    inits = {tuple(i.dims) for i in graph.initializer}
    assert tuple(model.aux_heads[0].weight.shape) not in inits  # [3, 8, 1, 1]: only the head has it
    _assert_onnx_matches_torch(path, model, seed=5, overlap=0.5)


@pytest.mark.slow  # a real (dynamo) ONNX export
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_instance_norm_exports_a_fixed_tile_graph_that_matches_torch(tmp_path):
    """InstanceNorm normalises by the whole tile, so no halo exists: the graph keeps the training
    tile, the sidecar says so, and the runtime tiles the frame at that size as validation did."""
    import onnx
    from phaseedge.export.onnx_export import export_model, model_info

    torch.manual_seed(0)
    model = build_model("unet-tiny", 3, tile=32, norm="instance").eval()
    assert model.tile_multiple is None
    with pytest.raises(ValueError, match="must be 32x32"):
        model(torch.rand(1, 1, 64, 64), torch.zeros(1, 3))
    result = export_model(model, model_info(model, tuple(NAMES)), tmp_path / "m.onnx", batch=(1, 2, 4),
                          log=lambda *a: None)
    assert result.sidecar.tile_multiple is None and result.sidecar.halo is None
    assert "InstanceNormalization" in {n.op_type for n in onnx.load(str(result.path)).graph.node}
    _assert_onnx_matches_torch(result.path, model, seed=6)


def _assert_onnx_matches_torch(path, model, seed: int, **tiling) -> None:
    """The exported graph through the Segmenter (ONNX Runtime) gives the torch model's probabilities."""
    from phaseedge import Segmenter

    img = np.random.default_rng(seed).integers(0, 65535, (57, 83)).astype(np.uint16)
    ort_res = Segmenter(path, **tiling).segment(img, ratio=[0.5, 0.3, 0.2], return_probabilities=True)
    torch_res = Segmenter(model, backend="torch", backend_options={"class_names": NAMES}, **tiling).segment(
        img, ratio=[0.5, 0.3, 0.2], return_probabilities=True)
    np.testing.assert_allclose(ort_res.probabilities, torch_res.probabilities, atol=2e-3)
