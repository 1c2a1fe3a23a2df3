"""The one GPU reader: presence, name and compute capability from the CUDA driver library (ctypes).

TensorRT runtime objects crash the interpreter when created without a GPU, so every
GPU path asks here first. The exporter records, and the TensorRT backend compares, the
name and compute capability read by :func:`device_info`, so both sides see the same
strings. Only ``libcuda.so.1`` is probed: no cuda-python, TensorRT or torch, and no
CUDA context is created.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any, NamedTuple

CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


class GpuError(RuntimeError):
    """The driver answered for a GPU it then could not describe, or the device index is past the last GPU."""


class DeviceInfo(NamedTuple):
    """What a TensorRT engine is bound to: the driver's GPU name and its compute capability ("8.9")."""

    name: str
    compute_capability: str


def _load_driver() -> Any:
    """The CUDA driver library (ctypes), or None where it is not installed."""
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None


def _initialised_driver() -> tuple[Any, int] | None:
    """(driver, device count) after ``cuInit`` (the driver API answers nothing before it);
    None without a driver or a usable GPU (CUDA_ERROR_NO_DEVICE, ...)."""
    cuda = _load_driver()
    if cuda is None or cuda.cuInit(0) != 0:
        return None
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value <= 0:
        return None
    return cuda, int(count.value)


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports; 0 without a driver or device."""
    found = _initialised_driver()
    return 0 if found is None else found[1]


def has_cuda_gpu() -> bool:
    return cuda_device_count() > 0


def device_info(device: int = 0) -> DeviceInfo | None:
    """Name and compute capability of CUDA device ``device``; None without a driver or GPU.

    A ``device`` past the last GPU, or a driver call that fails once a GPU is known to be
    there, raises :class:`GpuError`: recording or checking against the wrong GPU, or none,
    would be worse than stopping.
    """
    if isinstance(device, bool) or not isinstance(device, int) or device < 0:
        raise ValueError(f"device must be a CUDA device index >= 0, got {device!r}")
    found = _initialised_driver()
    if found is None:
        return None
    cuda, count = found
    if device >= count:
        raise GpuError(f"CUDA device {device} does not exist: this machine has {count} "
                       f"(0..{count - 1}; CUDA_VISIBLE_DEVICES renumbers them)")

    def call(name: str, *args: Any) -> None:
        rc = getattr(cuda, name)(*args)
        if rc != 0:
            raise GpuError(f"CUDA driver call {name} for device {device} failed (CUresult {rc})")

    dev = ctypes.c_int(0)
    buf = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    call("cuDeviceGet", ctypes.byref(dev), device)
    call("cuDeviceGetName", buf, 256, dev)
    call("cuDeviceGetAttribute", ctypes.byref(major), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
    call("cuDeviceGetAttribute", ctypes.byref(minor), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
    return DeviceInfo(buf.value.decode(errors="replace"), f"{major.value}.{minor.value}")
