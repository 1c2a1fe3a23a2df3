"""Resampling between a frame's pixel size and a model's: one home for runtime and training.

A model learns phases at one scale (metres per pixel); frames taken at another
magnification are resampled to it before tiling, and the labels go back to the frame's
own grid afterwards. Training resamples its frames with the same function, so both
sides see identical pixels.
"""

from __future__ import annotations

import numpy as np

#: pixel-size ratios within this of 1 are treated as "same scale" (no resampling)
RESCALE_TOLERANCE = 0.01


def resample_frame(frame: np.ndarray, factor: float) -> np.ndarray:
    """The frame resampled by ``factor`` (new size = round(size x factor)): area averaging
    when shrinking (no aliasing of lath textures), bilinear when enlarging."""
    import cv2

    h, w = frame.shape
    size = (max(round(w * factor), 1), max(round(h * factor), 1))
    if min(size) < 2:
        raise ValueError(f"frame {w}x{h} resampled by {factor:.4g} to the model's pixel size "
                         f"would be {size[0]}x{size[1]} pixels: too small to segment")
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(frame, size, interpolation=interp))


def to_shape(labels: np.ndarray, probs: np.ndarray | None,
             shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels and optional probabilities [n,h,w] resampled to ``shape`` (rows, cols).

    With probabilities, they are resampled bilinearly and the labels are their argmax, so
    boundaries come back smooth at the frame's resolution; without, labels go nearest.
    """
    import cv2

    size = (shape[1], shape[0])
    if probs is None:
        return cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST), None
    probs = np.stack([cv2.resize(c, size, interpolation=cv2.INTER_LINEAR) for c in probs])
    return probs.argmax(axis=0).astype(np.uint8), probs


def resample_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A label mask resampled to ``shape`` (rows, cols) by nearest neighbour."""
    labels, _ = to_shape(mask, None, shape)
    return labels
