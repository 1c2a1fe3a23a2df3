"""TensorRT backend on CPU: sidecar checks at construction, the no-GPU guard, buffer planning,
and the double-buffered pipeline driven through a numpy stand-in for CUDA and TensorRT.

The stand-in copies synchronously, so it checks wiring (slots, shapes, addresses,
padding, result order, locking, freeing), not GPU timing; tests/test_gpu.py runs
the real thing on a GPU.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import subprocess
import sys
import tempfile
import textwrap
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from phaseedge import cuda_mem, gpu, names, sidecar
from phaseedge.backends import tensorrt as trtb
from phaseedge.backends.base import Backend
from phaseedge.gpu import DeviceInfo, has_cuda_gpu
from phaseedge.segmenter import Segmenter
from tests.test_export_probe import FakeDriver

REPO = Path(__file__).resolve().parents[1]
TILE, N = 16, 3
TRT_VERSION = "10.13.0.35"
GPU = DeviceInfo(name="NVIDIA RTX A4000", compute_capability="8.6")


def write_engine(
    tmp_path: Path,
    *,
    target: str = "tensorrt",
    version: str = TRT_VERSION,
    gpu_name: str = GPU.name,
    cc: str | None = GPU.compute_capability,
    batch: tuple[int, int, int] = (1, 4, 8),
    name: str = "model.engine",
) -> Path:
    """A fake engine file (random bytes: nothing here may ever deserialise it) with a real sidecar."""
    path = tmp_path / name
    path.write_bytes(name.encode() + np.random.default_rng(0).bytes(4096))
    inputs, outputs = sidecar.io_specs(TILE, N)
    sc = sidecar.Sidecar(
        kind="engine",
        architecture="unet",
        plm=True,
        class_names=("ferrite", "martensite", "bainite"),
        n_classes=N,
        tile=TILE,
        normalization={"method": "percentile", "low": 0.5, "high": 99.5},
        inputs=inputs,
        outputs=outputs,
        batch=batch,
        precision="fp16",
        engine=sidecar.EngineInfo(target=target, tensorrt_version=version, gpu_name=gpu_name, compute_capability=cc),
    )
    sidecar.write(sc, path)
    return path


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """This 'machine': TensorRT 10.13 installed, a GPU present or not (``env.gpu``), no TensorRT importable.

    Poisoning sys.modules makes any attempt to import TensorRT fail loudly, so a test that
    passes shows the checks ran without touching it.
    """
    state = types.SimpleNamespace(gpu=None, version=TRT_VERSION)
    monkeypatch.setattr(trtb, "installed_version", lambda module: state.version)
    monkeypatch.setattr(trtb, "has_cuda_gpu", lambda: state.gpu is not None)
    monkeypatch.setattr(cuda_mem, "device_info", lambda device=0: state.gpu)
    for mod in ("tensorrt", "tensorrt_rtx"):
        monkeypatch.setitem(sys.modules, mod, None)
    return state


# ----------------------------------------------------------------------------- module hygiene


def test_import_loads_no_tensorrt_torch_or_cuda() -> None:
    code = (
        "import sys, phaseedge.backends.tensorrt, phaseedge.cuda_mem;"
        "bad = [m for m in ('tensorrt', 'tensorrt_rtx', 'torch', 'cuda', 'cuda.bindings') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_registry_resolves_engine_files_to_this_backend() -> None:
    from phaseedge.backends import auto_backend_name, backend_class

    assert auto_backend_name("x/model.engine") == "tensorrt"
    assert backend_class("tensorrt") is trtb.TensorRTBackend


# ----------------------------------------------------------------------------- buffer planning


def test_plan_sizes_follow_the_contract() -> None:
    inputs, outputs = sidecar.io_specs(512, 4)
    plan = trtb.plan_buffers(inputs, outputs, max_batch=8)
    assert plan.buffer_bytes(names.IMAGE) == 8 * 1 * 512 * 512 * 2  # float16
    assert plan.buffer_bytes(names.RATIO) == 8 * 4 * 4  # float32
    assert plan.buffer_bytes(names.PROBS) == 8 * 4 * 512 * 512 * 2  # float16
    per_slot = 8 * (512 * 512 * 2 + 16 + 4 * 512 * 512 * 2)
    assert plan.slot_bytes == per_slot
    assert plan.device_bytes == plan.pinned_bytes == 2 * per_slot  # two slots: double buffering
    assert trtb.plan_buffers(inputs, outputs, max_batch=8, slots=1).device_bytes == per_slot
    assert plan.tensor(names.PROBS).shape(3) == (3, 4, 512, 512)
    assert [t.is_input for t in plan.tensors] == [True, True, False]


def test_plan_pads_small_batches_to_the_profile_minimum() -> None:
    inputs, outputs = sidecar.io_specs(64, 3)
    plan = trtb.plan_buffers(inputs, outputs, max_batch=8, min_batch=4)
    assert [plan.run_batch(b) for b in (1, 3, 4, 7, 8)] == [4, 4, 4, 7, 8]
    # what the pipeline copies for b samples: run_batch(b) of them, the padding included
    assert plan.tensor(names.IMAGE).item_bytes * plan.run_batch(1) == 4 * 64 * 64 * 2
    assert plan.tensor(names.RATIO).item_bytes * plan.run_batch(6) == 6 * 3 * 4
    for bad in (0, 9):
        with pytest.raises(ValueError, match="outside"):
            plan.run_batch(bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"max_batch": 0}, "max_batch"), ({"max_batch": 4, "min_batch": 5}, "min_batch"), ({"max_batch": 2, "slots": 0}, "slots")],
)
def test_plan_rejects_bad_sizes(kwargs: dict, match: str) -> None:
    inputs, outputs = sidecar.io_specs(64, 3)
    with pytest.raises(ValueError, match=match):
        trtb.plan_buffers(inputs, outputs, **kwargs)


def test_plan_rejects_a_non_batch_first_tensor() -> None:
    spec = sidecar.TensorSpec("image", "float16", (1, "B", 64, 64))
    with pytest.raises(ValueError, match="batch first"):
        trtb.plan_buffers([spec], [], max_batch=2)


# ----------------------------------------------------------------------------- construction checks


def test_construction_reads_the_sidecar_only(env, tmp_path: Path) -> None:
    b = trtb.TensorRTBackend(write_engine(tmp_path), max_batch=5)
    assert (b.tile, b.n_classes, b.class_names) == (TILE, N, ("ferrite", "martensite", "bainite"))
    assert (b.max_batch, b.precision, b.name, b.device) == (5, "fp16", "tensorrt", "cuda:0")
    assert b.normalization["method"] == "percentile"
    assert b._pipe is None  # nothing set up yet
    assert trtb.TensorRTBackend(write_engine(tmp_path, name="b.engine"), max_batch=100).max_batch == 8
    b.close()
    b.close()


def test_missing_sidecar(env, tmp_path: Path) -> None:
    path = write_engine(tmp_path)
    sidecar.sidecar_path(path).unlink()
    with pytest.raises(sidecar.SidecarError, match="rebuild with phaseedge-export"):
        trtb.TensorRTBackend(path)


def test_hash_mismatch(env, tmp_path: Path) -> None:
    path = write_engine(tmp_path)
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(sidecar.SidecarError, match="sha256 mismatch.*rebuild with phaseedge-export"):
        trtb.TensorRTBackend(path)


def test_sidecar_of_another_model(env, tmp_path: Path) -> None:
    path = write_engine(tmp_path)
    other = write_engine(tmp_path, name="other.engine", batch=(1, 2, 4))
    sidecar.sidecar_path(path).write_text(sidecar.sidecar_path(other).read_text())
    with pytest.raises(sidecar.SidecarError, match="another model"):
        trtb.TensorRTBackend(path)


def test_wrong_tensorrt_version(env, tmp_path: Path) -> None:
    env.version = "10.9.0.34"
    with pytest.raises(sidecar.SidecarError, match=r"TensorRT version 10\.13\.0\.35.*10\.9\.0\.34.*rebuild"):
        trtb.TensorRTBackend(write_engine(tmp_path))


@pytest.mark.parametrize(
    ("gpu", "match"),
    [
        (DeviceInfo("NVIDIA GeForce RTX 4090", "8.9"), "compute capability 8.6"),
        (DeviceInfo("NVIDIA RTX A5000", "8.6"), "GPU NVIDIA RTX A4000"),
    ],
)
def test_wrong_gpu(env, tmp_path: Path, gpu: DeviceInfo, match: str) -> None:
    env.gpu = gpu
    with pytest.raises(sidecar.SidecarError, match=match + ".*rebuild with phaseedge-export"):
        trtb.TensorRTBackend(write_engine(tmp_path))


def test_matching_gpu_is_accepted_at_construction(env, tmp_path: Path) -> None:
    env.gpu = GPU
    b = trtb.TensorRTBackend(write_engine(tmp_path))
    assert b.gpu == GPU and b.device == "cuda:0 (NVIDIA RTX A4000)"


def test_rtx_engine_built_without_gpu_accepts_any_gpu(env, tmp_path: Path) -> None:
    env.gpu = DeviceInfo("NVIDIA GeForce RTX 4090", "8.9")
    path = write_engine(tmp_path, target="rtx", version="1.7.1.116", gpu_name=sidecar.NO_GPU, cc=None)
    env.version = "1.7.1.116"
    b = trtb.TensorRTBackend(path, runtime_cache=tmp_path / "jit.cache")
    assert b.target == "rtx" and b.module_name == "tensorrt_rtx"


def test_rtx_engine_refuses_a_turing_gpu_without_an_explicit_target(env, tmp_path: Path) -> None:
    env.gpu = DeviceInfo("Tesla T4", "7.5")
    env.version = "1.7.1.116"
    path = write_engine(tmp_path, target="rtx", version="1.7.1.116", gpu_name=sidecar.NO_GPU, cc=None)
    with pytest.raises(sidecar.SidecarError, match="8.6, 8.9, 12.0.*Tesla T4.*explicit target.*rebuild"):
        trtb.TensorRTBackend(path)


def test_rtx_engine_refuses_a_data_centre_gpu(env, tmp_path: Path) -> None:
    env.gpu = DeviceInfo("NVIDIA H200", "9.0")
    env.version = "1.7.1.116"
    path = write_engine(tmp_path, target="rtx", version="1.7.1.116", gpu_name=sidecar.NO_GPU, cc=None)
    with pytest.raises(sidecar.SidecarError, match="H200.*not a TensorRT-RTX GPU.*build a TensorRT engine"):
        trtb.TensorRTBackend(path)


def test_version_compatible_engines_allow_host_code() -> None:
    class FakeRuntime:
        engine_host_code_allowed = False

    import dataclasses

    base = sidecar.read(write_engine(Path(tempfile.mkdtemp())))
    for vc in (True, False):
        rt = FakeRuntime()
        sc = dataclasses.replace(base, engine=dataclasses.replace(base.engine, version_compatible=vc))
        trtb.configure_runtime(rt, sc)
        assert rt.engine_host_code_allowed is vc


def test_tensorrt_not_installed(env, tmp_path: Path) -> None:
    env.version = None
    with pytest.raises(ImportError, match="tensorrt module is not installed"):
        trtb.TensorRTBackend(write_engine(tmp_path))


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda p: p.with_suffix(".onnx"), ValueError, r"\.engine files"),
        (lambda p: p.with_name("absent.engine"), FileNotFoundError, "does not exist"),
    ],
)
def test_bad_paths(env, tmp_path: Path, make, exc, match) -> None:
    with pytest.raises(exc, match=match):
        trtb.TensorRTBackend(make(write_engine(tmp_path)))


def test_bad_options(env, tmp_path: Path) -> None:
    path = write_engine(tmp_path)
    with pytest.raises(ValueError, match="device"):
        trtb.TensorRTBackend(path, device=-1)
    with pytest.raises(ValueError, match="max_batch"):
        trtb.TensorRTBackend(path, max_batch=0)
    with pytest.raises(ValueError, match="TensorRT-RTX"):
        trtb.TensorRTBackend(path, runtime_cache=tmp_path / "c.bin")


def test_version_installed_is_read_without_import() -> None:
    pytest.importorskip("importlib.metadata")
    assert trtb.installed_version("surely_not_a_tensorrt_module_xyz") is None


# ----------------------------------------------------------------------------- no GPU: clear error, no crash


@pytest.mark.skipif(has_cuda_gpu(), reason="checks the no-GPU path; this machine has a GPU")
def test_first_use_without_gpu_raises_and_interpreter_survives(tmp_path: Path) -> None:
    path = write_engine(tmp_path, target="rtx", version="1.7.1.116", gpu_name=sidecar.NO_GPU, cc=None)
    script = textwrap.dedent(
        f"""
        import numpy as np
        from phaseedge.backends import tensorrt as trtb
        trtb.installed_version = lambda module: "1.7.1.116"
        b = trtb.TensorRTBackend({str(path)!r})
        errors = []
        for use in (lambda: b.__enter__(),
                    lambda: b.infer(np.zeros((1, 1, {TILE}, {TILE}), np.float16), np.zeros((1, {N}), np.float32))):
            try:
                use()
            except RuntimeError as e:
                errors.append(str(e))
        print("ERRORS", len(errors), errors[0])
        print("alive")
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ERRORS 2" in r.stdout and "needs an NVIDIA GPU" in r.stdout and "onnxruntime" in r.stdout
    assert r.stdout.rstrip().endswith("alive")


# ----------------------------------------------------------------------------- the pipeline, on a numpy stand-in


class FakeCuda:
    """Numpy stand-in for :mod:`phaseedge.cuda_mem`; device memory is a dict of byte arrays."""

    def __init__(self) -> None:
        self.memory: dict[int, np.ndarray] = {}
        self.live: set[int] = set()
        self._next_ptr = 0x1000
        self.streams = 0
        fake = self

        class DeviceBuffer:
            def __init__(self, nbytes: int) -> None:
                self.nbytes = nbytes
                self.ptr = fake._alloc(nbytes)

            def free(self) -> None:
                fake.live.discard(self.ptr)
                self.ptr = None

        class PinnedArray:
            def __init__(self, shape, dtype) -> None:
                self.array = np.full(shape, np.nan if np.dtype(dtype).kind == "f" else 0, dtype)
                self.key = fake._alloc(0)

            def free(self) -> None:
                fake.live.discard(self.key)

        class Stream:
            def __init__(self) -> None:
                fake.streams += 1
                self.handle = 100 + fake.streams

            def __int__(self) -> int:
                return self.handle

            def wait(self, event) -> None:
                if not event.recorded:
                    raise AssertionError("stream waits on an event that was never recorded")

            def synchronize(self) -> None:
                pass

            def destroy(self) -> None:
                fake.streams -= 1

        class Event:
            def __init__(self) -> None:
                self.recorded = False
                self.key = fake._alloc(0)

            def record(self, stream) -> None:
                self.recorded = True

            def synchronize(self) -> None:
                pass

            def destroy(self) -> None:
                fake.live.discard(self.key)

        self.DeviceBuffer, self.PinnedArray, self.Stream, self.Event = DeviceBuffer, PinnedArray, Stream, Event

    def _alloc(self, nbytes: int) -> int:
        ptr = self._next_ptr
        self._next_ptr += max(nbytes, 1) + 256
        self.memory[ptr] = np.zeros(nbytes, np.uint8)
        self.live.add(ptr)
        return ptr

    def copy_to_device_async(self, dst, src: np.ndarray, stream) -> None:
        assert src.flags.c_contiguous and src.nbytes <= dst.nbytes
        self.memory[dst.ptr][: src.nbytes] = src.reshape(-1).view(np.uint8)

    def copy_to_host_async(self, dst: np.ndarray, src, stream) -> None:
        assert dst.flags.c_contiguous and dst.nbytes <= src.nbytes
        dst.reshape(-1).view(np.uint8)[:] = self.memory[src.ptr][: dst.nbytes]


def fake_model(images: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """What the stand-in 'engine' computes: a per-sample, per-class function of both inputs."""
    x = images.astype(np.float32)  # [B,1,T,T]
    k = np.arange(ratio.shape[1], dtype=np.float32)[None, :, None, None]
    phase = 2 * np.pi * (x - k / ratio.shape[1])  # each class wins a third of [0, 1]
    return (np.cos(phase) + ratio.astype(np.float32)[:, :, None, None]).astype(np.float16)


class FakeContext:
    """Stand-in IExecutionContext: reads its inputs from the fake device memory at the set addresses."""

    def __init__(self, fake: FakeCuda) -> None:
        self.fake = fake
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.runs: list[tuple[int, int]] = []  # (batch, image address)

    def set_input_shape(self, name: str, shape) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def _read(self, name: str, dtype, shape) -> np.ndarray:
        count = int(np.prod(shape))
        return self.fake.memory[self.addresses[name]].view(dtype)[:count].reshape(shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        b = self.shapes[names.IMAGE][0]
        assert self.shapes[names.RATIO] == (b, N)
        images = self._read(names.IMAGE, np.float16, (b, 1, TILE, TILE))
        ratio = self._read(names.RATIO, np.float32, (b, N))
        out = fake_model(images, ratio)
        self.fake.memory[self.addresses[names.PROBS]][: out.nbytes] = out.reshape(-1).view(np.uint8)
        self.runs.append((b, self.addresses[names.IMAGE]))
        return True


@pytest.fixture
def fake_backend(env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A constructed backend whose set-up yields the real _Pipeline over the numpy stand-in."""
    fake = FakeCuda()
    monkeypatch.setattr(cuda_mem, "set_device", lambda device: None)

    def make(batch=(1, 4, 8), **kwargs):
        backend = trtb.TensorRTBackend(write_engine(tmp_path, batch=batch, name=f"m{batch[0]}.engine"), **kwargs)
        ctx = FakeContext(fake)
        backend._setup = lambda: trtb._Pipeline(ctx, backend.plan, fake)
        return backend, ctx, fake

    return make


def batch(rng: np.random.Generator, b: int, dtype=np.float16) -> tuple[np.ndarray, np.ndarray]:
    images = rng.random((b, 1, TILE, TILE)).astype(dtype)
    ratio = rng.dirichlet(np.ones(N), size=b).astype(np.float32)
    return images, ratio


def test_infer_matches_the_engine_and_returns_a_fresh_array(fake_backend) -> None:
    backend, ctx, _ = fake_backend()
    rng = np.random.default_rng(1)
    a, b = batch(rng, 3), batch(rng, 3)
    out_a = backend.infer(*a)
    out_b = backend.infer(*b)
    assert out_a.shape == (3, N, TILE, TILE) and out_a.dtype == np.float16
    np.testing.assert_array_equal(out_a, fake_model(*a))  # not overwritten by the second call
    np.testing.assert_array_equal(out_b, fake_model(*b))
    assert [r[0] for r in ctx.runs] == [3, 3]
    assert ctx.runs[0][1] != ctx.runs[1][1]  # consecutive batches use the two slots


def test_infer_casts_float32_tiles(fake_backend) -> None:
    backend, _, _ = fake_backend()
    images, ratio = batch(np.random.default_rng(2), 2, dtype=np.float32)
    np.testing.assert_array_equal(backend.infer(images, ratio), fake_model(images.astype(np.float16), ratio))


def test_small_batches_are_padded_to_the_profile_minimum(fake_backend) -> None:
    backend, ctx, _ = fake_backend(batch=(4, 4, 8))
    images, ratio = batch(np.random.default_rng(3), 1)
    out = backend.infer(images, ratio)
    assert out.shape == (1, N, TILE, TILE)
    np.testing.assert_array_equal(out, fake_model(images, ratio))
    assert ctx.runs[-1][0] == 4  # the engine ran the padded batch


def test_infer_many_keeps_order_and_alternates_slots(fake_backend) -> None:
    backend, ctx, _ = fake_backend()
    rng = np.random.default_rng(4)
    batches = [batch(rng, b) for b in (8, 3, 8, 1, 5)]
    got = []
    for out in backend.infer_many(iter(batches)):
        got.append(out.copy())  # consumer contract: use before pulling the next
    assert len(got) == len(batches)
    for (images, ratio), out in zip(batches, got):
        np.testing.assert_array_equal(out, fake_model(images, ratio))
    addresses = [r[1] for r in ctx.runs]
    assert len(set(addresses)) == 2 and all(a != b for a, b in itertools.pairwise(addresses))


def test_infer_many_queues_the_next_batch_before_yielding(fake_backend) -> None:
    backend, ctx, _ = fake_backend()
    rng = np.random.default_rng(5)
    it = backend.infer_many(iter([batch(rng, 2) for _ in range(3)]))
    next(it)
    assert len(ctx.runs) == 2  # batch 1 is already running when batch 0 is handed out
    it.close()


def test_abandoned_iterator_frees_the_backend(fake_backend) -> None:
    backend, _, _ = fake_backend()
    rng = np.random.default_rng(6)
    it = backend.infer_many(iter([batch(rng, 2) for _ in range(4)]))
    next(it)
    with pytest.raises(RuntimeError, match="iterating infer_many"):
        backend.infer(*batch(rng, 1))  # same thread, iterator still open: refused, not deadlocked
    it.close()
    images, ratio = batch(rng, 1)
    np.testing.assert_array_equal(backend.infer(images, ratio), fake_model(images, ratio))


def test_bad_batches_are_refused(fake_backend) -> None:
    backend, _, _ = fake_backend()
    rng = np.random.default_rng(7)
    images, ratio = batch(rng, 2)
    with pytest.raises(ValueError, match=r"images must be \[B, 1"):
        backend.infer(images[:, :, :8], ratio)
    with pytest.raises(ValueError, match="batch size 9"):
        backend.infer(*batch(rng, 9))
    with pytest.raises(ValueError, match="ratio must be"):
        backend.infer(images, ratio[:1])
    with pytest.raises(TypeError, match="numpy arrays"):
        backend.infer(images.tolist(), ratio)
    with pytest.raises(TypeError, match="floating point"):
        backend.infer(images.astype(np.uint8), ratio)


def test_threads_share_one_backend(fake_backend) -> None:
    backend, _, _ = fake_backend()
    rng = np.random.default_rng(8)
    work = [batch(rng, 1 + i % 4) for i in range(12)]
    results: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        results[i] = backend.infer(*work[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (images, ratio) in enumerate(work):
        np.testing.assert_array_equal(results[i], fake_model(images, ratio))


def test_close_frees_everything_and_refuses_later_use(fake_backend) -> None:
    backend, _, fake = fake_backend()
    with backend:
        backend.infer(*batch(np.random.default_rng(9), 2))
        assert fake.live and fake.streams == 3
    assert not fake.live and fake.streams == 0
    backend.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        backend.infer(*batch(np.random.default_rng(9), 1))


def test_close_from_another_thread_while_one_waits(fake_backend) -> None:
    """A thread waiting for the backend when another closes it gets a clear error, never freed buffers."""
    backend, _, _ = fake_backend()
    rng = np.random.default_rng(11)
    it = backend.infer_many(iter([batch(rng, 2) for _ in range(3)]))
    next(it)  # this thread now holds the backend
    waiting = batch(rng, 2)
    outcome: dict[str, object] = {}

    def use() -> None:
        try:
            outcome["probs"] = backend.infer(*waiting)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            outcome["error"] = e

    user = threading.Thread(target=use)
    closer = threading.Thread(target=backend.close)
    user.start()
    closer.start()
    for _ in it:
        pass
    user.join(10)
    closer.join(10)
    assert not user.is_alive() and not closer.is_alive()
    if "error" in outcome:  # the closer won the race
        assert isinstance(outcome["error"], RuntimeError) and "closed" in str(outcome["error"])
    else:
        np.testing.assert_array_equal(outcome["probs"], fake_model(*waiting))


def test_describe_reports_engine_and_buffers(fake_backend) -> None:
    backend, _, _ = fake_backend()
    d = backend.describe()
    assert d["backend"] == "tensorrt" and d["target"] == "tensorrt" and d["tensorrt_version"] == TRT_VERSION
    assert d["pinned_bytes"] == backend.plan.pinned_bytes > 0
    json.dumps(d)


# ----------------------------------------------------------------------------- engine introspection


def fake_trt(validity: str = "VALID", diagnostics: int = 0) -> types.SimpleNamespace:
    from enum import Enum, IntFlag

    Mode = Enum("TensorIOMode", "INPUT OUTPUT")
    Validity = Enum("EngineValidity", "VALID SUBOPTIMAL INVALID")
    Diag = IntFlag("EngineInvalidityDiagnostics", {"VERSION_MISMATCH": 1, "UNSUPPORTED_CC": 2})
    return types.SimpleNamespace(
        TensorIOMode=Mode,
        EngineValidity=Validity,
        EngineInvalidityDiagnostics=Diag,
        nptype=lambda dt: {"HALF": np.float16, "FLOAT": np.float32}[dt],
        runtime=types.SimpleNamespace(get_engine_validity=lambda blob: (Validity[validity], diagnostics)),
    )


class FakeEngine:
    def __init__(self, trt, io) -> None:
        self.trt, self.io = trt, io
        self.num_io_tensors = len(io)

    def get_tensor_name(self, i: int) -> str:
        return list(self.io)[i]

    def get_tensor_mode(self, name: str):
        return self.trt.TensorIOMode[self.io[name][0]]

    def get_tensor_dtype(self, name: str) -> str:
        return self.io[name][1]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.io[name][2]


def engine_tensors(probs_mode: str = "OUTPUT", image_dtype: str = "HALF") -> dict:
    return {
        names.IMAGE: ("INPUT", image_dtype, (-1, 1, TILE, TILE)),
        names.RATIO: ("INPUT", "FLOAT", (-1, N)),
        names.PROBS: (probs_mode, "HALF", (-1, N, TILE, TILE)),
    }


def test_engine_io_matches_a_sidecar(tmp_path: Path) -> None:
    trt = fake_trt()
    io = trtb.engine_io(trt, FakeEngine(trt, engine_tensors()))
    assert io[names.IMAGE] == ("float16", (-1, 1, TILE, TILE))
    sc = sidecar.read(write_engine(tmp_path))
    sidecar.check_io(sc, io)  # the contract's I/O passes
    bad = trtb.engine_io(trt, FakeEngine(trt, engine_tensors(image_dtype="FLOAT")))
    with pytest.raises(sidecar.SidecarError, match="image"):
        sidecar.check_io(sc, bad)


def test_engine_io_refuses_a_swapped_direction() -> None:
    trt = fake_trt()
    with pytest.raises(sidecar.SidecarError, match="'probs' is an input"):
        trtb.engine_io(trt, FakeEngine(trt, engine_tensors(probs_mode="INPUT")))


def test_engine_validity(caplog: pytest.LogCaptureFixture) -> None:
    path = Path("m.engine")
    ok = fake_trt()
    trtb._check_validity(ok, ok.runtime, b"", path)
    trtb._check_validity(ok, object(), b"", path)  # plain TensorRT has no such check
    bad = fake_trt("INVALID", 3)
    with pytest.raises(sidecar.SidecarError, match="VERSION_MISMATCH, UNSUPPORTED_CC.*rebuild"):
        trtb._check_validity(bad, bad.runtime, b"", path)
    slow = fake_trt("SUBOPTIMAL", 2)
    with caplog.at_level("WARNING"):
        trtb._check_validity(slow, slow.runtime, b"", path)
    assert "UNSUPPORTED_CC" in caplog.text


# ----------------------------------------------------------------------------- cuda_mem


class _Err(int):
    @property
    def name(self) -> str:
        return {0: "cudaSuccess", 2: "cudaErrorMemoryAllocation"}.get(int(self), "cudaErrorUnknown")


def test_cuda_check_unwraps_result_tuples() -> None:
    assert cuda_mem.check((_Err(0),)) is None
    assert cuda_mem.check((_Err(0), 7)) == 7
    assert cuda_mem.check((_Err(0), 1, 2)) == (1, 2)
    with pytest.raises(cuda_mem.CudaError, match=r"cudaMalloc\(64\) failed: cudaErrorMemoryAllocation \(2\)"):
        cuda_mem.check((_Err(2), None), "cudaMalloc(64)")
    with pytest.raises(TypeError, match="result tuple"):
        cuda_mem.check(0)


@pytest.mark.skipif(has_cuda_gpu(), reason="checks the no-GPU error path")
@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: cuda_mem.DeviceBuffer(64), "cudaMalloc"),
        (lambda: cuda_mem.PinnedArray((2, 3), np.float16), "cudaHostAlloc"),
        (cuda_mem.Stream, "cudaStreamCreateWithFlags"),
        (cuda_mem.Event, "cudaEventCreateWithFlags"),
        (lambda: cuda_mem.set_device(0), "cudaSetDevice"),
        (lambda: cuda_mem.copy_to_device_async(_fake_buffer(), np.zeros(4, np.float32), _null_stream()),
         "cudaMemcpyAsync"),
        (lambda: cuda_mem.copy_to_host_async(np.zeros(4, np.float32), _fake_buffer(), _null_stream()),
         "cudaMemcpyAsync"),
        (lambda: _null_stream().wait(_null_event()), "cudaStreamWaitEvent"),
        (lambda: _null_stream().synchronize(), "cudaStreamSynchronize"),
        (lambda: _null_event().record(_null_stream()), "cudaEventRecord"),
        (lambda: _null_event().synchronize(), "cudaEventSynchronize"),
    ],
)
def test_real_cuda_python_calls_fail_cleanly_without_gpu(call, name: str) -> None:
    """Every cuda-python call in cuda_mem, with its real signature: a CudaError naming it, not a TypeError."""
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python not installed (the [dev] or [gpu] extra)")
    with pytest.raises(cuda_mem.CudaError, match=name):
        call()


def _fake_buffer() -> cuda_mem.DeviceBuffer:
    buf = object.__new__(cuda_mem.DeviceBuffer)
    buf.nbytes, buf.ptr = 64, 0x10000
    return buf


def _null_stream() -> cuda_mem.Stream:
    stream = object.__new__(cuda_mem.Stream)
    stream.handle = cuda_mem.cudart().cudaStream_t()
    return stream


def _null_event() -> cuda_mem.Event:
    event = object.__new__(cuda_mem.Event)
    event.handle = cuda_mem.cudart().cudaEvent_t()
    return event


class NumpyBackend(Backend):
    """The stand-in engine's function, run directly: the Segmenter's reference."""

    name = "numpy"
    tile, n_classes, class_names, max_batch = TILE, N, ("ferrite", "martensite", "bainite"), 8

    def infer(self, images: np.ndarray, ratio: np.ndarray) -> np.ndarray:
        self.check_batch(images, ratio)
        return fake_model(images, ratio)


@pytest.mark.parametrize("blend", ["gaussian", "center"])
def test_segmenter_on_the_pipelined_backend_matches_a_plain_one(fake_backend, blend: str) -> None:
    """The Segmenter pulls batch k+1 while it stitches batch k: the pinned views must survive that."""
    backend, ctx, _ = fake_backend()
    frame = np.random.default_rng(10).random((45, 70)).astype(np.float32)
    with Segmenter(NumpyBackend(), overlap=0.25, blend=blend, batch_size=3) as seg:
        want = seg.segment(frame, ratio=[0.5, 0.3, 0.2], return_probabilities=True)
    with Segmenter(backend, overlap=0.25, blend=blend, batch_size=3) as seg:
        got = seg.segment(frame, ratio=[0.5, 0.3, 0.2], return_probabilities=True)
    assert len(ctx.runs) >= 3  # several batches went through both slots
    assert len(np.unique(want.labels)) == N  # the stand-in model is not trivial
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.probabilities, want.probabilities)


# ----------------------------------------------------------------------------- cuda_mem over a ctypes stand-in


class CtypesRuntime:
    """Stand-in for ``cuda.bindings.runtime``: same call signatures and result tuples, host memory
    (ctypes buffers) as 'device' memory, copies done at once with memmove."""

    cudaHostAllocDefault = 0
    cudaStreamNonBlocking = 1
    cudaEventDisableTiming = 2
    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice="H2D", cudaMemcpyDeviceToHost="D2H")

    def __init__(self) -> None:
        self.buffers: dict[int, object] = {}
        self.copies: list[tuple[str, int, int]] = []  # (kind, bytes, stream)
        self.freed: list[int] = []
        self.handles = iter(range(1000, 2000))

    def _alloc(self, n: int):
        buf = ctypes.create_string_buffer(n)
        self.buffers[ctypes.addressof(buf)] = buf
        return (_Err(0), ctypes.addressof(buf))

    def cudaMalloc(self, n):
        return self._alloc(n)

    def cudaHostAlloc(self, n, flags):
        assert flags == self.cudaHostAllocDefault
        return self._alloc(n)

    def cudaFree(self, ptr):
        self.freed.append(ptr)
        return (_Err(0),)

    cudaFreeHost = cudaFree

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        ctypes.memmove(dst, src, n)
        self.copies.append((kind, n, int(stream)))
        return (_Err(0),)

    def cudaStreamCreateWithFlags(self, flags):
        assert flags == self.cudaStreamNonBlocking
        return (_Err(0), next(self.handles))

    def cudaEventCreateWithFlags(self, flags):
        assert flags == self.cudaEventDisableTiming
        return (_Err(0), next(self.handles))

    def __getattr__(self, name: str):  # streams/events/device: accept and succeed
        if name in {"cudaStreamSynchronize", "cudaStreamDestroy", "cudaStreamWaitEvent", "cudaEventRecord",
                    "cudaEventSynchronize", "cudaEventDestroy", "cudaSetDevice"}:
            return lambda *args: (_Err(0),)
        if name == "cudaGetErrorString":
            return lambda err: (_Err(0), b"invalid device ordinal")
        raise AttributeError(name)


class CtypesContext(FakeContext):
    """Reads and writes tensors at the raw addresses TensorRT would get."""

    def __init__(self) -> None:
        self.shapes, self.addresses, self.runs = {}, {}, []

    def _view(self, name: str, dtype, shape) -> np.ndarray:
        count = int(np.prod(shape))
        raw = (ctypes.c_byte * (count * np.dtype(dtype).itemsize)).from_address(self.addresses[name])
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        b = self.shapes[names.IMAGE][0]
        out = fake_model(self._view(names.IMAGE, np.float16, (b, 1, TILE, TILE)),
                         self._view(names.RATIO, np.float32, (b, N)))
        self._view(names.PROBS, np.float16, out.shape)[...] = out
        self.runs.append((b, self.addresses[names.IMAGE]))
        return True


def test_cuda_mem_device_info_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuda_mem.device_info reads the GPU through phaseedge.gpu (the driver), needs cuda-python, and
    turns a missing device into a CudaError naming the call."""
    monkeypatch.setattr(cuda_mem, "cudart", lambda: CtypesRuntime())
    monkeypatch.setattr(gpu, "_load_driver", lambda: FakeDriver([("NVIDIA RTX A4000", (8, 6))]))
    info = cuda_mem.device_info(0)
    assert (info.name, info.compute_capability) == ("NVIDIA RTX A4000", "8.6")
    with pytest.raises(cuda_mem.CudaError, match=r"device_info\(1\).*device 1 does not exist"):
        cuda_mem.device_info(1)
    monkeypatch.setattr(gpu, "_load_driver", lambda: None)
    with pytest.raises(cuda_mem.CudaError, match=r"device_info\(0\): no CUDA driver or GPU"):
        cuda_mem.device_info(0)


def test_pipeline_over_real_cuda_mem_moves_the_right_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pointer plumbing end to end: pinned views, H2D/D2H sizes and streams, addresses given to TensorRT."""
    rt = CtypesRuntime()
    monkeypatch.setattr(cuda_mem, "cudart", lambda: rt)
    inputs, outputs = sidecar.io_specs(TILE, N)
    plan = trtb.plan_buffers(inputs, outputs, max_batch=4, min_batch=2)
    ctx = CtypesContext()
    pipe = trtb._Pipeline(ctx, plan, cuda_mem)
    rng = np.random.default_rng(12)
    sizes = [4, 1, 3]
    work = [batch(rng, b) for b in sizes]
    pending, results = None, []
    for images, ratio in work:  # the infer_many order: queue k+1, then collect k
        slot = pipe.submit({names.IMAGE: images, names.RATIO: ratio})
        if pending is not None:
            results.append(pipe.collect(pending).copy())
        pending = slot
    results.append(pipe.collect(pending).copy())
    for (images, ratio), got in zip(work, results):
        np.testing.assert_array_equal(got, fake_model(images, ratio))
    run = [max(b, 2) for b in sizes]  # padded to the profile minimum
    image_bytes, ratio_bytes, probs_bytes = TILE * TILE * 2, N * 4, N * TILE * TILE * 2
    want = []
    for r in run:
        want += [("H2D", r * image_bytes, int(pipe.upload)), ("H2D", r * ratio_bytes, int(pipe.upload)),
                 ("D2H", r * probs_bytes, int(pipe.download))]
    assert rt.copies == want
    assert [r for r, _ in ctx.runs] == run
    assert ctx.runs[0][1] == pipe.slots[0].dev[names.IMAGE].ptr != ctx.runs[1][1] == pipe.slots[1].dev[names.IMAGE].ptr
    pipe.free()
    assert len(rt.freed) == 2 * 2 * 3  # two slots x (pinned + device) x three tensors


def test_rtx_runtime_cache_is_saved_atomically_on_close(env, tmp_path: Path, caplog) -> None:
    env.version = "1.7.1.116"
    path = write_engine(tmp_path, target="rtx", version="1.7.1.116", gpu_name=sidecar.NO_GPU, cc=None)
    cache = tmp_path / "jit" / "model.rtxcache"
    backend = trtb.TensorRTBackend(path, runtime_cache=cache)
    backend._rtx_cache = types.SimpleNamespace(serialize=lambda: b"compiled kernels")
    with caplog.at_level("WARNING"):
        backend.close()  # the folder does not exist: a warning, not an error
    assert "could not save" in caplog.text and not cache.exists()
    cache.parent.mkdir()
    backend = trtb.TensorRTBackend(path, runtime_cache=cache)
    backend._rtx_cache = types.SimpleNamespace(serialize=lambda: b"compiled kernels")
    backend.close()
    assert cache.read_bytes() == b"compiled kernels"
    assert list(cache.parent.iterdir()) == [cache]  # no temporary file left behind
