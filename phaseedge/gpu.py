"""GPU presence check that touches no GPU library.

TensorRT runtime objects crash the interpreter when created without a GPU, so every
GPU path asks here first. Only the CUDA driver library is probed, via ctypes.
"""

from __future__ import annotations

import ctypes
import functools


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports; 0 without a driver or device."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return int(count.value)


def has_cuda_gpu() -> bool:
    return cuda_device_count() > 0
