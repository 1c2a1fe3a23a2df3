"""`phaseedge-export int8`: QDQ graph of the bundled model, the accuracy gate, and what TensorRT accepts."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import tifffile

from phaseedge import Segmenter, sidecar, synth
from phaseedge.bundled import default_model

pytest.importorskip("onnxruntime")
from phaseedge.export.cli import main


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Two calibration frames (training seeds) and two held out (validation seeds), 256 x 256 16-bit."""
    d = tmp_path_factory.mktemp("calib")
    for i, seed in enumerate((10000, 10001, 20000, 20001)):
        tifffile.imwrite(d / f"{i}.tif", synth.micrograph((256, 256), 3, seed=seed)[0])
    return d


@pytest.fixture(scope="module")
def int8(frames, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "default.int8.onnx"
    assert main(["int8", str(default_model()), "--calib", str(frames), "-o", str(out), "--threads", "2"]) == 0
    return out


def test_the_int8_graph_is_qdq_keeps_the_io_and_records_its_agreement(int8):
    sc = sidecar.load(int8)
    q = sc.quantization
    assert sc.precision == "int8" and sc.tile_sizes() == range(128, 2049, 16) and sc.halo == 20
    assert q["activations"] == "int8" and q["tensorrt_compatible"]
    assert q["calibration_frames"] == ["0.tif", "1.tif"] and q["held_out_frames"] == ["2.tif", "3.tif"]
    assert q["argmax_agreement"] >= 0.995 and q["max_fraction_shift_pp_measured"] <= 0.3
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    zero_points = [i for i in onnx.load(str(int8)).graph.initializer if i.name.endswith("zero_point")]
    assert zero_points and all(not onnx.numpy_helper.to_array(z).any() for z in zero_points)  # symmetric
    assert all(onnx.numpy_helper.to_array(z).dtype == np.int8 for z in zero_points)


def test_the_int8_graph_segments_like_fp32(int8):
    image, _ = synth.micrograph((300, 400), 3, seed=20002)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with Segmenter(default_model()) as a, Segmenter(int8) as b:
            ra, rb = a.segment(image), b.segment(image)
            assert b.backend.precision == "int8"
    assert (ra.labels == rb.labels).mean() > 0.99


def test_the_gate_refuses_to_write_a_graph_that_changes_labels(frames, tmp_path, capsys):
    out = tmp_path / "strict.int8.onnx"
    # every pixel must agree: INT8 rounding moves a few boundary pixels, so the gate must say no
    assert main(["int8", str(default_model()), "--calib", str(frames), "-o", str(out), "--min-agreement", "1.0",
                 "--max-fraction-shift", "0"]) == 1
    err = capsys.readouterr().err
    assert "INT8 graph refused: argmax agreement" in err and "needs >= 100.00%" in err
    assert not out.exists() and not sidecar.sidecar_path(out).exists()


def test_bad_inputs_are_clear_errors(frames, int8, tmp_path, capsys):
    one = tmp_path / "one"
    one.mkdir()
    tifffile.imwrite(one / "a.tif", synth.micrograph((64, 64), 3, seed=1)[0])
    assert main(["int8", str(default_model()), "--calib", str(one), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "at least 2 frames" in capsys.readouterr().err
    assert main(["int8", str(default_model()), "--calib", str(frames), "-o", str(tmp_path / "x.onnx"),
                 "--calib-frames", "4"]) == 2
    assert "held out" in capsys.readouterr().err
    assert main(["int8", str(int8), "--calib", str(frames), "-o", str(tmp_path / "y.onnx")]) == 2
    assert "quantise the fp32 graph" in capsys.readouterr().err


def test_tensorrt_rtx_builds_the_int8_graph_and_refuses_uint8(frames, int8, tmp_path, capsys):
    """The Q/DQ form TensorRT accepts is symmetric int8; the TensorRT-RTX builder runs here without a GPU."""
    pytest.importorskip("tensorrt_rtx")
    engine = tmp_path / "m.engine"
    assert main(["trt", str(int8), "-o", str(engine), "--batch", "1:1:2", "--target", "rtx",
                 "--tiles", "128:256:512"]) == 0
    sc = sidecar.load(engine)
    assert sc.precision == "int8" and sc.quantization["argmax_agreement"] >= 0.995
    u8 = tmp_path / "u8.onnx"
    assert main(["int8", str(default_model()), "--calib", str(frames), "-o", str(u8), "--activations", "uint8"]) == 0
    capsys.readouterr()
    assert main(["trt", str(u8), "-o", str(tmp_path / "u8.engine"), "--batch", "1:1:2", "--target", "rtx"]) == 1
    assert "TensorRT takes only symmetric int8 Q/DQ" in capsys.readouterr().err


def test_the_latency_bench_runs_the_int8_graph_beside_fp32(int8, capsys):
    import json

    from phaseedge.bench import cli as bench

    assert bench.main(["latency", "--backend", "tiling", "--int8", str(int8), "--frame", "320x256", "--runs", "1",
                       "--warmup", "0", "--threads", "2", "--dice", "--json"]) == 0
    v = {r["variant"]: r for r in json.loads(capsys.readouterr().out)["variants"]}
    assert v["ort-big-int8"]["precision"] == "int8" and v["ort-big"]["precision"] == "fp32"
    assert v["ort-big-int8"]["tile"] == v["ort-big"]["tile"]  # same tiling, only the arithmetic differs
    assert abs(v["ort-big-int8"]["dice"]["macro_dice"] - v["ort-big"]["dice"]["macro_dice"]) < 0.01
