"""How a frame's ratio reaches the model: the ratio strategies the Segmenter calls.

A strategy turns the frame's ratio (or none) into a `Plan` for the main pass: the ratio
each tile is fed, and optional per-class weights applied when rows are finished. Some
strategies need a ratio-free look at the frame first; a `Survey` runs those first passes
lazily, at most once per frame, so ``ratio="auto"`` followed by the local mode costs one
extra pass, not two.

- ``global``: the frame ratio to every tile (what the PLM was trained with).
- ``local``: each tile its share of the frame ratio, from the ratio-free pass's tile
  estimates fitted (Sinkhorn) so their area-weighted total is the frame ratio.
- ``calibrate``: the frame ratio to every tile (as global), then the class priors shifted
  (`phaseedge.ratio.prior_shift`) so the predicted fractions match the ratio, the shift
  estimated on a strided pixel sample of tiles covering about CALIBRATE_PIXELS, run with that ratio.
  The one prior-shift calibration of phaseedge: `phaseedge-train eval --calibrate` uses it too.
- ``none``: the ratio is ignored.

`resolve` turns what the user gave (a vector, None, ``"auto"``, or a `phaseedge.ratio.Partial`
such as ``{"martensite": 0.1, "rest": "auto"}``) into the frame ratio and its source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from phaseedge import ratio as ratio_mod
from phaseedge.backends import Backend
from phaseedge.stitch import stream_tiles
from phaseedge.tiling import TileGrid

RATIO_MODES = ("global", "local", "calibrate", "none")
#: ``ratio="auto"``: estimate the frame's fractions with a ratio-free pass, then use them as the ratio
AUTO = "auto"
#: tile pixels the calibrate mode's first pass looks at (whole tiles, evenly spread over the grid):
#: 32 tiles of 128², 8 of 256², 1 of 1056² — a fixed cost, not a share of the frame
CALIBRATE_PIXELS = 1 << 19
#: pixel stride inside each of those tiles when sampling probabilities for the prior shift
CALIBRATE_STRIDE = 4


@dataclass(frozen=True)
class Plan:
    """What the main pass feeds: tile ratios [N, n] float32 and optional class weights [n]."""

    tile_ratios: np.ndarray
    class_weights: np.ndarray | None = None


def tile_share(probs: np.ndarray) -> np.ndarray:
    """Each class's share of one tile's pixels from its probabilities [n, h, w]: the mean probability
    (scripts/hard_count_auto.py measured argmax counts instead: no better)."""
    return probs.mean(axis=(1, 2), dtype=np.float64)


class Survey:
    """Ratio-free first passes over one prepared frame, each run at most once."""

    def __init__(self, backend: Backend, frame: np.ndarray, lo: float, hi: float, grid: TileGrid,
                 batch_size: int, timings: dict[str, float], tta: str | None = None) -> None:
        self.backend, self.frame, self.lo, self.hi, self.grid = backend, frame, lo, hi, grid
        self.batch_size, self.timings, self.tta = batch_size, timings, tta
        self._fractions: np.ndarray | None = None
        self._samples: dict[bytes | None, np.ndarray] = {}

    def zeros(self, k: int) -> np.ndarray:
        return np.zeros((k, self.backend.n_classes), np.float32)

    def tile_fractions(self) -> np.ndarray:
        """Mean ratio-free probability of each class over each tile's in-frame pixels, [N, n]."""
        if self._fractions is None:
            g, (h, w) = self.grid, self.frame.shape
            out = np.empty((g.n_tiles, self.backend.n_classes), np.float64)
            for sl, probs in stream_tiles(self.backend, self.frame, self.lo, self.hi, g.origins,
                                          self.zeros(g.n_tiles), g.batches(self.batch_size),
                                          self.timings, self.tta):
                for k, (y, x) in zip(range(sl.start, sl.stop), g.origins[sl]):
                    out[k] = tile_share(probs[k - sl.start, :, : h - y, : w - x])
            self._fractions = out
        return self._fractions

    def frame_fractions(self) -> np.ndarray:
        """The frame's ratio-free fractions: tile estimates weighted by the area each tile owns."""
        area = self.grid.owned_area().astype(np.float64)
        return (self.tile_fractions() * area[:, None]).sum(axis=0) / area.sum()

    def probability_sample(self, ratio: np.ndarray | None = None) -> np.ndarray:
        """Probabilities of a strided pixel sample from tiles covering about CALIBRATE_PIXELS, each fed
        ``ratio`` (None: ratio-free), class axis first ([n, m]): what the prior shift is estimated on."""
        key = None if ratio is None else np.asarray(ratio, np.float32).tobytes()
        if key not in self._samples:
            g, (h, w) = self.grid, self.frame.shape
            k = min(g.n_tiles, max(1, -(-CALIBRATE_PIXELS // (g.tile * g.tile))))
            pick = np.unique(np.round(np.linspace(0, g.n_tiles - 1, k)).astype(int))
            sub = np.ascontiguousarray(g.origins[pick])
            bs = self.batch_size
            batches = [slice(i, min(i + bs, len(sub))) for i in range(0, len(sub), bs)]
            fed = self.zeros(len(sub))
            if ratio is not None:
                fed[:] = ratio
            s, parts = CALIBRATE_STRIDE, []
            for sl, probs in stream_tiles(self.backend, self.frame, self.lo, self.hi, sub, fed, batches,
                                          self.timings, self.tta):
                for b, (y, x) in enumerate(sub[sl]):
                    parts.append(probs[b, :, : h - y: s, : w - x: s].reshape(probs.shape[1], -1).astype(np.float32))
            self._samples[key] = np.concatenate(parts, axis=1)
        return self._samples[key]


def resolve(spec: np.ndarray | str | ratio_mod.Partial | None, survey: Survey) -> tuple[np.ndarray | None, str | None]:
    """The frame ratio and where it came from: "given", "auto", "partial" or None (no ratio)."""
    if spec is None:
        return None, None
    n = survey.backend.n_classes
    if isinstance(spec, str):  # AUTO, checked by the Segmenter
        return ratio_mod.validate(survey.frame_fractions(), n), "auto"
    if isinstance(spec, ratio_mod.Partial):
        return spec.complete(survey.frame_fractions()), "partial"
    return spec, "given"


def _global(r: np.ndarray, survey: Survey) -> Plan:
    return Plan(np.ascontiguousarray(np.broadcast_to(r, (survey.grid.n_tiles, r.size)), np.float32))


def _local(r: np.ndarray, survey: Survey) -> Plan:
    return Plan(local_ratios(survey.tile_fractions(), survey.grid.owned_area(), r))


def _calibrate(r: np.ndarray, survey: Survey) -> Plan:
    fed = _global(r, survey)  # a PLM still gets the ratio; the shift corrects what it then predicts
    shift = ratio_mod.prior_shift(survey.probability_sample(r), r)
    return Plan(fed.tile_ratios, np.exp(shift - shift.max()).astype(np.float32))


def _none(r: np.ndarray | None, survey: Survey) -> Plan:
    return Plan(survey.zeros(survey.grid.n_tiles))


STRATEGIES: dict[str, Callable[..., Plan]] = {"global": _global, "local": _local, "calibrate": _calibrate,
                                               "none": _none}


def plan(mode: str, r: np.ndarray | None, survey: Survey) -> Plan:
    """The main pass's plan for ratio ``r`` (None: no ratio, every mode is one ratio-free pass)."""
    if mode not in STRATEGIES:
        raise ValueError(f"ratio_mode must be one of {', '.join(RATIO_MODES)}, got {mode!r}")
    return STRATEGIES["none" if r is None else mode](r, survey)


def local_ratios(tile_fractions: np.ndarray, area: np.ndarray, ratio: np.ndarray, steps: int = 100,
                 floor: float = 1e-4) -> np.ndarray:
    """Per-tile ratios [N, n] float32 close to each tile's own estimate whose area-weighted
    total equals ``ratio``: iterative proportional fitting (Sinkhorn) of the tile x class
    matrix to row sums = tile areas and column sums = ratio x frame area.

    ``floor`` keeps a class the first pass missed reachable when the expert says it is there.
    """
    f = np.maximum(np.asarray(tile_fractions, np.float64), floor)
    a = np.maximum(np.asarray(area, np.float64), 1.0)
    a = a / a.sum()
    target = np.asarray(ratio, np.float64)
    m = f / f.sum(axis=1, keepdims=True) * a[:, None]
    for _ in range(steps):
        col = m.sum(axis=0)
        m *= np.divide(target, col, out=np.zeros_like(col), where=col > 0)
        m *= (a / m.sum(axis=1))[:, None]
    out = m / m.sum(axis=1, keepdims=True)
    return out.astype(np.float32)
