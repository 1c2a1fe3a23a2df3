"""A frame made ready for tiling: read, checked, at the model's pixel size, with its
normalisation range — computed once per frame (never per tile), and on a helper thread
while the previous frame is inferred (`Segmenter.segment_many`)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from phaseedge.normalize import check_frame, frame_range
from phaseedge.resample import RESCALE_TOLERANCE, resample_frame


@dataclass(frozen=True)
class Prepared:
    """A checked frame plus its normalisation range: everything inference needs."""

    frame: np.ndarray  # 2-D, C-contiguous uint8/uint16/float32, at the model's pixel size
    lo: float
    hi: float
    seconds: float
    original_shape: tuple[int, int] | None = None  # the frame's own shape when it was resampled


def prepare(image: Any, normalization: dict, model_pixel_size_m: float | None) -> Prepared:
    """``image``: a 2-D array, a `phaseedge.io.Frame` or a path (read with `phaseedge.io.read_image`).
    A frame of known pixel size is resampled to ``model_pixel_size_m`` when they differ by more
    than RESCALE_TOLERANCE; ``normalization`` is the model's (only "percentile" exists)."""
    return prepare_scales(image, normalization, model_pixel_size_m, (1.0,))[0]


def prepare_scales(image: Any, normalization: dict, model_pixel_size_m: float | None,
                   scales: tuple[float, ...]) -> tuple[Prepared, ...]:
    """The frame read once and prepared at each of ``scales`` x the model's pixel size
    (multi-scale inference, `Segmenter(scales=...)`). A frame of unknown pixel size is taken to
    be at the model's pixel size, so scale s resamples it by 1 / s."""
    t0 = time.perf_counter()
    pixel_size = None
    if not isinstance(image, np.ndarray):
        from phaseedge.io import Frame, read_image

        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
        if isinstance(image, Frame):
            image, pixel_size = image.pixels, image.pixel_size_m
    frame = np.ascontiguousarray(check_frame(image))
    if normalization.get("method") != "percentile":
        raise ValueError(f"model asks for normalisation {normalization!r}; this runtime knows 'percentile'")
    low, high = float(normalization.get("low", 0.5)), float(normalization.get("high", 99.5))
    read = time.perf_counter() - t0
    out = []
    for scale in scales:
        t1 = time.perf_counter()
        factor = 1.0 / scale
        if pixel_size is not None and model_pixel_size_m is not None:
            factor = pixel_size / (model_pixel_size_m * scale)
        scaled, original = frame, None
        if abs(factor - 1.0) > RESCALE_TOLERANCE:
            original = frame.shape
            scaled = resample_frame(frame, factor)
        lo, hi = frame_range(scaled, low, high)
        out.append(Prepared(scaled, lo, hi, read + time.perf_counter() - t1, original))
        read = 0.0  # the frame was read once: its time goes to the first scale
    return tuple(out)
