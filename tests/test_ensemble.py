"""Ensembles: the mean of the members' probabilities, saved, reloaded, run and exported as one model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from phaseedge.train import checkpoint
from phaseedge.train.cli import main as train_main
from phaseedge.train.ensemble import make_ensemble, write
from phaseedge.train.models import build_model

from phaseedge import Segmenter

torch.set_num_threads(2)
NAMES = ["ferrite", "martensite", "bainite"]


def _member(tmp_path, seed: int, name: str = "unet-tiny", names=NAMES, **kwargs):
    torch.manual_seed(seed)
    model = build_model(name, len(names), **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.config["pixel_size_m"] = 5e-8
    return checkpoint.save(model.eval(), tmp_path / f"m{seed}", class_names=names)


def _inputs(tile: int):
    g = torch.Generator().manual_seed(3)
    return torch.rand(2, 1, tile, tile, generator=g), torch.rand(2, 3, generator=g)


def test_output_is_the_mean_of_member_probabilities(tmp_path):
    dirs = [_member(tmp_path, s) for s in (1, 2, 3)]
    members = [checkpoint.load(d) for d in dirs]
    ensemble = make_ensemble(dirs)
    image, ratio = _inputs(ensemble.tile)
    with torch.no_grad():
        want = torch.stack([torch.softmax(m(image, ratio), 1) for m in members]).mean(0)
        got = torch.softmax(ensemble(image, ratio), 1)
        single = torch.softmax(members[0](image, ratio), 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, single, atol=1e-3), "members must differ for this test to mean anything"
    assert ensemble.tile_multiple == members[0].tile_multiple
    assert ensemble.config["pixel_size_m"] == 5e-8 and ensemble.config["class_names"] == NAMES


def test_written_checkpoint_reloads_identically_and_runs_in_the_segmenter(tmp_path):
    dirs = [_member(tmp_path, s) for s in (1, 2)]
    out = write(dirs, tmp_path / "ens")
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "ensemble" and len(config["arch_kwargs"]["members"]) == 2
    loaded, direct = checkpoint.load(out), make_ensemble(dirs)
    image, ratio = _inputs(loaded.tile)
    with torch.no_grad():
        assert torch.equal(loaded(image, ratio), direct(image, ratio))
    frame = np.random.default_rng(0).random((96, 80), dtype=np.float32)
    probs = [Segmenter(d, backend="torch", tile=32, overlap=0.25)
             .segment(frame, ratio=[0.5, 0.3, 0.2], return_probabilities=True).probabilities
             for d in (*dirs, out)]
    np.testing.assert_allclose(probs[2], (probs[0] + probs[1]) / 2, atol=2e-3)


def test_cli_writes_and_refuses_to_overwrite(tmp_path, capsys):
    dirs = [str(_member(tmp_path, s)) for s in (1, 2)]
    assert train_main(["ensemble", *dirs, "-o", str(tmp_path / "ens")]) == 0
    assert "ensemble of 2 members" in capsys.readouterr().out
    assert (tmp_path / "ens").stat().st_mode & 0o055 == 0o055  # readable by others, as a fit's checkpoint
    before = (tmp_path / "ens" / "model.safetensors").read_bytes()
    assert train_main(["ensemble", *dirs, "-o", str(tmp_path / "ens")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "ens" / "model.safetensors").read_bytes() == before


def test_members_that_disagree_are_refused_and_nothing_is_written(tmp_path):
    a = _member(tmp_path, 1)
    other_names = _member(tmp_path, 2, names=["ferrite", "pearlite", "bainite"])
    with pytest.raises(ValueError, match="class_names .* must agree"):
        write([a, other_names], tmp_path / "ens")
    no_plm = _member(tmp_path, 3, plm=False)
    with pytest.raises(ValueError, match="plm .* must agree"):
        make_ensemble([a, no_plm])
    with pytest.raises(ValueError, match="at least 2"):
        make_ensemble([a])
    nested = write([a, _member(tmp_path, 4)], tmp_path / "pair")
    with pytest.raises(ValueError, match="itself an ensemble"):
        make_ensemble([nested, a])
    assert not (tmp_path / "ens").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m1", "m2", "m3", "m4", "pair"]


def test_exports_to_onnx_with_parity(tmp_path):
    from phaseedge.export.onnx_export import export_model, load_checkpoint

    out = write([_member(tmp_path, s) for s in (1, 2)], tmp_path / "ens")
    model, info = load_checkpoint(out)
    result = export_model(model, info, tmp_path / "ens.onnx", batch=(1, 2, 4), max_tile=64,
                          measure_halo=False, log=lambda *_: None)
    assert result.sidecar.architecture == "ensemble" and result.sidecar.pixel_size_m == 5e-8
    assert result.parity.argmax_agreement >= 0.999
