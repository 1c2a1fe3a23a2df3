"""Sidecar: round trip, and a clear error for every wrong or stale file."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from phaseedge import sidecar as sc_mod
from phaseedge.sidecar import EngineInfo, Sidecar, SidecarError

NORM = {"method": "percentile", "low": 0.5, "high": 99.5}


def make(kind: str = "onnx", engine: EngineInfo | None = None, **kw) -> Sidecar:
    inputs, outputs = sc_mod.io_specs(64, 3)
    base = {"kind": kind, "architecture": "unet", "plm": True, "class_names": ("a", "b", "c"), "n_classes": 3,
                "tile": 64, "normalization": NORM, "inputs": inputs, "outputs": outputs, "batch": (1, 4, 8),
                "precision": "fp16", "engine": engine}
    base.update(kw)
    return Sidecar(**base)


def engine_info(**kw) -> EngineInfo:
    base = {"target": "tensorrt", "tensorrt_version": "11.4.0", "gpu_name": "NVIDIA RTX A4000",
                "compute_capability": "8.6"}
    base.update(kw)
    return EngineInfo(**base)


@pytest.fixture
def model_file(tmp_path):
    p = tmp_path / "model.onnx"
    p.write_bytes(b"graph bytes" * 1000)
    return p


def test_round_trip_and_path(model_file):
    written = sc_mod.write(make(), model_file)
    assert sc_mod.sidecar_path(model_file).name == "model.onnx.json"
    back = sc_mod.load(model_file)
    assert back == written
    assert back.sha256 == sc_mod.sha256_file(model_file) and back.file_name == "model.onnx"
    assert back.input("image").shape == ("B", 1, 64, 64)
    assert back.output("probs").dtype == "float16"


def test_missing_sidecar(model_file):
    with pytest.raises(SidecarError, match="rebuild with phaseedge-export"):
        sc_mod.read(model_file)


def test_hash_mismatch_names_both_hashes(model_file):
    written = sc_mod.write(make(), model_file)
    model_file.write_bytes(b"retrained")
    new = sc_mod.sha256_file(model_file)
    with pytest.raises(SidecarError) as e:
        sc_mod.load(model_file)
    assert written.sha256 in str(e.value) and new in str(e.value) and "changed" in str(e.value)


def test_sidecar_of_another_model(tmp_path, model_file):
    other = tmp_path / "other.onnx"
    other.write_bytes(b"other graph")
    sc_mod.write(make(), other)
    sc_mod.sidecar_path(other).replace(sc_mod.sidecar_path(model_file))
    with pytest.raises(SidecarError, match="another model"):
        sc_mod.load(model_file)


def test_sidecar_of_other_kind(tmp_path):
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"x")
    sc_mod.write(make(), onnx_path)
    eng = tmp_path / "m.engine"
    eng.write_bytes(b"x")
    sc_mod.sidecar_path(onnx_path).replace(sc_mod.sidecar_path(eng))
    with pytest.raises(SidecarError, match="another model"):
        sc_mod.read(eng)


def test_malformed_and_newer_sidecars(model_file):
    sc_mod.write(make(), model_file)
    path = sc_mod.sidecar_path(model_file)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(SidecarError, match="newer"):
        sc_mod.read(model_file)
    path.write_text(json.dumps({**data, "class_names": ["a", "b"]}))
    with pytest.raises(SidecarError, match="class_names"):
        sc_mod.read(model_file)
    del data["tile"]
    path.write_text(json.dumps(data))
    with pytest.raises(SidecarError, match="tile"):
        sc_mod.read(model_file)
    path.write_text("{not json")
    with pytest.raises(SidecarError, match="cannot read"):
        sc_mod.read(model_file)


def test_validation_rejects_contract_breaks():
    with pytest.raises(SidecarError, match="batch"):
        make(batch=(4, 2, 8))
    with pytest.raises(SidecarError, match="contract"):
        make(inputs=sc_mod.io_specs(32, 3)[0])
    with pytest.raises(SidecarError, match="engine info"):
        make(kind="engine")


def test_engine_compatibility():
    sc = make(kind="engine", engine=engine_info())
    sc_mod.check_engine_compatible(sc, "11.4.0", "NVIDIA RTX A4000", (8, 6))
    with pytest.raises(SidecarError, match="TensorRT version 11.4.0.*11.5.0.*rebuild"):
        sc_mod.check_engine_compatible(sc, "11.5.0", "NVIDIA RTX A4000", "8.6")
    with pytest.raises(SidecarError, match="compute capability 8.6.*8.9"):
        sc_mod.check_engine_compatible(sc, "11.4.0", "NVIDIA L4", "8.9")
    with pytest.raises(SidecarError, match="GPU NVIDIA RTX A4000.*RTX 3090"):
        sc_mod.check_engine_compatible(sc, "11.4.0", "NVIDIA GeForce RTX 3090", "8.6")
    with pytest.raises(SidecarError, match="target"):
        sc_mod.check_engine_compatible(sc, "11.4.0", "NVIDIA RTX A4000", "8.6", target="rtx")


def test_engine_compatibility_modes():
    vc = make(kind="engine", engine=engine_info(version_compatible=True))
    sc_mod.check_engine_compatible(vc, "11.5.1", "NVIDIA RTX A4000", "8.6")
    sc_mod.check_engine_compatible(vc, "12.0.0", "NVIDIA RTX A4000", "8.6")  # forward compatible across majors
    with pytest.raises(SidecarError, match="version-compatible"):
        sc_mod.check_engine_compatible(vc, "10.12.0", "NVIDIA RTX A4000", "8.6")
    with pytest.raises(SidecarError, match="version-compatible"):
        sc_mod.check_engine_compatible(vc, "11.3.9", "NVIDIA RTX A4000", "8.6")
    hc = make(kind="engine", engine=engine_info(hardware_compatible=True))
    sc_mod.check_engine_compatible(hc, "11.4.0", "NVIDIA H100", "9.0")
    with pytest.raises(SidecarError, match="Ampere"):
        sc_mod.check_engine_compatible(hc, "11.4.0", "Tesla T4", "7.5")
    rtx = make(kind="engine", engine=engine_info(target="rtx", tensorrt_version="1.7.1",
                                                 gpu_name=sc_mod.NO_GPU, compute_capability=None))
    sc_mod.check_engine_compatible(rtx, "1.7.1", "NVIDIA GeForce RTX 4090", "8.9", target="rtx")
    with pytest.raises(SidecarError, match="explicit target"):
        sc_mod.check_engine_compatible(rtx, "1.7.1", "NVIDIA GeForce RTX 2080 Ti", "7.5")
    with pytest.raises(SidecarError, match="1.7.1"):
        sc_mod.check_engine_compatible(rtx, "1.8.0", "NVIDIA GeForce RTX 4090", "8.9")


@pytest.mark.parametrize(("cc", "target_cc", "ok"), [
    ("8.6", None, True), ("8.9", None, True), ("12.0", None, True),
    ("12.1", None, False), ("12.1", "12.1", True), ("7.5", None, False), ("7.5", "7.5", True),
    ("8.0", None, False), ("9.0", None, False), ("10.0", None, False), ("9.0", "9.0", False),
    ("8.9", "8.6", False),
])
def test_tensorrt_rtx_support_matrix(cc, target_cc, ok):
    eng = engine_info(target="rtx", tensorrt_version="1.7.1", gpu_name=sc_mod.NO_GPU if target_cc is None else "x",
                      compute_capability=target_cc)
    sc = make(kind="engine", engine=eng)
    if ok:
        sc_mod.check_engine_compatible(sc, "1.7.1", "GPU", cc, target="rtx")
        return
    with pytest.raises(SidecarError) as err:
        sc_mod.check_engine_compatible(sc, "1.7.1", "NVIDIA H100", cc, target="rtx")
    if cc in ("8.0", "9.0", "10.0"):  # data-centre GPUs: say what to do instead
        assert "not a TensorRT-RTX GPU" in str(err.value) and "build a TensorRT engine" in str(err.value)


def test_check_io():
    sc = make()
    ok = {"image": ("float16", [None, 1, 64, 64]), "ratio": ("float32", ["batch", 3]),
          "probs": ("float16", [-1, 3, 64, 64])}
    sc_mod.check_io(sc, ok)
    with pytest.raises(SidecarError, match="ratio"):
        sc_mod.check_io(sc, {**ok, "ratio": ("float16", [None, 3])})
    with pytest.raises(SidecarError, match="shape"):
        sc_mod.check_io(sc, {**ok, "image": ("float16", [None, 1, 32, 32])})


def test_write_fills_hash_even_if_given(model_file):
    stale = dataclasses.replace(make(), sha256="0" * 64, file_name="x.onnx")
    written = sc_mod.write(stale, model_file)
    assert written.sha256 == sc_mod.sha256_file(model_file) and written.file_name == "model.onnx"


def test_no_heavy_imports():
    code = "import sys, phaseedge.sidecar; print(sorted({'torch','onnx','tensorrt'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
