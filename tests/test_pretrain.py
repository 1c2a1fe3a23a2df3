"""Self-supervised pretraining (Models Genesis): the corruptions, the stage, and its place in fit."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from phaseedge.train.augment import AugmentConfig
from phaseedge.train.loop import FitConfig, fit
from phaseedge.train.models import build_model
from phaseedge.train.pretrain import PretrainConfig, bezier_intensity, corrupt, local_shuffle, paint, pretrain
from tiny_fit import tiny_config


def _crop(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((64, 64)).astype(np.float32)


def test_local_shuffle_moves_pixels_only_within_small_windows():
    x = _crop()
    y = local_shuffle(x, np.random.default_rng(1))
    assert not np.array_equal(x, y)
    np.testing.assert_array_equal(np.sort(x.ravel()), np.sort(y.ravel()))  # the same values, moved
    # windows are at most T/10 = 6 pixels a side: on a ramp, pixels land near where they were
    ramp = np.add.outer(np.arange(64.0), np.arange(64.0)).astype(np.float32)
    moved = local_shuffle(ramp, np.random.default_rng(2))
    anywhere = np.random.default_rng(2).permutation(ramp.ravel()).reshape(ramp.shape)
    assert np.abs(moved - ramp).mean() < 0.1 * np.abs(anywhere - ramp).mean()


def test_bezier_intensity_is_a_monotone_map_of_the_unit_interval():
    x = np.linspace(0.0, 1.0, 101, dtype=np.float32)
    rising = falling = 0
    for seed in range(20):
        y = bezier_intensity(x, np.random.default_rng(seed))
        assert y.dtype == x.dtype and y.min() >= 0.0 and y.max() <= 1.0
        d = np.diff(y)
        assert (d >= -1e-6).all() or (d <= 1e-6).all(), "the curve must be monotone"
        rising += int(y[-1] > y[0])
        falling += int(y[-1] < y[0])
    assert rising and falling  # both the curve and its inverse occur


def test_inpainting_keeps_most_pixels_and_outpainting_keeps_a_box():
    x = _crop()
    inner = paint(x, np.random.default_rng(3), outpaint=False)
    kept = np.isclose(inner, x)
    assert 0.5 < kept.mean() < 1.0  # boxes of T/6..T/3 a side, up to 5 of them
    outer = paint(x, np.random.default_rng(3), outpaint=True)
    kept = np.isclose(outer, x)
    assert 0.15 < kept.mean() < 1.0  # at least one box of 3T/7 a side survives
    rows, cols = np.nonzero(kept.all(axis=1))[0], np.nonzero(kept.all(axis=0))[0]
    assert rows.size == 0 and cols.size == 0  # noise everywhere else: no whole row or column survives


def test_corrupt_with_every_rate_zero_is_the_identity():
    x = _crop()
    off = PretrainConfig(p_shuffle=0.0, p_nonlinear=0.0, p_paint=0.0)
    np.testing.assert_array_equal(corrupt(x, np.random.default_rng(0), off), x)
    assert not np.array_equal(corrupt(x, np.random.default_rng(0), PretrainConfig()), x)


def _pretrained(fit_frames, seed: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("unet-tiny", 3, plm=True, tile=32)
    pretrain(model, PretrainConfig(steps=6, lr=1e-2), fit_frames[0], tile=32, batch_size=2,
             augment=AugmentConfig(), seed=seed, cast=None, memory_format=torch.contiguous_format,
             progress=False)
    return model


def test_pretraining_changes_the_network_but_not_its_classifier_and_is_seeded(fit_frames):
    torch.manual_seed(0)
    fresh = build_model("unet-tiny", 3, plm=True, tile=32)
    a, b, c = _pretrained(fit_frames, 0), _pretrained(fit_frames, 0), _pretrained(fit_frames, 1)
    fresh_state, a_state = fresh.state_dict(), a.state_dict()
    changed = [k for k in fresh_state if not torch.equal(fresh_state[k], a_state[k])]
    assert any(k.startswith("down.") for k in changed) and any(k.startswith("up_conv.") for k in changed)
    assert not any(k.startswith("classifier.") for k in changed), "the supervised head must stay as built"
    assert a.classifier.out_channels == 3
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a_state.items()), "same seed, same weights"
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a_state.items())


def test_pretraining_refuses_a_model_without_a_conv_classifier(fit_frames):
    model = build_model("sam-tiny", 3, plm=True, tile=32)
    with pytest.raises(ValueError, match="needs a U-Net"):
        pretrain(model, PretrainConfig(steps=1), fit_frames[0], tile=32, batch_size=2, augment=AugmentConfig(),
                 seed=0, cast=None, memory_format=torch.contiguous_format, progress=False)




def test_fit_pretrains_first_and_records_it(fit_frames, tmp_path):
    plain = fit(tiny_config(epochs=1), *fit_frames, tmp_path / "plain", progress=False)
    pre = fit(tiny_config(epochs=1, pretrain={"steps": 5}), *fit_frames, tmp_path / "pre", progress=False)
    summary = json.loads((tmp_path / "pre" / "pretrain.json").read_text())
    assert summary["config"]["steps"] == 5 and summary["curve"][-1]["step"] == 5
    assert np.isfinite(summary["curve"][-1]["mse"])
    assert not (tmp_path / "plain" / "pretrain.json").exists()
    saved = json.loads((tmp_path / "pre" / "config.json").read_text())
    assert saved["pretrain"]["steps"] == 5 and FitConfig.from_dict(saved).pretrain.steps == 5
    log = [json.loads((tmp_path / d / "log.jsonl").read_text().splitlines()[0]) for d in ("plain", "pre")]
    # the supervised crops are the same draws; only the starting weights differ
    assert log[0]["train"]["loss"] != log[1]["train"]["loss"]
    assert plain["best_epoch"] == pre["best_epoch"] == 1


@pytest.mark.parametrize(
    "bad",
    [{"steps": -1}, {"steps": 1.5}, {"steps": True}, {"lr": 0}, {"p_paint": 1.5}, {"p_outpaint": -0.1},
     {"warmup": 3}],
)
def test_bad_pretrain_settings_are_refused(bad):
    with pytest.raises(ValueError, match="pretrain"):
        FitConfig.from_dict({"pretrain": bad})
