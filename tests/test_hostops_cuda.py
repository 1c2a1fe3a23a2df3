"""CUDA host ops: the source compiles where nvcc is (CI), arguments are checked without a
GPU, and on a GPU the kernels equal the numpy reference bit for bit."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from phaseedge import hostops, hostops_cuda
from phaseedge.hostops_cuda import NO_BAD_PIXEL, CudaHostOps
from tests.conftest import requires_gpu

SOURCE = Path(__file__).resolve().parents[1] / "cpp_ext" / "cuda" / "hostops.cu"
ref = hostops.numpy_impl


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not on PATH")
def test_cuda_source_compiles_to_every_kernel_without_fma(tmp_path: Path) -> None:
    ptx = tmp_path / "hostops.ptx"
    subprocess.run(["nvcc", "-std=c++17", "-ptx", "-arch=compute_75", str(SOURCE), "-o", str(ptx)],
                   check=True, timeout=300)
    text = ptx.read_text()
    assert set(re.findall(r"\.entry (\w+)\(", text)) == set(hostops_cuda._KERNELS)
    assert "fma.rn.f32" not in text  # a fused multiply-add would round differently from the CPU


def test_cuda_arguments_checked_before_any_driver_call() -> None:
    ops = CudaHostOps(image=Path("/nonexistent.fatbin"))
    ok = {"frame": 1, "frame_shape": (8, 9), "frame_dtype": "uint16", "origins": 2, "batch": 3, "tile": 4,
          "lo": 0.0, "hi": 1.0, "out": 3}
    for change, exc in [({"frame_dtype": np.int32}, TypeError), ({"out_dtype": "float64"}, TypeError),
                        ({"tile": 0}, ValueError), ({"batch": 2.0}, TypeError), ({"frame": 0}, ValueError),
                        ({"hi": 0.0}, ValueError), ({"frame_shape": (0, 9)}, ValueError)]:
        with pytest.raises(exc):
            ops.gather_tiles(**{**ok, **change})
    with pytest.raises(ValueError, match="rows"):
        ops.finish(1, 2, (3, 4, 5), 6, 7, 8, 9)
    with pytest.raises(FileNotFoundError, match="nvcc"):  # valid arguments reach the (missing) kernels
        ops.gather_tiles(**ok)


# ---------------------------------------------------------------- on a GPU
class _Device:
    """Minimal device memory through the driver API (the test needs no cuda-python)."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libcuda.so.1")
        self.lib.cuMemcpyHtoD_v2.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t]
        self.lib.cuMemcpyDtoH_v2.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t]
        self.lib.cuMemFree_v2.argtypes = [ctypes.c_uint64]
        assert self.lib.cuInit(0) == 0
        dev, ctx = ctypes.c_int(), ctypes.c_void_p()
        assert self.lib.cuDeviceGet(ctypes.byref(dev), 0) == 0
        assert self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) == 0
        assert self.lib.cuCtxSetCurrent(ctx) == 0
        self.ptrs: list[int] = []

    def put(self, a: np.ndarray) -> int:
        a = np.ascontiguousarray(a)
        p = ctypes.c_uint64()
        assert self.lib.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(max(a.nbytes, 1))) == 0
        self.ptrs.append(p.value)
        assert self.lib.cuMemcpyHtoD_v2(p.value, a.ctypes.data, a.nbytes) == 0
        return p.value

    def get(self, ptr: int, like: np.ndarray) -> np.ndarray:
        out = np.empty_like(like)
        assert self.lib.cuCtxSynchronize() == 0
        assert self.lib.cuMemcpyDtoH_v2(out.ctypes.data, ptr, out.nbytes) == 0
        return out

    def free(self) -> None:
        for p in self.ptrs:
            self.lib.cuMemFree_v2(p)


@pytest.fixture
def device():
    if not hostops_cuda.available():
        pytest.skip("CUDA host-op kernels not built (no nvcc at install time)")
    d = _Device()
    yield d
    d.free()


@requires_gpu
@pytest.mark.parametrize("odtype", [np.float16, np.float32])
@pytest.mark.parametrize("fdtype", [np.uint8, np.uint16, np.float32])
def test_cuda_gather_equals_reference(device: _Device, fdtype: type, odtype: type) -> None:
    rng = np.random.default_rng(7)
    h, w, tile = 61, 45, 19
    frame = (rng.random((h, w)) * 250).astype(fdtype)
    origins = np.array([[y, x] for y in (-18, 0, 30, 60) for x in (-3, 0, 26, 44)], np.int64)
    want = np.empty((len(origins), 1, tile, tile), odtype)
    ref.gather_tiles(frame, origins, tile, 3.0, 240.0, want)
    out = device.put(np.zeros_like(want))
    CudaHostOps().gather_tiles(device.put(frame), frame.shape, fdtype, device.put(origins), len(origins), tile,
                               3.0, 240.0, out, odtype)
    got = device.get(out, want)
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


@requires_gpu
@pytest.mark.parametrize("pdtype", [np.float16, np.float32])
def test_cuda_accumulate_and_finish_equal_reference(device: _Device, pdtype: type) -> None:
    rng = np.random.default_rng(8)
    n, h, w, tile, batch, rows = 3, 33, 71, 21, 9, 20
    probs = rng.random((batch, n, tile, tile)).astype(pdtype)
    origins = np.stack([rng.integers(-tile + 1, h, batch), rng.integers(-tile + 1, w, batch)], 1).astype(np.int64)
    wy, wx = rng.random((2, batch, tile), dtype=np.float32)
    acc = np.full((n, h, w), 0.5, np.float32)
    wsum = np.full((h, w), 0.25, np.float32)
    d_acc, d_wsum = device.put(acc), device.put(wsum)
    ref.accumulate(acc, wsum, probs, origins, wy, wx)
    ops = CudaHostOps()
    ops.accumulate(d_acc, d_wsum, (n, h, w), device.put(probs), pdtype, batch, tile, device.put(origins),
                   device.put(wy), device.put(wx))
    np.testing.assert_array_equal(device.get(d_acc, acc), acc)
    np.testing.assert_array_equal(device.get(d_wsum, wsum), wsum)

    cw = np.array([1.0, 1.5, 0.75], np.float32)
    labels, counts = np.empty((rows, w), np.uint8), np.arange(n, dtype=np.int64)
    probs_out = np.empty((n, rows, w), np.float16)
    d_labels, d_counts, d_bad = device.put(labels), device.put(counts), device.put(np.array([NO_BAD_PIXEL]))
    d_probs = device.put(probs_out)
    ref.finish(acc, wsum, rows, labels, counts, cw, probs_out)
    ops.finish(d_acc, d_wsum, (n, h, w), rows, d_labels, d_counts, d_bad, device.put(cw), d_probs, np.float16)
    np.testing.assert_array_equal(device.get(d_labels, labels), labels)
    np.testing.assert_array_equal(device.get(d_counts, counts), counts)
    np.testing.assert_array_equal(device.get(d_probs, probs_out).view(np.uint16), probs_out.view(np.uint16))
    assert device.get(d_bad, np.zeros(1, np.uint64))[0] == NO_BAD_PIXEL

    hole = np.ones((2, 4), np.float32)
    hole[1, 2] = 0
    d_bad = device.put(np.array([NO_BAD_PIXEL]))
    ops.finish(device.put(np.ones((1, 2, 4), np.float32)), device.put(hole), (1, 2, 4), 2,
               device.put(np.empty((2, 4), np.uint8)), device.put(np.zeros(1, np.int64)), d_bad)
    assert device.get(d_bad, np.zeros(1, np.uint64))[0] == 1 * 4 + 2
