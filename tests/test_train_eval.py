"""Whole-frame evaluation through the Segmenter: metrics on a hand-built case, ratio handling."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from phaseedge.train.data import LabelledImage
from phaseedge.train.evaluate import evaluate, open_segmenter, simulated_ratio


class GreyLevelModel(torch.nn.Module):
    """Class = nearest of the grey levels 0, 0.5, 1; counts how often it is called with a ratio."""

    def __init__(self, plm: bool) -> None:
        super().__init__()
        self.tile, self.n_classes = 16, 3
        self.plm_enabled = plm
        self.config = {"class_names": ["a", "b", "c"], "plm": plm}
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.calls_with_ratio = 0

    def forward(self, image: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        self.calls_with_ratio += int(bool(ratio.abs().sum() > 0))
        levels = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)
        return -200.0 * (image - levels) ** 2 + self.anchor


def _case() -> LabelledImage:
    """40x40 frame: left half grey 0 (class a), right top 0.5 (b), right bottom 1.0 (c);
    the truth calls one 10x10 block of the b region class c."""
    image = np.zeros((40, 40), np.float32)
    image[:20, 20:] = 0.5
    image[20:, 20:] = 1.0
    mask = np.zeros((40, 40), np.uint8)
    mask[:20, 20:] = 1
    mask[20:, 20:] = 2
    mask[:10, 20:30] = 2
    return LabelledImage("hand", image, mask)


def test_metrics_on_a_hand_built_case():
    item = _case()
    model = GreyLevelModel(plm=False)
    with open_segmenter(model, overlap=0.25) as seg:
        (res,) = evaluate(seg, [item], ["exact"], (False,))
    # prediction: a 800 px, b 400 px, c 400 px; truth: a 800, b 300, c 500; b/c overlap 300/400
    assert res["per_class_dice"] == {"a": 1.0, "b": pytest.approx(600 / 700), "c": pytest.approx(800 / 900)}
    assert res["macro_dice"] == pytest.approx((1 + 600 / 700 + 800 / 900) / 3)
    assert res["miou"] == pytest.approx((1 + 300 / 400 + 400 / 500) / 3)
    assert res["fraction_mae"] == pytest.approx((0 + 100 / 1600 + 100 / 1600) / 3)
    assert res["ratio_accuracy"] == "exact" and res["images"] == 1


def test_ratio_reaches_only_plm_models():
    item = _case()
    plm = GreyLevelModel(plm=True)
    with open_segmenter(plm) as seg:
        results = evaluate(seg, [item], ["none", 0.9, "exact"], (False, True))
    assert plm.calls_with_ratio > 0
    by = {(r["ratio_accuracy"], r["calibrate"]): r for r in results}
    assert len(by) == 6
    # without a ratio, calibration has nothing to match and changes nothing
    assert by[("none", True)]["macro_dice"] == by[("none", False)]["macro_dice"]

    base = GreyLevelModel(plm=False)
    with open_segmenter(base) as seg:
        evaluate(seg, [item], ["none", 0.5, "exact"], (False,))
    assert base.calls_with_ratio == 0  # a model without PLM is run once, ratio-free


def test_calibrated_scores_are_the_segmenters_calibrate_mode():
    """One calibration in phaseedge: eval's --calibrate is the runtime's calibrate mode."""
    from phaseedge import Segmenter
    from phaseedge.metrics import ConfusionMatrix

    item = _case()
    model = GreyLevelModel(plm=True)
    with open_segmenter(model) as seg:
        (_, cal) = evaluate(seg, [item], ["exact"], (False, True))
        with Segmenter(seg.backend, ratio_mode="calibrate") as runtime:
            before = model.calls_with_ratio
            runtime.segment(item.image, ratio=[0.5, 0.25, 0.25])
            assert model.calls_with_ratio > before  # the PLM gets the ratio in calibrate mode too, as in eval
            cm = ConfusionMatrix(3, ["a", "b", "c"])
            cm.update(runtime.segment(item.image, ratio=simulated_ratio(item.fractions(3), "exact")).labels,
                      item.mask)
    assert cal["per_class_dice"] == pytest.approx(cm.summary()["per_class_dice"])


def test_expert_free_estimates_em_and_iterated_plm():
    from phaseedge.train.evaluate import estimated_ratio, parse_accuracy

    item = _case()
    model = GreyLevelModel(plm=True)
    with open_segmenter(model) as seg:
        em = estimated_ratio(seg, item, "em", np.array([0.5, 0.25, 0.25]))
        it2 = estimated_ratio(seg, item, "iter2", None)
        results = evaluate(seg, [item], ["em", "iter1"], (False,), train_prior=np.array([0.4, 0.3, 0.3]))
        with pytest.raises(ValueError, match="train-prior"):
            evaluate(seg, [item], ["em"])
    # the grey-level model is certain, so both estimates are the predicted fractions 0.5 / 0.25 / 0.25
    np.testing.assert_allclose(em, [0.5, 0.25, 0.25], atol=1e-3)
    np.testing.assert_allclose(it2, [0.5, 0.25, 0.25], atol=1e-3)
    assert [r["ratio_accuracy"] for r in results] == ["em", "iter1"]
    assert parse_accuracy("iter3") == "iter3"
    with pytest.raises(Exception, match="iterN"):
        parse_accuracy("iter0")


def test_simulated_ratio():
    truth = np.array([0.7, 0.18, 0.12])
    assert simulated_ratio(truth, "none") is None
    np.testing.assert_allclose(simulated_ratio(truth, "exact"), truth)
    np.testing.assert_allclose(simulated_ratio(truth, 0.3), [0.315, 0.341, 0.344], atol=1e-6)


def test_eval_cli_prints_json(tmp_path, capsys):
    import cv2
    from phaseedge.train import checkpoint
    from phaseedge.train.cli import main
    from phaseedge.train.models import build_model

    from phaseedge import synth

    torch.manual_seed(0)
    ckpt = checkpoint.save(build_model("unet-tiny", 3, plm=True, tile=32), tmp_path / "ckpt", ["a", "b", "c"])
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "labels").mkdir()
    for i, seed in enumerate((301, 302)):
        img, mask = synth.micrograph((48, 40), n_phases=3, seed=seed, dtype=np.uint8, band=6)
        cv2.imwrite(str(tmp_path / "data" / "images" / f"f{i}.png"), img)
        cv2.imwrite(str(tmp_path / "data" / "labels" / f"f{i}.png"), mask)
    (tmp_path / "split.txt").write_text("f1\n")
    argv = [
        "eval",
        str(ckpt),
        "--data",
        str(tmp_path / "data"),
        "--split",
        str(tmp_path / "split.txt"),
        "--json",
    ]
    assert main([*argv, "--ratio-accuracy", "0.9"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert {"macro_dice", "per_class_dice", "miou", "fraction_mae"} <= set(one)
    assert (
        one["images"] == 1 and one["ratio_accuracy"] == 0.9 and set(one["per_class_dice"]) == {"a", "b", "c"}
    )
    assert main([*argv, "--ratio-accuracy", "none,exact", "--calibrate", "both"]) == 0
    sweep = json.loads(capsys.readouterr().out)
    assert [(r["ratio_accuracy"], r["calibrate"]) for r in sweep] == [
        ("none", False),
        ("none", True),
        ("exact", False),
        ("exact", True),
    ]
