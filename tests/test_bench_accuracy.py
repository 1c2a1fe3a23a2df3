"""`phaseedge-bench accuracy` smoke test: tiny random U-Nets on a tiny synthetic labelled folder."""

from __future__ import annotations

import json
import warnings

import cv2
import numpy as np
import pytest
from phaseedge.bench import accuracy, cli

from phaseedge import sidecar, synth

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")

CLASSES = ("ferrite", "martensite", "bainite")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from phaseedge.export.onnx_export import ExportWrapper
    from phaseedge.train import checkpoint
    from phaseedge.train.models import build_model

    root = tmp_path_factory.mktemp("acc")
    data = root / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    for seed in (1, 2):
        image, mask = synth.micrograph((48, 56), n_phases=3, seed=seed, dtype=np.uint16)
        cv2.imwrite(str(data / "images" / f"s{seed}.png"), image)
        cv2.imwrite(str(data / "labels" / f"s{seed}.png"), mask)
    (root / "split.txt").write_text("s2\n")
    torch.manual_seed(0)
    paths = {}
    for name, plm in (("plm", True), ("base", False)):
        model = build_model("unet-tiny", 3, plm=plm).eval()
        paths[name] = checkpoint.save(model, root / name, class_names=CLASSES)
    # The PLM checkpoint's deployed form, exported with the fast TorchScript exporter.
    model = checkpoint.load(paths["plm"])
    onnx_path = root / "plm.onnx"
    tile = model.tile
    with warnings.catch_warnings():  # the model's input checks are constants in a trace: expected
        warnings.simplefilter("ignore")
        torch.onnx.export(ExportWrapper(model, True).eval(), (torch.rand(2, 1, tile, tile).half(), torch.rand(2, 3)),
                          str(onnx_path), dynamo=False, input_names=["image", "ratio"], output_names=["probs"],
                          dynamic_axes={"image": {0: "B"}, "ratio": {0: "B"}, "probs": {0: "B"}})
    inputs, outputs = sidecar.io_specs(tile, 3)
    sidecar.write(sidecar.Sidecar(kind="onnx", architecture="unet-tiny", plm=True, class_names=CLASSES, n_classes=3,
                                  tile=tile, normalization={"method": "percentile", "low": 0.5, "high": 99.5},
                                  inputs=inputs, outputs=outputs, batch=(1, 4, 8), precision="fp32"), onnx_path)
    return root, data, paths, onnx_path


def test_accuracy_report_covers_alphas_modes_and_deployed_forms(setup, capsys):
    root, data, paths, onnx_path = setup
    out = root / "out"
    rc = cli.main(["accuracy", "--model", str(paths["plm"]), "--baseline", str(paths["base"]), "--data", str(data),
                   "--alphas", "none,0.5,exact", "--modes", "global,calibrate", "--deployed", str(onnx_path),
                   str(root / "missing.engine"), "--out", str(out), "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 2
    for which in ("plm", "baseline"):
        rows = report["results"][which]
        assert {(r["mode"], r["alpha"]) for r in rows} == {(m, a) for m in ("global", "calibrate")
                                                            for a in ("none", "0.5", "exact")}
        for r in rows:
            assert 0.0 <= r["macro_dice"] <= 1.0 and 0.0 <= r["miou"] <= 1.0 and r["fraction_mae"] >= 0
            assert set(r["per_class_dice"]) == set(CLASSES)
    # the baseline ignores the ratio in global mode: those rows are the α=none run
    base = {(r["mode"], r["alpha"]): r for r in report["results"]["baseline"]}
    assert base[("global", "exact")]["macro_dice"] == base[("global", "none")]["macro_dice"]
    assert base[("global", "exact")]["same_as"] == "alpha none"
    onnx_row, missing = report["agreement"]
    assert onnx_row["form"] == "ONNX fp32"
    assert onnx_row["argmax_agreement"] > 0.95  # same weights; fp16 input rounding only
    assert "not found" in missing["skipped"]
    assert (out / "dice_vs_alpha.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "accuracy.json").read_text())["images"] == 2


def test_split_selects_images_and_bad_arguments_fail(setup, capsys):
    root, data, paths, _ = setup
    rc = cli.main(["accuracy", "--model", str(paths["plm"]), "--baseline", str(paths["base"]), "--data", str(data),
                   "--split", str(root / "split.txt"), "--alphas", "exact", "--modes", "local", "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["images"] == 1
    # the PLM model and its baseline swapped: refused
    assert cli.main(["accuracy", "--model", str(paths["base"]), "--baseline", str(paths["plm"]),
                     "--data", str(data)]) == 2
    assert "no PLM" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["accuracy", "--model", "m", "--baseline", "b", "--data", str(data), "--alphas", "1.5"])


def test_curves_put_the_baseline_as_a_flat_line():
    report = {"results": {
        "plm": [{"mode": "global", "alpha": a, "macro_dice": d} for a, d in (("none", 0.5), ("exact", 0.8))],
        "baseline": [{"mode": m, "alpha": a, "macro_dice": 0.6} for m in ("global", "calibrate")
                     for a in ("none", "exact")],
    }}
    lines, flat = accuracy.curves(report)
    assert lines["PLM, global"] == {"none": 0.5, "exact": 0.8}
    assert set(lines["no PLM + calibrate"]) == {"none", "exact"}
    assert flat == {"no-PLM baseline (no ratio)": 0.6}
