"""Host ops on the GPU: the three kernels of `phaseedge.hostops` for device buffers.

For the TensorRT path, so tiles are cut from a frame already on the device and stitched
there: only the frame goes up and labels + counts come back. Same contract and the same
float32 arithmetic as the numpy reference (explicitly rounded intrinsics, no FMA), so the
results match it bit for bit.

The kernels (cpp_ext/cuda/hostops.cu) are compiled by `setup.py` with nvcc, when nvcc is
present, into `phaseedge/_hostops_cuda.fatbin` (SASS for common GPUs + PTX the driver can
JIT for newer ones). They are loaded through the CUDA driver API with ctypes: no
cuda-python, PyCUDA or torch needed, and the calls release the GIL. Arguments are device
pointers (ints, e.g. `DeviceBuffer.ptr`) plus shapes; launches are asynchronous on
`stream` (a CUstream / cudaStream_t handle, 0 = legacy default stream).

Construction is cheap; the driver, the context and the module load on first use.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import numpy as np

FATBIN = Path(__file__).with_name("_hostops_cuda.fatbin")
_BLOCK = 128
_FRAME = {"uint8": "u8", "uint16": "u16", "float32": "f32"}
_HALF_OR_FLOAT = {"float16": "f16", "float32": "f32"}
_KERNELS = ([f"pe_gather_{i}_{o}" for i in _FRAME.values() for o in _HALF_OR_FLOAT.values()]
            + [f"pe_accumulate_{p}" for p in _HALF_OR_FLOAT.values()]
            + [f"pe_finish_{p}" for p in _HALF_OR_FLOAT.values()])
#: what finish's `bad` word holds when every pixel had weight
NO_BAD_PIXEL = np.iinfo(np.uint64).max


class CudaHostOpsError(RuntimeError):
    """A CUDA driver call failed; the message names the call and the driver's error name."""


def available() -> bool:
    """True when the kernels were built (nvcc was present at install time)."""
    return FATBIN.is_file()


def _dtype(name: str, value: object, allowed: dict[str, str]) -> str:
    key = np.dtype(value).name if not isinstance(value, str) else value
    if key not in allowed:
        raise TypeError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return allowed[key]


def _positive(**values: int) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if v < 1 or v > 2**31 - 1:
            raise ValueError(f"{name} must be in [1, 2**31 - 1], got {v}")


def _pointer(name: str, value: object, optional: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a device pointer (int), got {type(value).__name__}")
    if value < 0 or (value == 0 and not optional):
        raise ValueError(f"{name} must be a non-null device pointer, got {value}")
    return int(value)


class CudaHostOps:
    """Loader/runner for the CUDA host-op kernels on one device."""

    def __init__(self, device: int = 0, image: Path | None = None) -> None:
        self.device = int(device)
        self.image = Path(image) if image is not None else FATBIN
        self._lib: ctypes.CDLL | None = None
        self._ctx = ctypes.c_void_p()
        self._fn: dict[str, ctypes.c_void_p] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ driver plumbing
    def _check(self, result: int, call: str) -> None:
        if result != 0:
            name = ctypes.c_char_p()
            self._lib.cuGetErrorName(result, ctypes.byref(name))
            raise CudaHostOpsError(f"{call} failed: {(name.value or b'?').decode()} ({result})")

    def _ensure_loaded(self) -> None:
        if self._fn:
            return
        with self._lock:
            if self._fn:
                return
            if not self.image.is_file():
                raise FileNotFoundError(f"CUDA host-op kernels not built ({self.image} is missing): reinstall "
                                        "phaseedge on a machine with nvcc (the CUDA toolkit) on PATH")
            try:
                lib = ctypes.CDLL("libcuda.so.1")
            except OSError as e:
                raise CudaHostOpsError(f"no CUDA driver (libcuda.so.1): {e}") from e
            lib.cuGetErrorName.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
            lib.cuLaunchKernel.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [
                ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
            self._lib = lib
            self._check(lib.cuInit(0), "cuInit")
            ctx = ctypes.c_void_p()
            self._check(lib.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
            if not ctx.value:  # nobody made a context current yet: use the device's primary context
                dev = ctypes.c_int()
                self._check(lib.cuDeviceGet(ctypes.byref(dev), self.device), "cuDeviceGet")
                self._check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
                self._check(lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
            self._ctx = ctx
            image = self.image.read_bytes()
            module = ctypes.c_void_p()
            self._check(lib.cuModuleLoadData(ctypes.byref(module), image), f"cuModuleLoadData({self.image.name})")
            fns = {}
            for name in _KERNELS:
                fn = ctypes.c_void_p()
                self._check(lib.cuModuleGetFunction(ctypes.byref(fn), module, name.encode()),
                            f"cuModuleGetFunction({name})")
                fns[name] = fn
            self._fn = fns

    def _launch(self, name: str, grid: tuple[int, int, int], shared: int, stream: int,
                args: list[ctypes._SimpleCData]) -> None:
        self._ensure_loaded()
        current = ctypes.c_void_p()
        self._check(self._lib.cuCtxGetCurrent(ctypes.byref(current)), "cuCtxGetCurrent")
        if not current.value:  # a thread that has not used CUDA yet
            self._check(self._lib.cuCtxSetCurrent(self._ctx), "cuCtxSetCurrent")
        params = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])
        self._check(self._lib.cuLaunchKernel(self._fn[name], *grid, _BLOCK, 1, 1, shared,
                                             ctypes.c_void_p(stream or None), params, None),
                    f"cuLaunchKernel({name})")

    # ------------------------------------------------------------------ kernels
    def gather_tiles(self, frame: int, frame_shape: tuple[int, int], frame_dtype: object, origins: int,
                     batch: int, tile: int, lo: float, hi: float, out: int, out_dtype: object = "float16",
                     stream: int = 0) -> None:
        """out[B,1,T,T] = clip((frame - lo) / (hi - lo), 0, 1) at origins (int64 [B,2] on the device),
        mirroring outside the frame (at any distance: no origin can read out of bounds)."""
        h, w = (int(v) for v in frame_shape)
        _positive(height=h, width=w, batch=batch, tile=tile)
        fi, fo = _dtype("frame_dtype", frame_dtype, _FRAME), _dtype("out_dtype", out_dtype, _HALF_OR_FLOAT)
        lo_f, hi_f = float(lo), float(hi)
        if not (np.isfinite(lo_f) and np.isfinite(hi_f)) or hi_f <= lo_f:
            raise ValueError(f"need finite lo < hi, got lo={lo_f}, hi={hi_f}")
        args = [ctypes.c_void_p(_pointer("frame", frame)), ctypes.c_int(h), ctypes.c_int(w),
                ctypes.c_void_p(_pointer("origins", origins)), ctypes.c_int(tile),
                ctypes.c_float(np.float32(lo_f)), ctypes.c_float(np.float32(1.0 / (hi_f - lo_f))),
                ctypes.c_void_p(_pointer("out", out))]
        self._launch(f"pe_gather_{fi}_{fo}", (-(-tile // _BLOCK), tile, batch), 0, stream, args)

    def accumulate(self, acc: int, wsum: int, band_shape: tuple[int, int, int], probs: int, probs_dtype: object,
                   batch: int, tile: int, origins: int, wy: int, wx: int, stream: int = 0) -> None:
        """acc[n,h,W] += probs[B,n,T,T] * wy⊗wx and wsum[h,W] += wy⊗wx (wy, wx float32 [B,T]),
        tiles at origins (int64 [B,2], band-relative) clipped to the band."""
        n, h, w = (int(v) for v in band_shape)
        _positive(n_classes=n, band_height=h, width=w, batch=batch, tile=tile)
        p = _dtype("probs_dtype", probs_dtype, _HALF_OR_FLOAT)
        args = [ctypes.c_void_p(_pointer("acc", acc)), ctypes.c_void_p(_pointer("wsum", wsum)), ctypes.c_int(n),
                ctypes.c_int(h), ctypes.c_int(w), ctypes.c_void_p(_pointer("probs", probs)), ctypes.c_int(batch),
                ctypes.c_int(tile), ctypes.c_void_p(_pointer("origins", origins)),
                ctypes.c_void_p(_pointer("wy", wy)), ctypes.c_void_p(_pointer("wx", wx))]
        self._launch(f"pe_accumulate_{p}", (-(-w // _BLOCK), h, 1), 0, stream, args)

    def finish(self, acc: int, wsum: int, band_shape: tuple[int, int, int], rows: int, labels: int, counts: int,
               bad: int, class_weights: int = 0, probs_out: int = 0, probs_out_dtype: object = "float32",
               probs_out_class_stride: int | None = None, stream: int = 0) -> None:
        """labels uint8 [rows,W] = argmax(acc/wsum * class_weights) (ties → lowest class), counts int64 [n]
        += class pixel counts, optional probs_out [n,rows,W] (class stride in elements, default rows*W).

        `bad` is a device uint64 the caller sets to NO_BAD_PIXEL; a pixel without weight lowers it
        to its flat index r*W + x. Read it with the labels and raise when it changed (unlike the
        host version, counts then already include this band)."""
        n, h, w = (int(v) for v in band_shape)
        _positive(n_classes=n, band_height=h, width=w, rows=rows)
        if rows > h or n > 256:
            raise ValueError(f"need rows <= band height ({rows} > {h}?) and at most 256 classes (got {n})")
        po = _dtype("probs_out_dtype", probs_out_dtype, _HALF_OR_FLOAT)
        stride = rows * w if probs_out_class_stride is None else int(probs_out_class_stride)
        if stride < rows * w:
            raise ValueError(f"probs_out_class_stride must be >= rows * width = {rows * w}, got {stride}")
        args = [ctypes.c_void_p(_pointer("acc", acc)), ctypes.c_void_p(_pointer("wsum", wsum)), ctypes.c_int(n),
                ctypes.c_int(h), ctypes.c_int(w), ctypes.c_void_p(_pointer("labels", labels)),
                ctypes.c_void_p(_pointer("counts", counts)), ctypes.c_void_p(_pointer("bad", bad)),
                ctypes.c_void_p(_pointer("class_weights", class_weights, optional=True) or None),
                ctypes.c_void_p(_pointer("probs_out", probs_out, optional=True) or None),
                ctypes.c_longlong(stride)]
        self._launch(f"pe_finish_{po}", (-(-w // _BLOCK), rows, 1), 4 * n, stream, args)
