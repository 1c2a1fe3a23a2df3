"""``phaseedge-export check``: Polygraphy comparison, skips with a reason, exit codes."""

from __future__ import annotations

import pytest
from phaseedge.export.check import run_check
from phaseedge.export.cli import main

from phaseedge.gpu import has_cuda_gpu
from tests.export_models import exported


def test_fp16_vs_fp32_passes_and_reports():
    e = exported("unet-plm")
    report = run_check(e.onnx, fp16=e.fp16, log=lambda _: None)
    assert report.passed
    (agree,) = report.compared.values()
    assert 0 < agree.max_abs_err < 2e-2 and agree.argmax_agreement > 0.98


def test_zero_tolerance_fails_with_exit_1():
    e = exported("unet-plm")
    assert main(["check", str(e.onnx), "--fp16", str(e.fp16), "--atol", "0"]) == 1


@pytest.mark.skipif(has_cuda_gpu(), reason="checks the no-GPU skip")
def test_engine_skipped_without_gpu(tmp_path, capsys):
    pytest.importorskip("tensorrt_rtx")
    from phaseedge.export.trt import build_engine

    e = exported("unet-plm")
    engine = tmp_path / "m.engine"
    build_engine(e.fp16, engine, batch=(1, 2, 4), target="rtx", log=lambda _: None)
    assert main(["check", str(e.onnx), "--fp16", str(e.fp16), "--engine", str(engine)]) == 0
    out = capsys.readouterr().out
    assert "skipped (no NVIDIA GPU" in out and "PASSED" in out


def test_wrong_or_stale_inputs_exit_2(tmp_path, capsys):
    a, b = exported("unet-plm"), exported("unet-noplm")
    assert main(["check", str(a.onnx), "--fp16", str(b.fp16)]) == 2  # another model
    assert "not the same model" in capsys.readouterr().err
    stale = tmp_path / "model.onnx"
    stale.write_bytes(a.onnx.read_bytes() + b"\0")
    (tmp_path / "model.onnx.json").write_bytes((a.onnx.parent / "model.onnx.json").read_bytes())
    assert main(["check", str(stale), "--fp16", str(a.fp16)]) == 2
    assert "sha256 mismatch" in capsys.readouterr().err
    assert main(["check", str(a.onnx)]) == 2  # nothing to compare
