"""Backend registry, ONNX Runtime backend (sidecar checks, providers) and torch backend."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
from conftest import requires_gpu
from runtime_graphs import write_graph

from phaseedge import Segmenter, sidecar
from phaseedge.backends import auto_backend_name, backend_class, get_backend


@pytest.fixture
def affine(tmp_path):
    return write_graph(tmp_path / "affine.onnx", "affine", tile=16, n=2, max_batch=3)


def test_auto_picks_by_model_kind(tmp_path):
    assert auto_backend_name(tmp_path / "m.onnx") == "onnxruntime"
    assert auto_backend_name(tmp_path / "m.engine") == "tensorrt"
    assert auto_backend_name(tmp_path) == "torch"
    with pytest.raises(ValueError, match="cannot tell"):
        auto_backend_name(tmp_path / "m.pt")
    with pytest.raises(TypeError):
        auto_backend_name(42)
    with pytest.raises(ValueError, match="unknown backend"):
        backend_class("openvino")


def test_missing_backend_names_what_to_install(monkeypatch, affine):
    monkeypatch.delitem(sys.modules, "phaseedge.backends.onnxruntime", raising=False)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"phaseedge\[cpu\]"):
        get_backend("onnxruntime", affine)


def test_onnxruntime_reads_the_sidecar_and_runs(affine):
    with get_backend("auto", affine) as b:
        assert (b.name, b.tile, b.n_classes, b.max_batch) == ("onnxruntime", 16, 2, 3)
        assert b.class_names == ("phase0", "phase1") and b.precision == "fp16"
        assert "CPU" in b.device and b.providers[-1] == "CPUExecutionProvider"
        x = np.random.default_rng(0).random((3, 1, 16, 16)).astype(np.float16)
        p = b.infer(x, np.zeros((3, 2), np.float32))
        assert p.shape == (3, 2, 16, 16) and np.array_equal(p[:, :1], x)
        with pytest.raises(ValueError, match="batch size 4"):
            b.infer(np.zeros((4, 1, 16, 16), np.float16), np.zeros((4, 2), np.float32))
        with pytest.raises(ValueError, match="ratio must be"):
            b.infer(x, np.zeros((3, 5), np.float32))
        assert b.describe()["class_names"] == ["phase0", "phase1"]


def test_onnxruntime_refuses_missing_stale_or_foreign_sidecars(tmp_path, affine):
    other = write_graph(tmp_path / "other.onnx", "affine", tile=32, n=2)
    data = affine.read_bytes()
    affine.write_bytes(data + b"\0")  # changed after export
    with pytest.raises(sidecar.SidecarError, match="sha256"):
        get_backend("onnxruntime", affine)
    affine.write_bytes(data)
    sidecar.sidecar_path(affine).unlink()
    with pytest.raises(sidecar.SidecarError, match="no sidecar"):
        get_backend("onnxruntime", affine)
    # a sidecar that describes a different graph (tile 32 vs 16), re-hashed to this file
    meta = json.loads(sidecar.sidecar_path(other).read_text())
    sc = sidecar.Sidecar.from_dict(meta)
    sidecar.write(sc, affine)
    with pytest.raises(sidecar.SidecarError, match="shape"):
        get_backend("onnxruntime", affine)


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_onnxruntime_reports_a_cpu_fallback(affine, caplog):
    with caplog.at_level(logging.WARNING, logger="phaseedge.backends.onnxruntime"):
        b = get_backend("onnxruntime", affine, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    if b.on_gpu:
        pytest.skip("this onnxruntime has a working CUDA provider")
    assert "fell back to the CPU" in caplog.text
    assert b.device.startswith("CPU")


@requires_gpu
@pytest.mark.gpu
def test_onnxruntime_uses_the_gpu_when_there_is_one(affine):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without the CUDA provider (install phaseedge[gpu])")
    b = get_backend("onnxruntime", affine, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert b.on_gpu, b.providers
    x = np.random.default_rng(0).random((2, 1, 16, 16)).astype(np.float16)
    assert np.array_equal(b.infer(x, np.zeros((2, 2), np.float32))[:, :1], x)
    img = np.random.default_rng(1).integers(0, 65535, (77, 53)).astype(np.uint16)
    gpu = Segmenter(b).segment(img, return_probabilities=True)  # I/O binding path, batch sizes 1..3
    cpu = Segmenter(affine, backend_options={"providers": ["CPUExecutionProvider"]}).segment(
        img, return_probabilities=True)
    assert np.array_equal(gpu.probabilities, cpu.probabilities)


# ------------------------------------------------------------------ torch
@pytest.fixture(scope="module")
def tiny_unet():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from phaseedge.train.models import build_model

    torch.manual_seed(0)
    return build_model("unet-tiny", 3, plm=True, tile=32)


def test_torch_backend_matches_the_module(tiny_unet):
    import torch

    b = get_backend("torch", tiny_unet, class_names=["a", "b", "c"])
    assert (b.tile, b.n_classes, b.class_names) == (32, 3, ("a", "b", "c"))
    x = np.random.default_rng(1).random((2, 1, 32, 32)).astype(np.float16)
    r = np.array([[0.2, 0.3, 0.5], [0, 0, 0]], np.float32)
    tiny_unet.train()
    p = b.infer(x, r)
    assert tiny_unet.training  # the caller's mode is restored
    tiny_unet.eval()
    with torch.no_grad():
        ref = torch.softmax(tiny_unet(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(r)), 1).numpy()
    np.testing.assert_allclose(p, ref, atol=1e-6)


def test_segmenter_on_a_module_and_a_checkpoint_dir(tiny_unet, tmp_path):
    from phaseedge.train import checkpoint

    img = np.random.default_rng(2).integers(0, 255, (45, 70)).astype(np.uint8)
    a = Segmenter(tiny_unet, backend="torch", backend_options={"class_names": ["a", "b", "c"]}).segment(img)
    checkpoint.save(tiny_unet, tmp_path / "ckpt", class_names=["a", "b", "c"])
    seg = Segmenter(tmp_path / "ckpt")
    assert seg.backend_name == "torch"
    b = seg.segment(img, ratio=[0, 0, 0])
    assert b.class_names == ("a", "b", "c")
    assert np.array_equal(a.labels, b.labels)
    with pytest.raises(TypeError, match="nn.Module"):
        get_backend("torch", object())


@pytest.mark.slow  # a real (dynamo) ONNX export: about 12 s of CPU
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_exported_graph_and_torch_agree_through_the_segmenter(tiny_unet, tmp_path):
    """The same model through both runtimes: an integration check of export + runtime."""
    from phaseedge.export.onnx_export import export_model, model_info

    names = ("a", "b", "c")
    path = export_model(tiny_unet, model_info(tiny_unet, names), tmp_path / "m.onnx", batch=(1, 2, 4),
                        log=lambda *a: None).path
    img = np.random.default_rng(5).integers(0, 65535, (57, 83)).astype(np.uint16)
    ratio = [0.5, 0.3, 0.2]
    ort_res = Segmenter(path, overlap=0.5).segment(img, ratio=ratio, return_probabilities=True)
    torch_res = Segmenter(tiny_unet, backend="torch", overlap=0.5,
                          backend_options={"class_names": list(names)}).segment(img, ratio=ratio,
                                                                                return_probabilities=True)
    assert ort_res.class_names == torch_res.class_names == names
    np.testing.assert_allclose(ort_res.probabilities, torch_res.probabilities, atol=2e-3)  # fp16 graph output
    assert (ort_res.labels == torch_res.labels).mean() > 0.99


def test_infer_ahead_overlaps_the_next_batch_with_the_caller():
    import threading

    from phaseedge.backends.base import Backend

    class Recorder(Backend):
        name = "rec"
        tile, n_classes, max_batch, class_names = 4, 2, 2, ("a", "b")

        def __init__(self):
            self.started = []
            self.second_started = threading.Event()

        def infer(self, images, ratio):
            self.started.append(float(images[0, 0, 0, 0]))
            if len(self.started) == 2:
                self.second_started.set()
            return np.concatenate([images, 1 - images], axis=1).astype(np.float32)

    b = Recorder()
    batches = [(np.full((1, 1, 4, 4), k / 8, np.float16), np.zeros((1, 2), np.float32)) for k in range(5)]
    it = b.infer_ahead(iter(batches))
    first = next(it)
    # while the caller still holds result 0, batch 1 is already being inferred
    assert b.second_started.wait(5)
    outs = [first, *it]
    assert [float(o[0, 0, 0, 0]) for o in outs] == [k / 8 for k in range(5)]
    assert b.started == [k / 8 for k in range(5)]
