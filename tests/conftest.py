"""Shared fixtures. Keep this file small; area-specific helpers live beside their tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from phaseedge.gpu import has_cuda_gpu

REPO = Path(__file__).resolve().parents[1]
METALDAM = REPO.parent / "shared" / "data" / "metaldam"


@pytest.fixture(scope="session")
def metaldam_dir() -> Path:
    """MetalDAM has no licence: it is read from ../shared and never committed."""
    if not (METALDAM / "images").is_dir():
        pytest.skip(f"MetalDAM not found at {METALDAM}")
    return METALDAM


requires_gpu = pytest.mark.skipif(not has_cuda_gpu(), reason="no NVIDIA GPU / CUDA driver on this machine")
