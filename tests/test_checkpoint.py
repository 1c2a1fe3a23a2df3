"""Trained-model checkpoints: safetensors + config.json round trip and clear failures."""

from __future__ import annotations

import json

import pytest
import torch
from phaseedge.train import checkpoint
from phaseedge.train.models import build_model
from safetensors.torch import load_file, save_file

torch.set_num_threads(2)
NAMES = ["ferrite", "martensite", "bainite"]


def _trained(name: str, **kwargs):
    """A model whose weights differ from any fresh init (LoRA B non-zero, PLM scalars moved)."""
    torch.manual_seed(1)
    model = build_model(name, 3, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _inputs(model):
    g = torch.Generator().manual_seed(3)
    return torch.rand(2, 1, model.tile, model.tile, generator=g), torch.rand(2, 3, generator=g)


@pytest.mark.parametrize(
    ("name", "kwargs"), [("unet-tiny", {}), ("sam-tiny", {}), ("sam-tiny", {"plm": False})]
)
def test_round_trip_unmerged_is_identical(tmp_path, name, kwargs):
    model = _trained(name, **kwargs)
    checkpoint.save(model, tmp_path, class_names=NAMES, merged=False)
    loaded = checkpoint.load(tmp_path)
    assert not loaded.training
    image, ratio = _inputs(model)
    with torch.no_grad():
        assert torch.equal(model(image, ratio), loaded(image, ratio))
    assert loaded.config["class_names"] == NAMES
    assert loaded.config["plm"] == model.config["plm"]


def test_merged_save_folds_lora_and_keeps_outputs(tmp_path):
    model = _trained("sam-tiny")
    checkpoint.save(model, tmp_path, class_names=NAMES)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["merged"] is True and config["lora_rank"] == 4 and config["class_names"] == NAMES
    assert not any(".lora." in k for k in load_file(str(tmp_path / "model.safetensors")))
    assert any(".lora." in k for k in model.state_dict()), "save must not merge the caller's model"
    loaded = checkpoint.load(tmp_path)
    image, ratio = _inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image, ratio), model(image, ratio), rtol=1e-5, atol=1e-5)


def test_config_has_every_contract_field(tmp_path):
    checkpoint.save(build_model("unet-tiny", 3), tmp_path, class_names=NAMES)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in (
        "format_version",
        "architecture",
        "arch_kwargs",
        "n_classes",
        "class_names",
        "tile",
        "plm",
        "normalization",
        "lora_rank",
        "lora_alpha",
        "merged",
    ):
        assert key in config
    assert config["normalization"] == {"method": "percentile", "low": 0.5, "high": 99.5}


def test_wrong_shapes_fail_clearly(tmp_path):
    checkpoint.save(_trained("unet-tiny"), tmp_path, class_names=NAMES)
    config = json.loads((tmp_path / "config.json").read_text())
    config["arch_kwargs"]["width"] = 8
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"does not match(.|\n)*down.0.0.weight: file \[4, 1, 3, 3\], model \[8, 1, 3, 3\]"
    ):
        checkpoint.load(tmp_path)


def test_missing_tensor_fails_clearly(tmp_path):
    checkpoint.save(_trained("sam-tiny"), tmp_path, class_names=NAMES)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["plm.gamma"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="missing plm.gamma"):
        checkpoint.load(tmp_path)


def test_save_needs_class_names(tmp_path):
    model = build_model("unet-tiny", 3)
    with pytest.raises(ValueError, match="class_names are required"):
        checkpoint.save(model, tmp_path)
    with pytest.raises(ValueError, match="3 non-empty strings"):
        checkpoint.save(model, tmp_path, class_names=["a", "b"])


def test_load_reports_missing_files_and_bad_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        checkpoint.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        checkpoint.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(ValueError, match="lacks architecture"):
        checkpoint.load(tmp_path)
