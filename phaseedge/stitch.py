"""Tiles through a backend and back into a frame: the streaming half of the Segmenter.

`stream_tiles` cuts and normalises each batch of tiles while the backend works on the
previous one; `stitch` blends each batch of tile probabilities into a band of rows and
finishes rows (labels, counts, optional probabilities) as soon as no later tile touches
them, so memory is a band, not the frame. Both take the host-op implementation as an
argument, so `phaseedge-bench host` times exactly this code with either implementation.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from contextlib import closing
from types import ModuleType

import numpy as np

from phaseedge import hostops
from phaseedge import tta as tta_mod
from phaseedge.backends import Backend
from phaseedge.tiling import TileGrid

#: rotating tile buffers: a backend may pull batch k+1 (and k+2 while copying) before returning k
N_BUFFERS = 3

TileProbs = Iterator[tuple[slice, np.ndarray]]


def stream_tiles(backend: Backend, frame: np.ndarray, lo: float, hi: float, origins: np.ndarray,
                 ratios: np.ndarray, batches: list[slice], timings: dict[str, float],
                 tta: str | None = None) -> TileProbs:
    """(batch, probs) for each batch, in order. ``timings["tiles"]`` gains the time spent
    cutting tiles, ``timings["infer"]`` the time spent waiting for the backend (measured
    around each result, less the tile cutting the backend pulled meanwhile)."""
    t = backend.tile
    biggest = max(b.stop - b.start for b in batches)
    bufs = [np.empty((biggest, 1, t, t), np.float16) for _ in range(min(N_BUFFERS, len(batches)))]
    in_flight: deque[slice] = deque()

    def feed() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for k, sl in enumerate(batches):
            t0 = time.perf_counter()
            buf = bufs[k % len(bufs)][: sl.stop - sl.start]
            hostops.gather_tiles(frame, origins[sl], t, lo, hi, buf)
            in_flight.append(sl)
            timings["tiles"] = timings.get("tiles", 0.0) + time.perf_counter() - t0
            yield buf, ratios[sl]

    # closed explicitly: a backend may hold its device pipeline (and lock) until its
    # iterator ends, which must not wait for garbage collection after an error
    results = tta_mod.infer(backend, feed(), tta) if tta else backend.infer_many(feed())
    with closing(results):
        while True:
            t0, cut0 = time.perf_counter(), timings.get("tiles", 0.0)
            probs = next(results, None)
            timings["infer"] = (timings.get("infer", 0.0) + time.perf_counter() - t0
                                - (timings.get("tiles", 0.0) - cut0))
            if probs is None:
                return
            sl = in_flight.popleft()
            if probs.shape != (sl.stop - sl.start, backend.n_classes, t, t):
                raise RuntimeError(f"backend {backend.name} returned shape {probs.shape} for a batch of "
                                   f"{sl.stop - sl.start} tiles")
            yield sl, np.ascontiguousarray(probs)


def stitch(tiles: TileProbs, grid: TileGrid, batches: list[slice], blend: str, n_classes: int,
           shape: tuple[int, int], class_weights: np.ndarray | None, want_probs: bool,
           timings: dict[str, float], ops: ModuleType = hostops) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Blend all tiles into a row band; returns (labels uint8 [H,W], counts int64 [n],
    probabilities float32 [n,H,W] or None). ``timings`` gains "stitch" and "finish"."""
    h, w = shape
    wy_rows, wx_cols = grid.windows(blend)
    band = grid.band_height(batches)
    acc = np.zeros((n_classes, band, w), np.float32)
    wsum = np.zeros((band, w), np.float32)
    labels = np.empty((h, w), np.uint8)
    counts = np.zeros(n_classes, np.int64)
    probs_out = np.empty((n_classes, h, w), np.float32) if want_probs else None
    origins = grid.origins
    cols = len(grid.xs)
    top = 0  # frame row held in acc[:, 0]
    with closing(tiles):
        for sl, probs in tiles:
            t0 = time.perf_counter()
            idx = np.arange(sl.start, sl.stop)
            rel = origins[sl].copy()
            rel[:, 0] -= top
            ops.accumulate(acc, wsum, probs, rel, np.ascontiguousarray(wy_rows[idx // cols]),
                           np.ascontiguousarray(wx_cols[idx % cols]))
            t1 = time.perf_counter()
            timings["stitch"] = timings.get("stitch", 0.0) + t1 - t0
            done = grid.final_row_after(sl.stop)
            if done > top:
                rows = done - top
                ops.finish(acc, wsum, rows, labels[top:done], counts, class_weights,
                           None if probs_out is None else probs_out[:, top:done])
                shift_band(acc, wsum, rows)
                top = done
                timings["finish"] = timings.get("finish", 0.0) + time.perf_counter() - t1
    return labels, counts, probs_out


def shift_band(acc: np.ndarray, wsum: np.ndarray, rows: int) -> None:
    """Drop the first ``rows`` finished rows of the band and zero the freed rows at its end.
    Copied in chunks of ``rows`` so source and destination never overlap (no temporary)."""
    band = wsum.shape[0]
    keep = band - rows
    for s in range(0, keep, rows):
        e = min(s + rows, keep)
        acc[:, s:e] = acc[:, s + rows: e + rows]
        wsum[s:e] = wsum[s + rows: e + rows]
    acc[:, keep:] = 0.0
    wsum[keep:] = 0.0
