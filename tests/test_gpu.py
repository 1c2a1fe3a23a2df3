"""GPU paths: a real TensorRT engine run by TensorRTBackend against ONNX Runtime on the CPU,
and scripts/gpu_check.sh.

Everything marked ``gpu`` skips here without an NVIDIA GPU; the gpu_check.sh no-GPU test
runs only where there is none. The engine is built in the test from a tiny hand-made ONNX
graph (Conv + ratio bias + Softmax, the contract's I/O and dtypes) so this file depends on
nothing but TensorRT (or TensorRT-RTX), cuda-python and ONNX Runtime.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from phaseedge import names, sidecar
from phaseedge.gpu import has_cuda_gpu
from tests.conftest import requires_gpu

REPO = Path(__file__).resolve().parents[1]
TILE, N = 32, 3
CLASSES = ("ferrite", "martensite", "bainite")


def tiny_onnx(path: Path, seed: int = 0) -> Path:
    """image f16 [B,1,T,T], ratio f32 [B,n] -> probs f16 [B,n,T,T] = softmax(conv3x3(image) + 4*ratio)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1.0, (N, 1, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, (N,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", [names.IMAGE], ["x"], to=TensorProto.FLOAT),
            helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Mul", [names.RATIO, "four"], ["r"]),
            helper.make_node("Unsqueeze", ["r", "axes"], ["r4"]),
            helper.make_node("Add", ["c", "r4"], ["s"]),
            helper.make_node("Softmax", ["s"], ["p"], axis=1),
            helper.make_node("Cast", ["p"], [names.PROBS], to=TensorProto.FLOAT16),
        ],
        "tiny",
        [
            helper.make_tensor_value_info(names.IMAGE, TensorProto.FLOAT16, ["B", 1, TILE, TILE]),
            helper.make_tensor_value_info(names.RATIO, TensorProto.FLOAT, ["B", N]),
        ],
        [helper.make_tensor_value_info(names.PROBS, TensorProto.FLOAT16, ["B", N, TILE, TILE])],
        initializer=[
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(b, "b"),
            numpy_helper.from_array(np.array(4.0, np.float32), "four"),
            numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def contract_sidecar(batch: tuple[int, int, int], kind: str, engine: sidecar.EngineInfo | None = None) -> sidecar.Sidecar:
    inputs, outputs = sidecar.io_specs(TILE, N)
    return sidecar.Sidecar(
        kind=kind, architecture="tiny-conv", plm=True, class_names=CLASSES, n_classes=N, tile=TILE,
        normalization={"method": "percentile", "low": 0.5, "high": 99.5}, inputs=inputs, outputs=outputs,
        batch=batch, precision="fp32", engine=engine,
    )


def build_engine(onnx_path: Path, out: Path, batch: tuple[int, int, int], module: str) -> bytes:
    """Strongly typed build with one batch profile (TensorRT 10/11 and TensorRT-RTX share these calls)."""
    trt = importlib.import_module(module)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"ONNX parse failed: {errors}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    lo, opt, hi = batch
    profile.set_shape(names.IMAGE, (lo, 1, TILE, TILE), (opt, 1, TILE, TILE), (hi, 1, TILE, TILE))
    profile.set_shape(names.RATIO, (lo, N), (opt, N), (hi, N))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT build failed")
    out.write_bytes(bytes(memoryview(serialized)))
    return out.read_bytes()


@pytest.fixture(scope="module", params=["tensorrt", "rtx"])
def engine_files(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """tiny.onnx + tiny.engine (batch profile 2..6) with sidecars, built on this GPU, per TensorRT flavour."""
    if not has_cuda_gpu():
        pytest.skip("no NVIDIA GPU / CUDA driver on this machine")
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python (the [gpu] extra) is not installed")
    from phaseedge import cuda_mem
    from phaseedge.backends.tensorrt import TARGET_MODULES

    target = request.param
    module = TARGET_MODULES[target]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"python module {module} is not installed")
    d = tmp_path_factory.mktemp(f"trt-{target}")
    onnx_path = tiny_onnx(d / "tiny.onnx")
    sidecar.write(contract_sidecar((1, 4, 8), "onnx"), onnx_path)
    batch = (2, 4, 6)
    engine_path = d / "tiny.engine"
    blob = build_engine(onnx_path, engine_path, batch, module)
    info = cuda_mem.device_info(0)
    trt = importlib.import_module(module)
    if target == "rtx":  # TensorRT-RTX supports RTX-class GPUs only (e.g. not SM 9.0 data-centre parts)
        validity, diagnostics = trt.Runtime(trt.Logger(trt.Logger.WARNING)).get_engine_validity(blob)
        if validity != trt.EngineValidity.VALID:
            pytest.skip(f"TensorRT-RTX engine not valid on {info.name} (sm {info.compute_capability}): {diagnostics}")
    eng = sidecar.EngineInfo(
        target=target, tensorrt_version=str(trt.__version__), gpu_name=info.name,
        compute_capability=info.compute_capability if target == "tensorrt" else None,
    )
    sidecar.write(contract_sidecar(batch, "engine", eng), engine_path)
    return onnx_path, engine_path


def reference(onnx_path: Path, images: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return sess.run([names.PROBS], {names.IMAGE: images, names.RATIO: ratio})[0]


def inputs(rng: np.random.Generator, b: int) -> tuple[np.ndarray, np.ndarray]:
    return (rng.random((b, 1, TILE, TILE)).astype(np.float16),
            rng.dirichlet(np.ones(N), size=b).astype(np.float32))


@requires_gpu
@pytest.mark.gpu
def test_engine_matches_onnxruntime_cpu(engine_files) -> None:
    from phaseedge.backends.tensorrt import TensorRTBackend

    onnx_path, engine_path = engine_files
    rng = np.random.default_rng(0)
    with TensorRTBackend(engine_path) as backend:
        assert backend.max_batch == 6
        for b in (1, 2, 5, 6):  # 1 is below the profile minimum: padded to 2
            images, ratio = inputs(rng, b)
            got = backend.infer(images, ratio).astype(np.float32)
            want = reference(onnx_path, images, ratio).astype(np.float32)
            assert got.shape == (b, N, TILE, TILE)
            assert np.abs(got - want).max() < 2e-3, f"B={b}"
            assert (got.argmax(1) == want.argmax(1)).mean() > 0.999
        # the ratio input really reaches the engine
        images, ratio = inputs(rng, 2)
        other = np.roll(ratio, 1, axis=1)
        assert np.abs(backend.infer(images, ratio) - backend.infer(images, other)).max() > 1e-2


@requires_gpu
@pytest.mark.gpu
def test_infer_many_equals_infer(engine_files) -> None:
    from phaseedge.backends.tensorrt import TensorRTBackend

    _, engine_path = engine_files
    rng = np.random.default_rng(1)
    batches = [inputs(rng, b) for b in (6, 3, 6, 1, 4, 6, 2)]
    with TensorRTBackend(engine_path) as backend:
        one_by_one = [backend.infer(*x) for x in batches]
        pipelined = [out.copy() for out in backend.infer_many(iter(batches))]
    assert len(pipelined) == len(batches)
    for a, b in zip(one_by_one, pipelined):
        np.testing.assert_array_equal(a, b)


@requires_gpu
@pytest.mark.gpu
def test_engine_for_another_gpu_is_refused_before_deserialising(engine_files, tmp_path: Path) -> None:
    from phaseedge.backends.tensorrt import TensorRTBackend

    _, engine_path = engine_files
    foreign = tmp_path / "foreign.engine"
    foreign.write_bytes(engine_path.read_bytes())
    sc = sidecar.read(engine_path)
    assert sc.engine is not None
    if sc.engine.target != "tensorrt":
        pytest.skip("TensorRT-RTX engines are compiled for the GPU at load time: no GPU pinned in the sidecar")
    fake = sidecar.EngineInfo(target="tensorrt", tensorrt_version=sc.engine.tensorrt_version,
                              gpu_name="NVIDIA Imaginary GPU", compute_capability="1.0")
    sidecar.write(contract_sidecar(sc.batch, "engine", fake), foreign)
    with pytest.raises(sidecar.SidecarError, match="rebuild with phaseedge-export"):
        TensorRTBackend(foreign)


@pytest.mark.skipif(has_cuda_gpu(), reason="checks the no-GPU path; on a GPU the script runs everything")
def test_gpu_check_without_gpu_skips_everything_quickly() -> None:
    t0 = time.perf_counter()
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                       timeout=120, cwd=REPO, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}, check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert time.perf_counter() - t0 < 60
    assert "no NVIDIA GPU" in out
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "SKIP" in line]
    assert len(rows) >= 8, out  # every GPU path is listed as skipped, with the reason
    assert r.stdout.rstrip().splitlines()[-1] == f"gpu_check: 0 PASS, 0 FAIL, {len(rows)} SKIP"


@requires_gpu
@pytest.mark.gpu
def test_rtx_runtime_cache_is_written_and_reused(engine_files, tmp_path: Path) -> None:
    from phaseedge.backends.tensorrt import TensorRTBackend

    _, engine_path = engine_files
    sc = sidecar.read(engine_path)
    if sc.engine is None or sc.engine.target != "rtx":
        pytest.skip("the runtime cache is a TensorRT-RTX feature")
    cache = tmp_path / "tiny.rtxcache"
    images, ratio = inputs(np.random.default_rng(2), 3)
    with TensorRTBackend(engine_path, runtime_cache=cache) as backend:
        first = backend.infer(images, ratio)
    assert cache.is_file() and cache.stat().st_size > 0
    with TensorRTBackend(engine_path, runtime_cache=cache) as backend:
        np.testing.assert_array_equal(backend.infer(images, ratio), first)


def test_tiny_graph_and_engine_build_without_gpu(tmp_path: Path) -> None:
    """Keeps the GPU tests' own helpers honest on CPU machines: the graph runs in ONNX Runtime and
    TensorRT-RTX (whose builder needs no GPU) builds it with the batch profile."""
    onnx_path = tiny_onnx(tmp_path / "tiny.onnx")
    images, ratio = inputs(np.random.default_rng(3), 3)
    probs = reference(onnx_path, images, ratio).astype(np.float32)
    assert probs.shape == (3, N, TILE, TILE)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=2e-3)
    assert np.abs(probs - reference(onnx_path, images, np.roll(ratio, 1, axis=1))).max() > 1e-2
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx (the [export] extra) is not installed")
    blob = build_engine(onnx_path, tmp_path / "tiny.engine", (2, 4, 6), "tensorrt_rtx")
    assert len(blob) > 1000


@pytest.mark.skipif(has_cuda_gpu(), reason="checks the no-GPU path")
def test_exported_rtx_engine_is_accepted_then_refused_without_gpu(tmp_path: Path) -> None:
    """The exporter's real sidecar passes the backend's construction checks; first use then needs a GPU.

    Runs in a subprocess: if the GPU guard ever failed, deserialising would kill the interpreter.
    """
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx (the [export] extra) is not installed")
    from phaseedge.export.trt import build_engine as export_engine

    onnx_path = tiny_onnx(tmp_path / "tiny.onnx")
    sidecar.write(contract_sidecar((1, 4, 8), "onnx"), onnx_path)
    engine_path = tmp_path / "tiny.engine"
    export_engine(onnx_path, engine_path, batch=(1, 2, 4), target="rtx", log=lambda *a, **k: None)
    script = (
        "import numpy as np\n"
        "from phaseedge.backends import get_backend\n"
        f"b = get_backend('auto', {str(engine_path)!r})\n"
        "print('built', b.max_batch, b.target, b.trt_version)\n"
        "try:\n"
        f"    b.infer(np.zeros((1, 1, {TILE}, {TILE}), np.float16), np.zeros((1, {N}), np.float32))\n"
        "except RuntimeError as e:\n"
        "    print('refused:', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "built 4 rtx" in r.stdout and "refused: the TensorRT backend needs an NVIDIA GPU" in r.stdout
