"""Host-side kernels around the model: cut tiles, stitch probabilities, finish labels.

The signatures are the contract in DEVELOPERS.md ("Host ops"). The native module
`phaseedge._hostops` (C++/OpenMP, releases the GIL so it overlaps inference) is used
when it was built; otherwise the numpy reference in `numpy_impl`, which it matches
exactly. Set PHASEEDGE_NO_NATIVE=1 to force numpy (tests, benchmarks, debugging).
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

import numpy as np

from phaseedge import _hostops_numpy as numpy_impl
from phaseedge._hostops_numpy import gaussian_1d, owned_intervals

log = logging.getLogger(__name__)

__all__ = [
    "BACKEND",
    "accumulate",
    "finish",
    "gather_tiles",
    "gaussian_1d",
    "native_impl",
    "numpy_impl",
    "owned_intervals",
]


def _load_native() -> ModuleType | None:
    if os.environ.get("PHASEEDGE_NO_NATIVE", "") not in ("", "0"):
        log.info("host ops: numpy (PHASEEDGE_NO_NATIVE is set)")
        return None
    # OpenMP threads that spin at barriers steal the CPU from inference and from each other
    # on a busy machine (measured: 2.5x slower at load 12 on 2 cores). libgomp reads
    # OMP_WAIT_POLICY once, when it is loaded, so set it only around our import (a value the
    # user set is kept; if libgomp was already loaded by someone else this has no effect).
    added = "OMP_WAIT_POLICY" not in os.environ
    if added:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        from phaseedge import _hostops
    except ImportError as e:
        log.info("host ops: numpy (native extension not available: %s)", e)
        return None
    finally:
        if added:
            del os.environ["OMP_WAIT_POLICY"]
    log.info("host ops: native (%s, %d OpenMP threads)", _hostops.__file__, _hostops.max_threads())
    return _hostops


native_impl: ModuleType | None = _load_native()
_impl: ModuleType = native_impl if native_impl is not None else numpy_impl
BACKEND: str = "native" if native_impl is not None else "numpy"


def gather_tiles(frame: np.ndarray, origins: np.ndarray, tile: int, lo: float, hi: float,
                 out: np.ndarray) -> None:
    """Write clip((frame - lo) / (hi - lo), 0, 1) tiles at `origins` (y, x) into `out` [B,1,T,T];
    pixels outside the frame mirror symmetrically."""
    _impl.gather_tiles(frame, origins, tile, lo, hi, out)


def accumulate(acc: np.ndarray, wsum: np.ndarray, probs: np.ndarray, origins: np.ndarray,
               wy: np.ndarray, wx: np.ndarray) -> None:
    """acc += probs * (wy ⊗ wx) and wsum += wy ⊗ wx for each tile, clipped to the band, in place."""
    _impl.accumulate(acc, wsum, probs, origins, wy, wx)


def finish(acc: np.ndarray, wsum: np.ndarray, rows: int, labels: np.ndarray, counts: np.ndarray,
           class_weights: np.ndarray | None = None, probs_out: np.ndarray | None = None) -> None:
    """Labels = argmax(acc / wsum * class_weights) (ties → lowest class) for the first `rows`
    rows; counts += per-class pixel counts; probs_out (optional) = acc / wsum."""
    if class_weights is not None:
        class_weights = np.ascontiguousarray(class_weights, dtype=np.float32)
    _impl.finish(acc, wsum, rows, labels, counts, class_weights, probs_out)
