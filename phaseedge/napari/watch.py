"""A backend wrapper that counts tiles and can stop a segmentation between batches.

The Segmenter has no progress callback and cannot be interrupted. Wrapping its backend
gives both without touching it: every batch passes through `WatchedBackend`, which adds
the batch's tiles to the current `Job` and raises `Superseded` before the next batch once
the job is cancelled (the Segmenter closes its tile stream on any error, so nothing is
left half-done). Qt-free, so it is usable and testable outside napari.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

import numpy as np

from phaseedge.backends.base import Backend


class Superseded(Exception):
    """Raised inside a cancelled job's segmentation; the widget drops the job quietly."""


class Job:
    """One segmentation request: tiles done so far, the tiles it is expected to take,
    whether a newer request cancelled it, and whether its thread has finished."""

    def __init__(self, expected_tiles: int) -> None:
        self.expected_tiles = max(1, int(expected_tiles))
        self.tiles_done = 0
        self._cancelled = threading.Event()
        self.finished = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def progress(self) -> float:
        """Share of the expected tiles done, in [0, 1] (the estimate may be short: capped)."""
        return min(1.0, self.tiles_done / self.expected_tiles)

    def check(self) -> None:
        if self.cancelled:
            raise Superseded("a newer segmentation request replaced this one")


class WatchedBackend(Backend):
    """Delegates to ``inner``; counts tiles into ``job`` and stops a cancelled job.

    The widget runs one job at a time and sets ``job`` before starting it, so the counter
    is never shared between two segmentations.
    """

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.tile = inner.tile
        self.n_classes = inner.n_classes
        self.class_names = tuple(inner.class_names)
        self.max_batch = inner.max_batch
        self.normalization = inner.normalization
        self.precision = inner.precision
        self.device = inner.device
        self.pixel_size_m = inner.pixel_size_m
        self.trained_on = inner.trained_on
        self.tile_sizes = inner.tile_sizes
        self.halo = inner.halo
        self.job: Job | None = None

    def use_tile(self, tile: int) -> None:
        self.inner.use_tile(tile)
        self.tile = self.inner.tile

    def _before(self) -> None:
        if self.job is not None:
            self.job.check()

    def _after(self, probs: np.ndarray) -> None:
        if self.job is not None:
            self.job.tiles_done += int(probs.shape[0])

    def infer(self, images: np.ndarray, ratio: np.ndarray) -> np.ndarray:
        self._before()
        probs = self.inner.infer(images, ratio)
        self._after(probs)
        return probs

    def infer_many(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[np.ndarray]:
        def checked() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for batch in batches:
                self._before()
                yield batch

        for probs in self.inner.infer_many(checked()):  # keeps the inner backend's overlap (TensorRT)
            self._after(probs)
            yield probs

    def close(self) -> None:
        self.inner.close()

    def describe(self) -> dict:
        return self.inner.describe()
