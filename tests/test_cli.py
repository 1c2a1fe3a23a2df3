"""`phaseedge segment` end to end on a tiny graph: outputs, CSV, exit codes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tifffile
from runtime_graphs import write_graph

from phaseedge import Segmenter, __version__
from phaseedge.cli import main


@pytest.fixture
def workdir(tmp_path):
    model = write_graph(tmp_path / "m.onnx", "ratio", tile=32, n=3, class_names=["ferrite", "martensite", "bainite"])
    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "a.tif", rng.integers(0, 65535, (70, 90)).astype(np.uint16))
    cv2.imwrite(str(tmp_path / "b.png"), rng.integers(0, 255, (40, 33)).astype(np.uint8))
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    return tmp_path, model


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_segment_writes_labels_overlay_json_and_csv(workdir, capsys):
    d, model = workdir
    out = d / "out"
    rc = main(["segment", str(d / "a.tif"), str(d / "b.png"), "--model", str(model), "--ratio", "0.6,0.3,0.1",
               "--out", str(out), "--overlap", "0.5"])
    assert rc == 0
    rows = _rows(out / "fractions.csv")
    assert [r["image"] for r in rows] == [str(d / "a.tif"), str(d / "b.png")]
    assert all(r["error"] == "" for r in rows)
    from PIL import Image

    from phaseedge.result import palette

    png = Image.open(out / "a_labels.png")
    assert png.mode == "P"  # indexed colour: pixel values are class indices
    labels = np.array(png)
    ref = Segmenter(model, overlap=0.5).segment(tifffile.imread(d / "a.tif"), ratio=[0.6, 0.3, 0.1])
    assert np.array_equal(labels, ref.labels)
    assert np.array(png.getpalette()[:9]).reshape(3, 3).tolist() == palette(3).tolist()
    tif = tifffile.imread(out / "a_labels.tif")
    assert tif.dtype == np.uint16 and np.array_equal(tif, ref.labels)
    assert rows[0]["ferrite_pixels"] == str(int(ref.counts[0])) and rows[0]["model"] == str(model)
    assert rows[0]["ratio"] == "0.6000 0.3000 0.1000"
    info = json.loads((out / "a.json").read_text())
    assert info["fractions"] == pytest.approx(ref.fractions)
    assert float(rows[0]["ferrite"]) == pytest.approx(ref.fractions["ferrite"], abs=1e-6)
    overlay = cv2.imread(str(out / "b_overlay.png"))
    assert overlay.shape == (40, 33, 3)


def test_bad_files_fail_alone_with_a_reason(workdir, capsys):
    d, model = workdir
    out = d / "out"
    rc = main(["segment", str(d / "bad.tif"), str(d / "a.tif"), str(d / "nope.png"), "--model", str(model),
               "--out", str(out)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "bad.tif" in err and "nope.png" in err and "1/3 images" in err
    rows = _rows(out / "fractions.csv")
    assert [bool(r["error"]) for r in rows] == [True, False, True]
    assert (out / "a_labels.png").is_file()


@pytest.mark.parametrize("extra,match", [
    (["--ratio", "0.5,0.5"], "2 values but the model has 3"),
    (["--ratio", "0.5,-0.2,0.7"], "negative"),
    (["--ratio", "ferrite=0.5,pearlite=0.5"], "'pearlite', which is not a class of this model (ferrite, martensite"),
    (["--ratio", "ferrite=0,bainite=0"], "sums to zero"),
    (["--ratio", "martensite=1.5,rest=auto"], "fraction of the frame in [0, 1]"),
    (["--ratio", "pearlite=0.1,rest=auto"], "'pearlite', which is not a class"),
    (["--ratio", "ferrite=0.6,martensite=0.6,rest=auto"], "sum to 1.200 > 1"),
])
def test_bad_ratio_is_one_line_and_exit_2(workdir, capsys, extra, match):
    d, model = workdir
    rc = main(["segment", str(d / "a.tif"), "--model", str(model), "--out", str(d / "o"), *extra])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1


def test_ratio_by_name_and_per_image_ratio_file(workdir, capsys):
    d, model = workdir
    named, ordered = d / "named", d / "ordered"
    assert main(["segment", str(d / "a.tif"), "--model", str(model), "--out", str(named),
                 "--ratio", "Bainite=0.1,ferrite=0.6,MARTENSITE=0.3"]) == 0
    assert main(["segment", str(d / "a.tif"), "--model", str(model), "--out", str(ordered),
                 "--ratio", "0.6,0.3,0.1"]) == 0
    assert (named / "a_labels.png").read_bytes() == (ordered / "a_labels.png").read_bytes()
    table = d / "ratios.csv"
    table.write_text("image,ferrite,martensite,bainite\na.tif,0.1,0.1,0.8\n")
    per_file = d / "per_file"
    assert main(["segment", str(d / "a.tif"), str(d / "b.png"), "--model", str(model), "--out", str(per_file),
                 "--ratio", "0.6,0.3,0.1", "--ratio-file", str(table)]) == 0
    a = json.loads((per_file / "a.json").read_text())
    b = json.loads((per_file / "b.json").read_text())
    ref_a = Segmenter(model).segment(tifffile.imread(d / "a.tif"), ratio=[0.1, 0.1, 0.8])
    assert a["fractions"] == pytest.approx(ref_a.fractions)
    assert b["ratio"] == pytest.approx([0.6, 0.3, 0.1])  # not in the file: --ratio
    table.write_text("image,ferrite,steel\na.tif,0.1,0.9\n")
    assert main(["segment", str(d / "a.tif"), "--model", str(model), "--out", str(d / "x"),
                 "--ratio-file", str(table)]) == 2
    assert "steel" in capsys.readouterr().err


def test_partial_ratio_on_the_command_line(workdir):
    d, model = workdir
    out = d / "partial"
    assert main(["segment", str(d / "a.tif"), "--model", str(model), "--out", str(out),
                 "--ratio", "martensite=0.10,rest=auto"]) == 0
    record = json.loads((out / "a.json").read_text())
    assert record["ratio_source"] == "partial" and record["ratio"][1] == pytest.approx(0.10, abs=1e-6)
    ref = Segmenter(model).segment(tifffile.imread(d / "a.tif"), ratio={"martensite": 0.1, "rest": "auto"})
    assert record["fractions"] == pytest.approx(ref.fractions)
    assert "partial" in (out / "fractions.csv").read_text()


def test_mask_excludes_pixels_and_uncertainty_tiff(workdir):
    d, model = workdir
    roi = np.ones((70, 90), np.uint8)
    roi[50:, :] = 0  # a scale-bar strip
    cv2.imwrite(str(d / "roi.png"), roi * 255)
    out = d / "roi_out"
    assert main(["segment", str(d / "a.tif"), "--model", str(model), "--out", str(out), "--mask", str(d / "roi.png"),
                 "--uncertainty"]) == 0
    info = json.loads((out / "a.json").read_text())
    ref = Segmenter(model).segment(tifffile.imread(d / "a.tif"), return_probabilities=True)
    inside = np.bincount(ref.labels[:50].ravel(), minlength=3)
    assert list(info["pixel_counts"].values()) == inside.tolist() and sum(inside) == 50 * 90
    assert sum(info["fractions"].values()) == pytest.approx(1.0)
    labels = tifffile.imread(out / "a_labels.tif")
    assert (labels[50:] == 255).all() and np.array_equal(labels[:50], ref.labels[:50])
    unc = tifffile.imread(out / "a_uncertainty.tif")
    p = np.clip(ref.probabilities, 1e-12, 1)
    np.testing.assert_allclose(unc, -(p * np.log2(p)).sum(axis=0), atol=1e-4)
    assert not [f for f in out.iterdir() if f.name.endswith(".tmp")]  # nothing half-written left
    cv2.imwrite(str(d / "small.png"), np.ones((10, 10), np.uint8))
    assert main(["segment", str(d / "a.tif"), "--model", str(model), "--out", str(d / "x"),
                 "--mask", str(d / "small.png")]) == 1  # the frame fails alone, with the reason


def test_mismatched_or_missing_model_is_exit_2(workdir, capsys):
    d, model = workdir
    model.write_bytes(model.read_bytes() + b"\0")  # no longer the file its sidecar describes
    assert main(["segment", str(d / "a.tif"), "--model", str(model), "--out", str(d / "o")]) == 2
    assert "sha256" in capsys.readouterr().err
    assert main(["segment", str(d / "a.tif"), "--model", str(d / "none.onnx"), "--out", str(d / "o")]) == 2


def test_default_model_missing_is_exit_2(workdir, monkeypatch, capsys):
    from phaseedge import bundled

    d, _ = workdir
    monkeypatch.setattr(bundled, "DIR", d / "empty")
    assert main(["segment", str(d / "a.tif"), "--model", "default", "--out", str(d / "o")]) == 2
    assert "bundled model" in capsys.readouterr().err


def test_bad_arguments_exit_2(workdir):
    d, model = workdir
    with pytest.raises(SystemExit) as e:
        main(["segment", str(d / "a.tif"), "--model", str(model), "--out", str(d / "o"), "--ratio", "a,b"])
    assert e.value.code == 2


def test_version_entry_point():
    out = subprocess.run([sys.executable, "-m", "phaseedge.cli", "--version"], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0 and out.stdout.strip() == f"phaseedge {__version__}"


# ------------------------------------------------------------------ demo
def test_demo_without_the_bundled_model_fails_clearly(tmp_path, monkeypatch, capsys):
    from phaseedge import bundled, demo

    monkeypatch.setattr(bundled, "DIR", tmp_path)
    assert demo.main(["--out", str(tmp_path / "o"), "--size", "64x48"]) == 2
    assert "bundled model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # no fake output


def test_demo_runs_with_a_model(tmp_path, monkeypatch, capsys):
    from phaseedge import bundled, demo, synth

    write_graph(tmp_path / "default.onnx", "ratio", tile=32, n=3, class_names=synth.class_names(3))
    monkeypatch.setattr(bundled, "DIR", tmp_path)
    assert demo.main(["--out", str(tmp_path / "o"), "--size", "96x64"]) == 0
    assert demo.main(["--out", str(tmp_path / "o2"), "--size", "64x40", "--model", str(tmp_path / "default.onnx"),
                      "--with-ratio"]) == 0
    out = capsys.readouterr().out
    assert "macro Dice" in out and "s/MP" in out
    summary = json.loads((tmp_path / "o" / "fractions.json").read_text())
    assert 0 <= summary["macro_dice"] <= 1
    assert {p.name for p in (tmp_path / "o").iterdir()} >= {"image.tif", "labels.png", "truth.png", "overlay.png"}


def test_bundled_model_segments_an_unseen_synthetic_frame():
    from phaseedge import default_model, metrics, synth

    try:
        model = default_model()
    except FileNotFoundError:
        pytest.skip("no bundled model in this checkout")
    seg = Segmenter(model, backend="onnxruntime", backend_options={"providers": ["CPUExecutionProvider"]})
    img, truth = synth.micrograph((300, 400), n_phases=seg.n_classes, seed=2029, dtype=np.uint16)
    result = seg.segment(img)
    assert metrics.macro_dice(result.labels, truth, seg.n_classes) >= 0.9


def test_info_says_what_a_model_is(workdir, capsys):
    _, model = workdir
    assert main(["info", str(model), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["class_names"] == ["ferrite", "martensite", "bainite"] and info["kind"] == "onnx"
    assert main(["info", str(model.parent / "nope.onnx")]) == 2


def test_bundled_model_says_it_is_synthetic_and_warns_once(capsys):
    from phaseedge.segmenter import default_model

    try:
        default_model()
    except FileNotFoundError:
        pytest.skip("this build has no bundled model")
    assert main(["info", "default"]) == 0
    out = capsys.readouterr().out
    assert "trained_on: synthetic" in out and "docs/training.md" in out
    import warnings

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        seg = Segmenter("default")
        seg.segment(np.zeros((64, 64), np.uint8))
        seg.segment(np.zeros((64, 64), np.uint8))
    assert sum("synthetic" in str(w.message) for w in record) == 1  # once per Segmenter
    seg.close()


def test_a_model_trained_on_real_data_does_not_warn(workdir):
    import warnings

    _, model = workdir  # its sidecar names no synthetic training data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Segmenter(model).segment(np.zeros((40, 40), np.uint8))


def test_fractions_come_with_sub_field_error_bars():
    from phaseedge.result import Result, t_quantile

    assert t_quantile(0.975, 8) == pytest.approx(2.306, abs=1e-3)  # the t table
    assert t_quantile(0.975, 1000) == pytest.approx(1.962, abs=1e-3)
    names = ("a", "b")
    striped = np.zeros((60, 30), np.uint8)
    striped[::2] = 1  # every 20 x 10 sub-field holds the same mix: no spread
    blocky = np.zeros((60, 30), np.uint8)
    blocky[:30] = 1  # the top sub-fields all b, the bottom ones all a: a large spread
    res = []
    for lab in (striped, blocky):
        counts = np.bincount(lab.ravel(), minlength=2)
        res.append(Result(labels=lab, fractions={"a": counts[0] / lab.size, "b": counts[1] / lab.size},
                          class_names=names, counts=counts))
    flat, spread = (r.fraction_uncertainty() for r in res)
    assert flat["a"]["se"] == 0 and flat["a"]["low"] == flat["a"]["high"] == 0.5
    assert spread["a"]["se"] > 0.05 and spread["a"]["low"] < 0.5 < spread["a"]["high"]
    assert res[1].fraction_uncertainty() == spread  # repeatable
    probs = np.stack([np.full((60, 30), 0.7, np.float32), np.full((60, 30), 0.3, np.float32)])
    soft = Result(labels=striped, fractions=res[0].fractions, class_names=names, counts=res[0].counts,
                  probabilities=probs).fraction_uncertainty()
    assert soft["a"]["soft"] == pytest.approx(0.7)
    roi = np.ones((60, 30), bool)
    roi[:, 15:] = False
    assert res[1].within(roi).fraction_uncertainty()["a"]["fraction"] == pytest.approx(0.5)


def test_csv_and_json_carry_the_error_bars(workdir):
    d, model = workdir
    out = d / "err"
    assert main(["segment", str(d / "a.tif"), "--model", str(model), "--out", str(out)]) == 0
    info = json.loads((out / "a.json").read_text())
    assert set(info["fraction_uncertainty"]) == {"ferrite", "martensite", "bainite"}
    row = _rows(out / "fractions.csv")[0]
    assert float(row["ferrite_se"]) == pytest.approx(info["fraction_uncertainty"]["ferrite"]["se"], abs=1e-6)
