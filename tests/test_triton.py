"""Triton: the repository phaseedge-export writes, and the triton backend against a real server.

The repository tests parse config.pbtxt with the ``ModelConfig`` protobuf schema that
tritonclient ships. The backend tests run a real ``tritonserver`` on 127.0.0.1 (PyTriton's
bundled binary, Python backend, the bundled ONNX graph in ONNX Runtime inside; its own
environment .venv-triton, made by ``make test``), started once per module and stopped at
the end; the server-gone test starts, kills and restarts its own.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")
from google.protobuf import text_format
from phaseedge.bench.triton import PYTHON_ENV, LoopbackServer, triton_python
from phaseedge.export.cli import main as export_main
from tritonclient.grpc import model_config_pb2

from phaseedge import Segmenter, sidecar, synth
from phaseedge.backends import auto_backend_name, backend_class
from phaseedge.segmenter import default_model

DEFAULT = default_model()
CLASSES = ["ferrite", "martensite", "bainite"]


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _params(cfg: model_config_pb2.ModelConfig) -> dict[str, str]:
    return {k: v.string_value for k, v in cfg.parameters.items()}


# --------------------------------------------------------------------------- repository


def test_onnx_repository_parses_with_the_triton_schema(tmp_path, capsys):
    assert export_main(["triton", "default", "--repo", str(tmp_path), "--name", "steel", "--cpu",
                        "--max-batch-size", "16"]) == 0
    assert "tritonserver --model-repository" in capsys.readouterr().out
    cfg = parse_config(tmp_path / "steel" / "config.pbtxt")
    assert cfg.name == "steel" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 16
    by_name = {t.name: t for t in cfg.input}
    assert set(by_name) == {"image", "ratio"}
    assert model_config_pb2.DataType.Name(by_name["image"].data_type) == "TYPE_FP16"
    assert list(by_name["image"].dims) == [1, 128, 128]
    assert model_config_pb2.DataType.Name(by_name["ratio"].data_type) == "TYPE_FP32"
    assert list(by_name["ratio"].dims) == [3]
    (out,) = cfg.output
    assert out.name == "probs" and model_config_pb2.DataType.Name(out.data_type) == "TYPE_FP16"
    assert list(out.dims) == [3, 128, 128]
    assert cfg.HasField("dynamic_batching")
    (group,) = cfg.instance_group
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_CPU" and group.count == 1
    params = _params(cfg)
    assert json.loads(params["phaseedge_class_names"]) == CLASSES
    assert params["phaseedge_sha256"] == sidecar.load(DEFAULT).sha256
    model = tmp_path / "steel" / "1" / "model.onnx"
    assert model.read_bytes() == DEFAULT.read_bytes()
    copied = json.loads((tmp_path / "steel" / "1" / "model.onnx.json").read_text())
    assert copied == json.loads(sidecar.sidecar_path(DEFAULT).read_text())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind

    assert export_main(["triton", "default", "--repo", str(tmp_path / "gpu")]) == 0
    gpu = parse_config(tmp_path / "gpu" / "phaseedge" / "config.pbtxt")
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(gpu.instance_group[0].kind) == "KIND_GPU"
    assert gpu.max_batch_size == sidecar.load(DEFAULT).batch[2]  # the sidecar's maximum by default


def _engine(path: Path, cc: str | None, batch: tuple[int, int, int] = (1, 4, 8), target: str = "tensorrt",
            classes: tuple[str, ...] = tuple(CLASSES)) -> Path:
    """An .engine file with a real sidecar (the writer copies engines, it never parses them)."""
    path.write_bytes(os.urandom(4096))
    inputs, outputs = sidecar.io_specs(128, len(classes))
    gpu = {"8.6": "NVIDIA RTX A4000", "9.0": "NVIDIA H100", None: sidecar.NO_GPU}[cc]
    sc = sidecar.Sidecar(kind="engine", architecture="unet", plm=True, class_names=classes, n_classes=len(classes),
                         tile=128, normalization={"method": "percentile", "low": 0.5, "high": 99.5},
                         inputs=inputs, outputs=outputs, batch=batch, precision="fp16",
                         engine=sidecar.EngineInfo(target=target, tensorrt_version="10.13.0", gpu_name=gpu,
                                                   compute_capability=cc))
    sidecar.write(sc, path)
    return path


def test_engine_repository_maps_compute_capabilities(tmp_path):
    a = _engine(tmp_path / "a.engine", "8.6", batch=(1, 8, 16))
    b = _engine(tmp_path / "b.engine", "9.0", batch=(1, 4, 8))
    assert export_main(["triton", str(a), str(b), "--repo", str(tmp_path / "repo")]) == 0
    cfg = parse_config(tmp_path / "repo" / "phaseedge" / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan"
    assert cfg.max_batch_size == 8  # the smallest profile maximum: every GPU can take what Triton sends
    assert dict(cfg.cc_model_filenames) == {"8.6": "model_sm86.plan", "9.0": "model_sm90.plan"}
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) == "KIND_GPU"
    version = tmp_path / "repo" / "phaseedge" / "1"
    assert (version / "model_sm86.plan").read_bytes() == a.read_bytes()
    assert (version / "model_sm90.plan").read_bytes() == b.read_bytes()
    assert (version / "model_sm90.plan.json").is_file()
    assert _params(cfg)["phaseedge_precision"] == "fp16"

    assert export_main(["triton", str(a), "--repo", str(tmp_path / "one")]) == 0
    one = parse_config(tmp_path / "one" / "phaseedge" / "config.pbtxt")
    assert one.max_batch_size == 16 and not one.cc_model_filenames
    assert (tmp_path / "one" / "phaseedge" / "1" / "model.plan").read_bytes() == a.read_bytes()


@pytest.mark.parametrize("case, message", [
    ("exists", "exists"),
    ("rtx", "TensorRT-RTX"),
    ("cpu-engine", "KIND_CPU is for ONNX"),
    ("same-cc", "same compute capability"),
    ("no-cc", "without a GPU target"),
    ("other-classes", "differ in class_names"),
    ("profile-min", "starts at batch 2"),
    ("stale", "sha256 mismatch"),
    ("bad-name", "model name"),
])
def test_repository_refusals(tmp_path, capsys, case, message):
    a = _engine(tmp_path / "a.engine", "8.6")
    repo = tmp_path / "repo"
    argv = {  # built on demand: each case writes only its own files
        "exists": lambda: [str(a)],
        "rtx": lambda: [str(_engine(tmp_path / "r.engine", "8.6", target="rtx"))],
        "cpu-engine": lambda: [str(a), "--cpu"],
        "same-cc": lambda: [str(a), str(_engine(tmp_path / "b.engine", "8.6"))],
        "no-cc": lambda: [str(a), str(_engine(tmp_path / "b.engine", None))],
        "other-classes": lambda: [str(a), str(_engine(tmp_path / "b.engine", "9.0", classes=("x", "y", "z")))],
        "profile-min": lambda: [str(_engine(tmp_path / "m.engine", "8.6", batch=(2, 4, 8)))],
        "stale": lambda: [str(a)],
        "bad-name": lambda: [str(a), "--name", "a/b"],
    }[case]()
    if case == "exists":
        (repo / "phaseedge").mkdir(parents=True)
    if case == "stale":
        a.write_bytes(b"rebuilt")
    assert export_main(["triton", *argv, "--repo", str(repo)]) == 2
    assert message in capsys.readouterr().err
    assert not (repo / "phaseedge" / "config.pbtxt").exists()


# --------------------------------------------------------------------------- backend


def test_registry_knows_triton_urls():
    assert auto_backend_name("triton://127.0.0.1:8001/phaseedge") == "triton"
    assert auto_backend_name("triton+http://127.0.0.1:8000/phaseedge") == "triton"
    from phaseedge.backends.triton import TritonBackend, parse_url

    assert backend_class("triton") is TritonBackend
    ep = parse_url("triton+http://gpu-box/steel/3")
    assert (ep.protocol, ep.host, ep.port, ep.model, ep.version) == ("http", "gpu-box", 8000, "steel", "3")
    for bad in ("triton://host:8001", "triton://host:x/m", "triton://host/m/v1", "http://host/m"):
        with pytest.raises(ValueError):
            parse_url(bad)


def _server_python() -> Path:
    py = triton_python()
    if py is None:
        if os.environ.get(PYTHON_ENV):
            pytest.fail(f"{PYTHON_ENV} is set but missing")
        pytest.skip("no PyTriton environment (.venv-triton): run `make test`")
    return py


@pytest.fixture(scope="module")
def server():
    py = _server_python()
    with tempfile.TemporaryDirectory(prefix="phaseedge-triton-") as tmp:
        srv = LoopbackServer(DEFAULT, tmp, python=py)
        with srv:
            yield srv


@pytest.fixture(scope="module")
def frames():
    return [synth.micrograph((384, 448), seed=5, dtype=np.uint16)[0],
            synth.micrograph((200, 260), seed=6, dtype=np.uint8)[0]]


@pytest.fixture(scope="module")
def local():
    """The in-process reference: ONNX Runtime on the same graph, one thread like the server, and the
    served model's tiling (Triton serves it at its training tile: 0.25 overlap, as its backend defaults to)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with Segmenter(DEFAULT, backend="onnxruntime", overlap=0.25, backend_options={"threads": 1}) as seg:
            yield seg


def _segmenter(url: str, **kw) -> Segmenter:
    seg = Segmenter(url, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the bundled model is trained on synthetic frames
        seg.__enter__()
    return seg


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_labels_equal_the_onnxruntime_backend(server, frames, local, protocol):
    seg = _segmenter(server.url(protocol))
    try:
        b = seg.backend
        assert (b.name, b.tile, b.n_classes, b.class_names, b.max_batch) == ("triton", 128, 3, tuple(CLASSES), 8)
        assert b.trained_on == "synthetic" and b.normalization == sidecar.load(DEFAULT).normalization
        for k, frame in enumerate(frames):
            ratio = [0.5, 0.3, 0.2] if k == 0 else None
            got, want = seg.segment(frame, ratio=ratio), local.segment(frame, ratio=ratio)
            assert np.array_equal(got.labels, want.labels)
            assert got.fractions == want.fractions and got.backend == "triton"
    finally:
        seg.close()


def test_dynamic_batching_merges_concurrent_requests(server, frames, local):
    """Requests of 2 tiles, 4 in flight: the server's batcher runs them as bigger batches."""
    seg = _segmenter(server.url(), batch_size=2, backend_options={"in_flight": 4})
    try:
        server.clear_record()
        got = seg.segment(frames[0])
        sizes = server.batch_sizes()
    finally:
        seg.close()
    assert np.array_equal(got.labels, local.segment(frames[0]).labels)
    n_tiles = 4 * 5  # 384 x 448 in 128-pixel tiles at overlap 0.25 (stride 96)
    assert sum(sizes) == n_tiles  # every tile exactly once
    assert max(sizes) > 2, f"no request was merged: the server ran batches {sizes}"
    assert len(sizes) < n_tiles // 2


def test_model_is_checked_before_the_first_frame(server, tmp_path):
    from phaseedge.backends.triton import TritonError

    with pytest.raises(TritonError, match="class names differ"):
        _segmenter(server.url(), backend_options={"class_names": ["ferrite", "bainite", "martensite"]})
    other = json.loads(sidecar.sidecar_path(DEFAULT).read_text())
    other["class_names"] = ["a", "b", "c"]
    (tmp_path / "other.onnx.json").write_text(json.dumps(other))
    with pytest.raises(TritonError, match="the local sidecar says"):
        _segmenter(server.url("http"), backend_options={"sidecar": str(tmp_path / "other.onnx.json")})
    seg = _segmenter(server.url(), backend_options={"sidecar": str(sidecar.sidecar_path(DEFAULT))})
    seg.close()  # the matching sidecar is accepted
    with pytest.raises(TritonError, match="is not ready"):
        _segmenter(server.url().replace("/phaseedge", "/missing"))
    seg = Segmenter(f"triton://127.0.0.1:{server.http_port}/phaseedge")  # an HTTP port spoken to in gRPC
    with pytest.raises(TritonError, match="cannot reach"):
        seg.__enter__()
    seg.close()


def test_timeout_is_a_clear_error(server, frames):
    from phaseedge.backends.triton import TritonError

    seg = _segmenter(server.url())
    try:
        seg.backend.timeout = 1e-4  # the model takes milliseconds per batch: no answer in time
        with pytest.raises(TritonError, match="no answer within"):
            seg.segment(frames[1])
        seg.backend.timeout = 30.0
        assert seg.segment(frames[1]).labels.shape == frames[1].shape  # reconnected, usable again
    finally:
        seg.close()


def test_server_gone_mid_frame_then_back(local):
    """SIGKILL the server while a frame is half done: a clear error; the same Segmenters
    (gRPC and HTTP) segment again once a server is back on the same ports."""
    from phaseedge.backends.triton import TritonError

    py = _server_python()
    big = synth.micrograph((1024, 1024), seed=7, dtype=np.uint16)[0]
    small = synth.micrograph((256, 256), seed=8, dtype=np.uint16)[0]
    tmp = tempfile.mkdtemp(prefix="phaseedge-triton-gone-")
    srv = LoopbackServer(DEFAULT, tmp, python=py).start()
    try:
        grpc_seg, http_seg = _segmenter(srv.url("grpc")), _segmenter(srv.url("http"))
        srv.clear_record()

        def kill_after_first_batch() -> None:
            deadline = time.monotonic() + 60
            while not srv.batch_sizes() and time.monotonic() < deadline:
                time.sleep(0.005)
            srv.kill()

        killer = threading.Thread(target=kill_after_first_batch)
        killer.start()
        with pytest.raises(TritonError, match="lost .* during a frame"):
            grpc_seg.segment(big)
        killer.join()
        assert 0 < sum(srv.batch_sizes()) < 121  # it died mid-frame: some of the 11 x 11 tiles ran
        with pytest.raises(TritonError, match="cannot reach|lost"):
            http_seg.segment(small)
        with pytest.raises(TritonError, match="cannot reach"):  # still down: still a clear error
            grpc_seg.segment(small)

        srv.start()
        for seg in (grpc_seg, http_seg):
            assert np.array_equal(seg.segment(small).labels, local.segment(small).labels)
        grpc_seg.close()
        http_seg.close()
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_segment_cli_takes_a_triton_url(server, frames, local, tmp_path):
    import tifffile

    from phaseedge.cli import main

    tifffile.imwrite(tmp_path / "f.tif", frames[1])
    assert main(["segment", str(tmp_path / "f.tif"), "--model", server.url(), "--out", str(tmp_path / "out"),
                 "--no-overlay"]) == 0
    info = json.loads((tmp_path / "out" / "f.json").read_text())
    assert info["backend"] == "triton" and info["model"] == server.url()
    assert info["fractions"] == local.segment(frames[1]).fractions
