"""Where the tiles go, how they are blended, and which rows can be finished when.

The grid covers any frame: steps are spread so the last tile ends exactly at the
border (nnU-Net), a frame smaller than the tile gets one tile whose outside part is
mirrored by `phaseedge.hostops.gather_tiles` and cropped away by stitching.

Tiles are visited in row-major order and grouped into batches; a batch never mixes a
partial tile row with another row, so when a batch has been stitched every row above
the next tile row is final. The Segmenter finishes those rows at once and reuses the
band buffer: stitching memory is about (band height) x width x n_classes floats, with
band height = tile for wide frames, instead of a full-frame probability buffer.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from phaseedge.hostops import gaussian_1d, owned_intervals

BLENDS = ("gaussian", "center")
#: nnU-Net / MONAI Gaussian: sigma = tile / 8, floored so edge pixels keep some weight
SIGMA_SCALE = 0.125
MIN_WEIGHT = 1e-3


def validate_overlap(overlap: float) -> float:
    """Overlap is a fraction of the tile shared by neighbours, in [0, 1)."""
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float, np.floating, np.integer)):
        raise TypeError(f"overlap must be a number in [0, 1), got {type(overlap).__name__}")
    overlap = float(overlap)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return overlap


def validate_blend(blend: str) -> str:
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    return blend


def tile_starts(length: int, tile: int, overlap: float) -> np.ndarray:
    """Start offsets along one axis: first at 0, last ending at ``length``, steps at most
    ``tile * (1 - overlap)`` and spread evenly. A length <= tile gives the single start 0."""
    overlap = validate_overlap(overlap)
    if length < 1 or tile < 1:
        raise ValueError(f"length and tile must be >= 1, got {length} and {tile}")
    if length <= tile:
        return np.zeros(1, dtype=np.int64)
    max_step = max(1.0, tile * (1.0 - overlap))
    n = math.ceil((length - tile) / max_step) + 1
    return np.round(np.linspace(0, length - tile, n)).astype(np.int64)


@dataclass(frozen=True)
class TileGrid:
    """Tile origins for one frame, plus the batching and band bookkeeping."""

    height: int
    width: int
    tile: int
    overlap: float
    ys: np.ndarray  # int64 [rows] tile row starts
    xs: np.ndarray  # int64 [cols] tile column starts

    @classmethod
    def for_frame(cls, height: int, width: int, tile: int, overlap: float) -> TileGrid:
        return cls(height, width, tile, validate_overlap(overlap),
                   tile_starts(height, tile, overlap), tile_starts(width, tile, overlap))

    @property
    def n_tiles(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def origins(self) -> np.ndarray:
        """int64 [N, 2] (y, x) in row-major order; tile k is in tile row k // len(xs)."""
        yy, xx = np.meshgrid(self.ys, self.xs, indexing="ij")
        return np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.int64)

    def windows(self, blend: str) -> tuple[np.ndarray, np.ndarray]:
        """Separable blend weights: wy float32 [rows, T] per tile row, wx [cols, T] per tile column.

        "gaussian": the same Gaussian for every tile (smooth seams); "center": 0/1 owned
        intervals, each pixel taken from the one tile whose centre is nearest (centre crop).
        """
        validate_blend(blend)
        if blend == "gaussian":
            g = gaussian_1d(self.tile, SIGMA_SCALE, MIN_WEIGHT)
            return (np.repeat(g[None], len(self.ys), axis=0), np.repeat(g[None], len(self.xs), axis=0))
        return (owned_intervals(self.ys, self.tile, self.height).astype(np.float32),
                owned_intervals(self.xs, self.tile, self.width).astype(np.float32))

    def owned_area(self) -> np.ndarray:
        """float64 [N]: pixels each tile owns under centre-crop ownership (they sum to H*W).
        Used to weight per-tile estimates into a frame estimate."""
        ay = owned_intervals(self.ys, self.tile, self.height).sum(axis=1, dtype=np.float64)
        ax = owned_intervals(self.xs, self.tile, self.width).sum(axis=1, dtype=np.float64)
        return np.outer(ay, ax).ravel()

    def batches(self, batch_size: int) -> list[slice]:
        """Consecutive tile ranges of at most ``batch_size`` tiles.

        A row wider than a batch is split into balanced batches (sizes differ by at most
        one, so no tiny trailing batch); narrower rows are packed whole, several per batch.
        Either way a batch ends at a row boundary or inside a single row.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        cols, rows = len(self.xs), len(self.ys)
        out: list[slice] = []
        if cols >= batch_size:
            k = math.ceil(cols / batch_size)
            cuts = np.round(np.linspace(0, cols, k + 1)).astype(int)
            for r in range(rows):
                out += [slice(r * cols + int(a), r * cols + int(b)) for a, b in itertools.pairwise(cuts)]
        else:
            per = batch_size // cols
            for r in range(0, rows, per):
                out.append(slice(r * cols, min(rows, r + per) * cols))
        return out

    def band_height(self, batches: list[slice]) -> int:
        """Rows the stitch band must hold: from a batch's first tile row to its last tile's end."""
        cols = len(self.xs)
        need = max(int(self.ys[(b.stop - 1) // cols] - self.ys[b.start // cols]) + self.tile for b in batches)
        return min(need, self.height)

    def final_row_after(self, tile_stop: int) -> int:
        """First frame row not yet final once tiles [0, tile_stop) are stitched."""
        cols = len(self.xs)
        next_row = tile_stop // cols  # tile row of the next tile to come
        return self.height if next_row >= len(self.ys) else int(self.ys[next_row])
