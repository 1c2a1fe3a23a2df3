"""Training loop: the loss goes down, resume continues exactly, the best checkpoint loads."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from phaseedge.train import checkpoint
from phaseedge.train.augment import CropSampler, true_ratios
from phaseedge.train.loop import FitConfig, fit
from phaseedge.train.losses import LossConfig, segmentation_loss
from phaseedge.train.models import build_model
from tiny_fit import NAMES, tiny_config


def test_a_few_steps_lower_the_loss(fit_frames):
    torch.manual_seed(0)
    model = build_model("unet-tiny", 3, plm=True, tile=32)
    images, masks = CropSampler(fit_frames[0], 32).sample(8, np.random.default_rng(0))
    ratio = true_ratios(masks, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss, parts = segmentation_loss(model(images, ratio), masks, ratio, torch.ones(3), LossConfig())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["loss"])
    assert losses[-1] < 0.8 * losses[0], losses


def test_loss_parts_on_a_perfect_prediction():
    masks = torch.from_numpy(np.repeat(np.arange(3), 12).reshape(1, 6, 6))
    logits = 50.0 * torch.nn.functional.one_hot(masks, 3).permute(0, 3, 1, 2).float()
    _, parts = segmentation_loss(logits, masks, true_ratios(masks, 3), torch.ones(3), LossConfig())
    assert parts["ce"] < 1e-6 and parts["dice_loss"] < 1e-3 and parts["ratio_mse"] < 1e-9
    _, wrong = segmentation_loss(
        logits.roll(1, dims=1), masks, true_ratios(masks, 3), torch.ones(3), LossConfig()
    )
    assert wrong["ce"] > 10 and wrong["dice_loss"] > 0.9


def _state(out):
    from safetensors.torch import load_file

    return load_file(str(out / "state" / "trainable.safetensors")), load_file(
        str(out / "state" / "optimizer.safetensors")
    )


@pytest.mark.parametrize("schedule,optimizer", [("constant", "adam"), ("poly", "adam"), ("poly", "sgd")])
def test_resume_gives_the_same_state(fit_frames, tmp_path, schedule, optimizer):
    """Constant lr: a run extended from 1 to 2 epochs equals a 2-epoch run. Poly lr (which
    depends on the total): a 2-epoch run stopped after its first step and resumed equals it.
    With SGD the momentum buffers are what must come back."""
    train, val = fit_frames
    straight, split = tmp_path / "straight", tmp_path / "split"
    kw = {"lr_schedule": schedule, "optimizer": optimizer, "weight_decay": 3e-5 if optimizer == "sgd" else 0.0}
    fit(tiny_config(epochs=2, **kw), train, val, straight, progress=False)
    if schedule == "constant":
        fit(tiny_config(epochs=1, **kw), train, val, split, progress=False)
    else:
        stopped = fit(tiny_config(epochs=2, max_minutes=1e-6, **kw), train, val, split, progress=False)
        assert stopped["stopped_by_time"]
    fit(tiny_config(epochs=2, **kw), train, val, split, resume=True, progress=False)
    (wa, oa), (wb, ob) = _state(straight), _state(split)
    assert wa.keys() == wb.keys() and oa.keys() == ob.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
    for k in oa:
        torch.testing.assert_close(oa[k], ob[k], rtol=0, atol=0, msg=k)
    logs = [
        [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()] for d in (straight, split)
    ]
    if schedule == "constant":  # same epoch boundaries; the stopped run logs a partial epoch
        assert [r["train"] for r in logs[0]] == [r["train"] for r in logs[1]]
    assert json.loads((straight / "state" / "state.json").read_text())["progress"]["epoch"] == 2


def test_best_checkpoint_and_log(fit_frames, tmp_path):
    train, val = fit_frames
    out = tmp_path / "run"
    summary = fit(tiny_config(epochs=2), train, val, out, progress=False)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert {"loss", "ce", "dice_loss", "ratio_mse"} <= set(records[0]["train"])
    assert set(records[0]["plm"]) == {"plm.gamma", "plm.delta"}
    best = max(records, key=lambda r: r["val"]["select_dice"])
    assert all(r["val"]["select_dice"] == r["val"]["macro_dice"] for r in records)  # all classes by default
    assert summary["best_epoch"] == best["epoch"]
    model = checkpoint.load(out / "best")
    assert model.plm_enabled and model.config["class_names"] == NAMES
    assert model.config["val_metrics"]["epoch"] == best["epoch"]  # the saved epoch's scores travel along
    with pytest.raises(ValueError, match="already holds a run"):
        fit(tiny_config(epochs=1), train, val, out, progress=False)


def test_ema_is_what_validation_scores_and_best_keeps(fit_frames, tmp_path):
    """With ``ema`` the best checkpoint holds the weight average, not the last weights; the
    average survives a stop and resume bit for bit; a plain run cannot be resumed with ema."""
    from safetensors.torch import load_file

    train, val = fit_frames
    one = tmp_path / "one"
    fit(tiny_config(epochs=1, ema=0.9), train, val, one, progress=False)  # one epoch: it is the best
    average = load_file(str(one / "state" / "ema.safetensors"))
    last = load_file(str(one / "state" / "trainable.safetensors"))
    kept = load_file(str(one / "best" / "trainable.safetensors"))
    assert int(average["ema.n_averaged"]) == 2  # 8 crops / batch 4 = 2 steps
    assert kept.keys() == last.keys()
    moved = [k for k in last if last[k].is_floating_point() and not torch.equal(average[k], last[k])]
    assert moved  # the average lags the trained weights...
    for k in kept:  # ...and it is what best/ keeps
        torch.testing.assert_close(kept[k], average[k], rtol=0, atol=0, msg=k)

    straight, split = tmp_path / "straight", tmp_path / "split"
    fit(tiny_config(epochs=2, ema=0.9), train, val, straight, progress=False)
    assert fit(tiny_config(epochs=2, ema=0.9, max_minutes=1e-6), train, val, split, progress=False)["stopped_by_time"]
    fit(tiny_config(epochs=2, ema=0.9), train, val, split, resume=True, progress=False)
    a, b = (load_file(str(d / "state" / "ema.safetensors")) for d in (straight, split))
    assert a.keys() == b.keys() and int(a["ema.n_averaged"]) == 4
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)

    plain = tmp_path / "plain"
    fit(tiny_config(epochs=1), train, val, plain, progress=False)
    with pytest.raises(ValueError, match="without ema"):
        fit(tiny_config(epochs=2, ema=0.9), train, val, plain, resume=True, progress=False)


def test_ema_decay_warms_up_so_the_initial_weights_fade():
    """The first updates follow the live weights (decay (1 + n) / (10 + n)), later ones average
    at the configured decay; integer buffers are copied."""
    from phaseedge.train.loop import ema_update

    update = ema_update(0.999)
    for n, decay in ((0, 0.1), (1, 2 / 11), (100, 101 / 110), (10**6, 0.999)):
        a = [torch.zeros(3)]
        update(a, [torch.ones(3)], torch.tensor(n))
        torch.testing.assert_close(a[0], torch.full((3,), 1.0 - decay))
    counts = [torch.tensor(4)]
    update(counts, [torch.tensor(9)], torch.tensor(5))
    assert int(counts[0]) == 9


def test_time_budget_stops_cleanly(fit_frames, tmp_path):
    train, val = fit_frames
    summary = fit(tiny_config(epochs=50, max_minutes=1e-4, plm=False), train, val, tmp_path / "t", progress=False)
    assert summary["stopped_by_time"] and summary["best_epoch"] == 1
    assert not checkpoint.load(tmp_path / "t" / "best").plm_enabled


def test_poly_schedule_decays_to_zero():
    from phaseedge.train.loop import poly_lr

    assert poly_lr(1e-3, 0, 100, "poly") == 1e-3 and poly_lr(1e-3, 100, 100, "poly") == 0.0
    assert 0 < poly_lr(1e-3, 50, 100, "poly") < 1e-3 and poly_lr(1e-3, 50, 100, "constant") == 1e-3


def test_training_at_one_pixel_size_is_recorded_in_the_checkpoint(fit_frames, tmp_path):
    import dataclasses

    train, val = fit_frames
    train = [dataclasses.replace(train[0], pixel_size_m=10e-9), dataclasses.replace(train[1], pixel_size_m=30e-9)]
    val = [dataclasses.replace(val[0], pixel_size_m=20e-9)]
    fit(tiny_config(epochs=1, pixel_size_m="median"), train, val, tmp_path / "px", progress=False)
    assert checkpoint.load(tmp_path / "px" / "best").config["pixel_size_m"] == pytest.approx(20e-9)
    with pytest.raises(ValueError, match="pixel size"):
        fit(tiny_config(epochs=1, pixel_size_m=2e-8), fit_frames[0], fit_frames[1], tmp_path / "nopx", progress=False)


def test_bf16_channels_last_training_tracks_fp32_and_saves_a_plain_checkpoint(fit_frames, tmp_path):
    """The CPU speed setting (bf16 autocast, NHWC): same first-epoch loss as fp32 to bf16's
    precision, a deterministic rerun, and a best checkpoint that loads as a contiguous model."""
    train, val = fit_frames
    fast = {"precision": "bf16", "channels_last": True}
    runs = {name: tmp_path / name for name in ("fp32", "bf16", "bf16-again")}
    fit(tiny_config(epochs=1), train, val, runs["fp32"], progress=False)
    fit(tiny_config(epochs=1, **fast), train, val, runs["bf16"], progress=False)
    fit(tiny_config(epochs=1, **fast), train, val, runs["bf16-again"], progress=False)
    loss = {k: json.loads((d / "log.jsonl").read_text().splitlines()[0])["train"]["loss"] for k, d in runs.items()}
    assert loss["bf16"] == loss["bf16-again"]
    assert loss["bf16"] != loss["fp32"] and loss["bf16"] == pytest.approx(loss["fp32"], rel=0.05)
    model = checkpoint.load(runs["bf16"] / "best")
    assert all(p.is_contiguous() for p in model.parameters())
    assert json.loads((runs["bf16"] / "config.json").read_text())["precision"] == "bf16"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="precision"):
        FitConfig.from_dict({"precision": "int8"})
    from phaseedge.train.loop import autocast_dtype

    with pytest.raises(ValueError, match="CUDA"):
        autocast_dtype("fp16", torch.device("cpu"))
    assert autocast_dtype("auto", torch.device("cpu")) is None
    with pytest.raises(ValueError, match="unknown training settings"):
        FitConfig.from_dict({"epochz": 3})
    with pytest.raises(ValueError, match="alpha_min"):
        FitConfig.from_dict({"ratio": {"alpha_min": 1.5}})
    with pytest.raises(ValueError, match="batch_size"):
        FitConfig.from_dict({"batch_size": 0})
    for bad in (1.0, 0, -0.5, True, "0.999"):
        with pytest.raises(ValueError, match="ema"):
            FitConfig.from_dict({"ema": bad})
    with pytest.raises(ValueError, match="optimizer must be one of adam, sgd"):
        FitConfig.from_dict({"optimizer": "lion"})
    for bad in (-1e-4, 1.0, True, "1e-4"):
        with pytest.raises(ValueError, match="weight_decay"):
            FitConfig.from_dict({"weight_decay": bad})


def test_sgd_is_nesterov_and_lowers_the_loss_and_resume_refuses_another_optimizer(fit_frames, tmp_path):
    """nnU-Net's optimizer trains (the loss falls over a few epochs) and its saved state does
    not load into an Adam run, which would otherwise crash on the missing moments."""
    from phaseedge.train.loop import make_optimizer

    opt = make_optimizer("sgd", [torch.nn.Parameter(torch.zeros(2))], 0.01, 3e-5)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.99 and opt.defaults["weight_decay"] == 3e-5
    train, val = fit_frames
    out = tmp_path / "sgd"
    fit(tiny_config(epochs=4, optimizer="sgd", lr=0.01, lr_schedule="constant"), train, val, out, progress=False)
    losses = [json.loads(line)["train"]["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="saved with SGD, not Adam"):
        fit(tiny_config(epochs=5, lr_schedule="constant"), train, val, out, resume=True, progress=False)


def test_set_overrides_nested_config_settings(tmp_path):
    import argparse

    from phaseedge.train.fit import build_config, parse_override

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": "unet", "class_names": NAMES, "pixel_size_m": "median",
                                  "model_kwargs": {"width": 16}, "augment": {"noise": 0.03}}))
    args = argparse.Namespace(
        config=config, resume=False, out=tmp_path / "o", no_plm=False, class_names=None,
        model=None, epochs=None, max_minutes=None, tile=None, batch_size=None, lr=None, seed=None,
        threads=None, sam_checkpoint=None,
        overrides=[parse_override(s) for s in ("pixel_size_m=null", "model_kwargs.plm_at=decoder",
                                               "augment.noise=0", "ratio.level=crop")],
    )
    cfg = build_config(args)
    assert cfg.pixel_size_m is None and cfg.model_kwargs == {"width": 16, "plm_at": "decoder"}
    assert cfg.augment.noise == 0 and cfg.ratio.level == "crop"
    with pytest.raises(argparse.ArgumentTypeError):
        parse_override("no-equals-sign")


def test_resuming_with_the_config_keeps_where_the_model_was_trained(tmp_path):
    """scripts/run_metaldam.sh resumes an interrupted fit with --config and --resume: the run's
    config (and so its checkpoints and sidecar) must still say what data it was trained on."""
    from phaseedge.train.cli import build_parser
    from phaseedge.train.fit import build_config

    config = tmp_path / "recipe.json"
    config.write_text(json.dumps({"model": "unet", "class_names": list(NAMES)}))
    data = tmp_path / "mysteel"
    for resume in ([], ["--resume"]):
        args = build_parser().parse_args(["fit", "--config", str(config), "--data", str(data),
                                          "--out", str(tmp_path / "run"), *resume])
        assert build_config(args).trained_on == "mysteel", resume
