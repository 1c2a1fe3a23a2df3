"""Where the tiles go, how they are blended, and which rows can be finished when.

The grid covers any frame: steps are spread so the last tile ends exactly at the
border (nnU-Net), a frame smaller than the tile gets one tile whose outside part is
mirrored by `phaseedge.hostops.gather_tiles` and cropped away by stitching.

Tiles are visited in row-major order and grouped into batches; a batch never mixes a
partial tile row with another row, so when a batch has been stitched every row above
the next tile row is final. The Segmenter finishes those rows at once and reuses the
band buffer: stitching memory is about (band height) x width x n_classes floats, with
band height = tile for wide frames, instead of a full-frame probability buffer.

`plan` decides a frame's tiling. A fixed-tile model (SAM) is cut into its own tile with a
fractional overlap (DEFAULT_OVERLAP) and Gaussian blending. A fully convolutional model
(`Backend.tile_sizes`) with a measured halo (the distance from a tile border beyond which
its predictions stop changing, `phaseedge-export halo`) gets the allowed tile that makes the
model compute the fewest pixels for this frame, neighbours sharing 2 x halo pixels, and
centre-crop blending, so every pixel comes from a tile in which it lies at least halo pixels
from the border: the overlap costs what the border effect needs, not a fraction of the tile.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from phaseedge.hostops import gaussian_1d, owned_intervals

BLENDS = ("gaussian", "center")
#: nnU-Net / MONAI Gaussian: sigma = tile / 8, floored so edge pixels keep some weight
SIGMA_SCALE = 0.125
MIN_WEIGHT = 1e-3
#: overlap fraction of models without a measured halo (fixed-tile models such as SAM)
DEFAULT_OVERLAP = 0.25
#: at most this many pixels per backend call (at least one tile): big tiles go one or a few at a
#: time, which bounds host/device memory and keeps progress reports frequent
MAX_BATCH_PIXELS = 1 << 20
#: the largest tile `plan` picks by itself (about 1448 x 1448): one 2048 x 2048 tile of the bundled
#: model needs 2.6 GB of host memory and its first run is slow to allocate (docs/tiling.md)
MAX_TILE_PIXELS = 1 << 21


def validate_overlap(overlap: float) -> float:
    """Overlap is a fraction of the tile shared by neighbours, in [0, 1)."""
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float, np.floating, np.integer)):
        raise TypeError(f"overlap must be a number in [0, 1), got {type(overlap).__name__}")
    overlap = float(overlap)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return overlap


def validate_spacing(overlap: float | None, halo: int | None) -> tuple[float | None, int | None]:
    """What the caller fixed of the tiles' spacing: an overlap fraction or a halo in pixels (or
    neither: the model's default), checked once for `Segmenter` (at construction) and `plan`."""
    if overlap is not None and halo is not None:
        raise ValueError("give overlap (a fraction of the tile) or halo (pixels), not both")
    if halo is not None and (isinstance(halo, bool) or not isinstance(halo, (int, np.integer)) or halo < 0):
        raise ValueError(f"halo must be a whole number of pixels >= 0 or None, got {halo!r}")
    return (None if overlap is None else validate_overlap(overlap)), (None if halo is None else int(halo))


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
    max_step = max(1.0, round(tile * (1.0 - overlap), 9))  # 1000 * (1 - 64/1000) is 936, not 935.999...
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


def batch_size(requested: int | None, max_batch: int, tile: int) -> int:
    """Tiles per backend call: what was asked (default: the backend's maximum), at most
    MAX_BATCH_PIXELS pixels, at least one tile."""
    return max(1, min(requested or max_batch, max_batch, MAX_BATCH_PIXELS // (tile * tile)))


def choose_tile(height: int, width: int, sizes: Sequence[int], overlap_px: int) -> int:
    """The allowed tile side that makes the model compute the fewest pixels for this frame
    when neighbours share ``overlap_px`` pixels (ties: the smaller tile, less memory)."""
    best, best_cost = None, None
    for t in sizes:
        if overlap_px >= t:
            continue
        cost = len(tile_starts(height, t, overlap_px / t)) * len(tile_starts(width, t, overlap_px / t)) * t * t
        if best_cost is None or cost < best_cost:
            best, best_cost = t, cost
    if best is None:
        raise ValueError(f"an overlap of {overlap_px} px needs tiles of more than {overlap_px} px; "
                         f"this model takes at most {max(sizes)}")
    return int(best)


def plan(height: int, width: int, sizes: Sequence[int], model_halo: int | None, tile: int | None = None,
         overlap: float | None = None, halo: int | None = None, blend: str | None = None) -> tuple[TileGrid, str]:
    """The frame's tile grid and blend, from what the caller fixed (``tile``, ``overlap`` fraction
    or ``halo`` pixels, ``blend``; None: the default) and what the model allows (``sizes``, the
    tile sides it takes, the training tile first) and measured (``model_halo``). A halo (given or
    measured) picks the tile (`choose_tile`, among sizes up to MAX_TILE_PIXELS) unless ``tile`` is
    given; an overlap fraction keeps
    the training tile, as fixed-tile models always do. Whether the model takes ``tile`` is
    `Backend.use_tile`'s check."""
    overlap, halo = validate_spacing(overlap, halo)
    if overlap is None and halo is None:
        halo = model_halo
    if halo is not None:
        fits = [t for t in sizes if t * t <= MAX_TILE_PIXELS] or [min(sizes)]
        chosen = tile or choose_tile(height, width, fits, 2 * halo)
        if 2 * halo >= chosen:
            raise ValueError(f"halo {halo} px leaves nothing of a {chosen} px tile (need 2 x halo < tile)")
        fraction, default_blend = 2 * halo / chosen, "center"
    else:
        fraction = DEFAULT_OVERLAP if overlap is None else overlap
        chosen, default_blend = tile or sizes[0], "gaussian"  # a fraction of the training tile, as before
    return TileGrid.for_frame(height, width, chosen, fraction), validate_blend(blend or default_blend)
