"""Per-frame input checks and normalisation (the contract in DEVELOPERS.md).

The intensity range is computed once per frame and applied to every tile: per-tile
ranges would make neighbouring tiles disagree at their seams. Training normalises
each whole image the same way before cropping, so the model sees the same contrast.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: the one normalisation record: stored in every checkpoint config and sidecar, the backends'
#: default when a model does not say (copy it before changing it)
METHOD: dict[str, Any] = {"method": "percentile", "low": 0.5, "high": 99.5}
#: frames with more pixels are subsampled on a regular grid for the percentiles
MAX_SAMPLES = 1 << 22
#: dtypes passed through as they are (what the host ops read)
NATIVE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))

_ROWS = 1024  # rows per pass when scanning big frames (bounds the temporaries)


def _strided(image: np.ndarray) -> np.ndarray:
    """A deterministic regular subsample of at most ``MAX_SAMPLES`` pixels."""
    step = 1
    while image.size // (step * step) > MAX_SAMPLES:
        step += 1
    return image[::step, ::step]


def frame_range(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """Percentiles ``(lo, hi)`` of a 2-D frame, with ``hi > lo`` guaranteed.

    Frames above ``MAX_SAMPLES`` pixels use every k-th row and column. A constant frame
    gets ``hi = lo + 1`` (it then normalises to all zeros rather than dividing by 0).
    """
    if not (0.0 <= low < high <= 100.0):
        raise ValueError(f"need 0 <= low < high <= 100, got low={low}, high={high}")
    a = np.asarray(image)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"frame_range needs a non-empty 2-D frame, got shape {a.shape}")
    lo, hi = np.percentile(_strided(a), [low, high])
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("frame contains NaN or inf pixels")
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def apply(image: np.ndarray, lo: float, hi: float, dtype=np.float32) -> np.ndarray:
    """``clip((image - lo) / (hi - lo), 0, 1)`` as a new array of ``dtype`` (float16/float32)."""
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"need finite lo < hi, got lo={lo}, hi={hi}")
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float16), np.dtype(np.float32)):
        raise TypeError(f"dtype must be float16 or float32, got {dt}")
    x = np.asarray(image, dtype=np.float32)
    out = (x - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(dt, copy=False)


def _all_finite(a: np.ndarray) -> bool:
    return all(np.isfinite(a[i : i + _ROWS]).all() for i in range(0, a.shape[0], _ROWS))


def _channels_equal(a: np.ndarray) -> bool:
    for i in range(0, a.shape[0], _ROWS):
        block = a[i : i + _ROWS, :, :3]
        if not ((block[..., 0] == block[..., 1]).all() and (block[..., 0] == block[..., 2]).all()):
            return False
    return True


def check_frame(image) -> np.ndarray:
    """Validate one frame and return it as a read-only 2-D array (uint8, uint16 or float32).

    - dtypes: uint8, uint16 and float32 pass as they are (no copy); other integer and
      float types (int8/16/32/64, uint32/64, float16/64) are converted to float32;
      bool, complex, object and string arrays raise ``TypeError``;
    - shape: ``(H, W)``, or ``(H, W, 1)`` / ``(1, H, W)``; RGB/RGBA ``(H, W, 3|4)`` only
      when the colour channels are equal (a grey image saved as colour; alpha is ignored),
      otherwise ``ValueError``; each side must be at least 2 pixels;
    - NaN or inf pixels raise ``ValueError``.

    The input is never modified: the result is a read-only view or a new array.
    """
    a = np.asarray(image)
    if a.dtype.kind not in "uif":
        raise TypeError(
            f"unsupported pixel dtype {a.dtype}: expected a grey image of uint8, uint16 or float "
            "(bool, complex, object and string arrays are not images)"
        )
    if a.ndim == 3 and a.shape[0] == 1 and a.shape[2] not in (1, 3, 4):
        a = a[0]
    if a.ndim == 3:
        if a.shape[2] == 1:
            a = a[..., 0]
        elif a.shape[2] in (3, 4):
            if not _channels_equal(a):
                raise ValueError(
                    f"colour image of shape {a.shape} with different channels: phaseedge needs a grey "
                    "SEM frame (convert it to grey yourself if that is what you mean)"
                )
            a = a[..., 0]
        else:
            raise ValueError(f"expected a 2-D grey frame, got shape {a.shape}")
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D grey frame, got {a.ndim} dimensions (shape {a.shape})")
    if a.shape[0] < 2 or a.shape[1] < 2:
        raise ValueError(f"frame of shape {a.shape} is too small: each side needs at least 2 pixels")
    if a.dtype not in NATIVE_DTYPES:
        a = a.astype(np.float32)
    if a.dtype.kind == "f" and not _all_finite(a):
        raise ValueError("frame contains NaN or inf pixels")
    view = a.view()
    view.flags.writeable = False
    return view
