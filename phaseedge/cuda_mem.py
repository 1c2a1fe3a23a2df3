"""Small RAII layer over cuda-python's runtime API: device and pinned buffers, streams, events.

Why not Polygraphy's or PyCUDA's wrappers: the runtime must stay light (no torch, no
PyCUDA context juggling), and cuda-python is what NVIDIA's own TensorRT samples use.
Every cuda-python call returns a tuple ``(error, *values)`` instead of raising;
:func:`check` turns a non-zero error into :class:`CudaError` naming the call.

cuda-python is imported lazily (:func:`cudart`), so importing this module costs
nothing and works on machines without it. Both layouts are supported:
``cuda.bindings.runtime`` (cuda-python >= 12.6, the only one in 13.x) and the older
``cuda.cudart``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
from types import ModuleType
from typing import Any

import numpy as np

from phaseedge import gpu

# cudaErrorInsufficientDriver: no driver at all, or cuda-python built for a newer CUDA than the driver
_HINTS = {35: " (is there an NVIDIA driver? cuda-python 13.x needs a CUDA 13 driver; use cuda-python 12.x with a CUDA 12 one)"}
_INSTALL_HINT = "install the GPU extra: pip install 'phaseedge[gpu]' (cuda-python matching your CUDA driver)"


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and CUDA's own error name."""


@functools.lru_cache(maxsize=1)
def cudart() -> ModuleType:
    """The cuda-python runtime module; ImportError with an install hint when it is missing."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python < 12.6
        except ImportError as e:
            raise ImportError(f"cuda-python is not installed; {_INSTALL_HINT}") from e
    return runtime


def check(result: Any, call: str = "CUDA call") -> Any:
    """Unwrap a cuda-python result tuple ``(err, *values)``.

    Returns None, the single value, or a tuple of values. ``err`` is an int-valued
    enum (``cudaError_t``); zero is success.
    """
    if not isinstance(result, tuple) or not result:
        raise TypeError(f"{call}: expected a cuda-python result tuple, got {result!r}")
    err, values = result[0], result[1:]
    code = int(err)
    if code != 0:
        name = getattr(err, "name", None) or f"error {code}"
        hint = _HINTS.get(code, "")
        raise CudaError(f"{call} failed: {name} ({code}){_describe(err)}{hint}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _describe(err: Any) -> str:
    """CUDA's sentence for an error, best effort (the lookup itself must not raise)."""
    try:
        res = cudart().cudaGetErrorString(err)
        text = res[1] if isinstance(res, tuple) else res
        text = text.decode() if isinstance(text, bytes) else str(text)
    except Exception:  # noqa: BLE001 - a failed description must not hide the original error
        return ""
    return f": {text}" if text else ""


def device_info(device: int = 0) -> gpu.DeviceInfo:
    """Name and compute capability of ``device``, for code about to drive it with cuda-python.

    Read by :func:`phaseedge.gpu.device_info`, the one GPU reader (the driver's own strings,
    the same ones the exporter records in a sidecar). Here cuda-python must be installed
    (ImportError with the install hint otherwise) and the GPU present (:class:`CudaError`).
    """
    cudart()
    try:
        info = gpu.device_info(device)
    except gpu.GpuError as e:
        raise CudaError(f"device_info({device}): {e}") from e
    if info is None:
        raise CudaError(f"device_info({device}): no CUDA driver or GPU on this machine")
    return info


def set_device(device: int) -> None:
    """Select ``device`` for the calling thread (the runtime API keeps one current device per thread)."""
    check(cudart().cudaSetDevice(int(device)), f"cudaSetDevice({device})")


class DeviceBuffer:
    """``nbytes`` of device memory (cudaMalloc), freed by :meth:`free` or at garbage collection."""

    def __init__(self, nbytes: int) -> None:
        if nbytes <= 0:
            raise ValueError(f"device buffer size must be positive, got {nbytes}")
        self.nbytes = int(nbytes)
        self.ptr: int | None = int(check(cudart().cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes})"))

    def free(self) -> None:
        if self.ptr is not None:
            ptr, self.ptr = self.ptr, None
            check(cudart().cudaFree(ptr), "cudaFree")

    def __del__(self) -> None:
        if getattr(self, "ptr", None) is not None:
            with contextlib.suppress(Exception):  # e.g. at interpreter exit; the driver frees it then
                self.free()


class PinnedArray:
    """A numpy array in page-locked host memory (cudaHostAlloc).

    Page-locked memory is what lets cudaMemcpyAsync run truly asynchronously and at
    full PCIe speed; pageable numpy memory would be staged through a driver buffer.
    ``array`` is only valid until :meth:`free`.
    """

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype | str) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(s) for s in shape)
        count = math.prod(self.shape)
        self.nbytes = count * self.dtype.itemsize
        if self.nbytes <= 0:
            raise ValueError(f"pinned buffer must hold at least one element, got shape {self.shape}")
        rt = cudart()
        self.ptr: int | None = int(
            check(rt.cudaHostAlloc(self.nbytes, rt.cudaHostAllocDefault), f"cudaHostAlloc({self.nbytes})")
        )
        raw = (ctypes.c_byte * self.nbytes).from_address(self.ptr)
        self.array: np.ndarray = np.frombuffer(raw, dtype=self.dtype, count=count).reshape(self.shape)

    def free(self) -> None:
        if self.ptr is not None:
            ptr, self.ptr = self.ptr, None
            self.array = np.empty((0,), self.dtype)  # drop the view before the memory goes
            check(cudart().cudaFreeHost(ptr), "cudaFreeHost")

    def __del__(self) -> None:
        if getattr(self, "ptr", None) is not None:
            with contextlib.suppress(Exception):
                self.free()


class Stream:
    """A non-blocking CUDA stream: it does not synchronise with the legacy default stream."""

    def __init__(self) -> None:
        rt = cudart()
        self.handle: Any = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")

    def __int__(self) -> int:
        return int(self.handle)

    def wait(self, event: Event) -> None:
        """Work queued on this stream after this call waits for ``event`` (no host blocking)."""
        check(cudart().cudaStreamWaitEvent(self.handle, event.handle, 0), "cudaStreamWaitEvent")

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def destroy(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            check(cudart().cudaStreamDestroy(handle), "cudaStreamDestroy")


class Event:
    """A CUDA event without timing (cheaper), used only to order streams and the host."""

    def __init__(self) -> None:
        rt = cudart()
        self.handle: Any = check(rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming), "cudaEventCreateWithFlags")

    def record(self, stream: Stream) -> None:
        check(cudart().cudaEventRecord(self.handle, stream.handle), "cudaEventRecord")

    def synchronize(self) -> None:
        check(cudart().cudaEventSynchronize(self.handle), "cudaEventSynchronize")

    def destroy(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            check(cudart().cudaEventDestroy(handle), "cudaEventDestroy")


def copy_to_device_async(dst: DeviceBuffer, src: np.ndarray, stream: Stream) -> None:
    """Queue a host→device copy of the C-contiguous ``src`` (pinned, for real asynchrony)."""
    _check_copy(dst, src)
    rt = cudart()
    kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
    check(rt.cudaMemcpyAsync(dst.ptr, src.ctypes.data, src.nbytes, kind, stream.handle), "cudaMemcpyAsync(H2D)")


def copy_to_host_async(dst: np.ndarray, src: DeviceBuffer, stream: Stream) -> None:
    """Queue a device→host copy filling the C-contiguous ``dst`` from the start of ``src``."""
    _check_copy(src, dst)
    rt = cudart()
    kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
    check(rt.cudaMemcpyAsync(dst.ctypes.data, src.ptr, dst.nbytes, kind, stream.handle), "cudaMemcpyAsync(D2H)")


def _check_copy(device: DeviceBuffer, host: np.ndarray) -> None:
    if device.ptr is None:
        raise ValueError("device buffer was already freed")
    if not host.flags.c_contiguous:
        raise ValueError("host array for an async copy must be C-contiguous")
    if host.nbytes > device.nbytes:
        raise ValueError(f"copy of {host.nbytes} bytes does not fit a {device.nbytes}-byte device buffer")
