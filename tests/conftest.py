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


@pytest.fixture(scope="module")
def fit_frames():
    """(train, val) synthetic frames for the tiny fit tests (tests/tiny_fit.py)."""
    import torch
    from phaseedge.train.data import synthetic

    torch.set_num_threads(1)  # OpenMP spin-waits badly on shared cores
    return synthetic([101, 102], (96, 96), 3), synthetic([201], (64, 64), 3)


requires_gpu = pytest.mark.skipif(not has_cuda_gpu(), reason="no NVIDIA GPU / CUDA driver on this machine")
