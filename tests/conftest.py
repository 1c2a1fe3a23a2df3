"""Shared fixtures. Keep this file small; area-specific helpers live beside their tests."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
METALDAM = REPO.parent / "shared" / "data" / "metaldam"


@pytest.fixture(scope="session")
def metaldam_dir() -> Path:
    """MetalDAM has no licence: it is read from ../shared and never committed."""
    if not (METALDAM / "images").is_dir():
        pytest.skip(f"MetalDAM not found at {METALDAM}")
    return METALDAM


def has_nvidia_gpu() -> bool:
    """True when a CUDA driver reports a device; checked before any GPU library is touched."""
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return False
    return count.value > 0


requires_gpu = pytest.mark.skipif(not has_nvidia_gpu(), reason="no NVIDIA GPU / CUDA driver on this machine")
