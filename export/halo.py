"""How far from a tile border a fully convolutional model's predictions still change.

A tile's border pixels see zero padding where the frame has more microstructure, so their
probabilities differ from what the model says with the whole frame around them; far enough
inside a tile they no longer do. That distance (the effective receptive field, much smaller
than the theoretical one) is the *halo* the runtime keeps around every pixel it takes from a
tile (`phaseedge.tiling.plan`): neighbouring tiles share 2 x halo pixels, and centre-crop
blending takes each pixel from a tile in which it lies at least halo pixels from the border.

Measured on synthetic frames (`phaseedge.synth`): a tile is cut from the middle of a much
larger context, both are run, and at each distance d from the tile's border we record the mean
|dp| (largest over classes) and the share of pixels whose argmax differs from the context's.

* With the tile's origin a multiple of the pooling factor (2**depth) from the context's, that
  difference is the border effect alone: it falls to exactly 0 at the theoretical field.
* Shifted by a non-multiple, the pooling grid moves and a U-Net's predictions change a little
  everywhere (it is not shift-equivariant): the *shift floor*, which no overlap removes, and
  which neighbouring tiles show anyway, since their origins are not aligned either.

The halo is the smallest distance from which on the border effect (averaged over the next 5
distances) is below SHARE of the shift floor (and EPS), for both statistics: beyond it the tile
border changes fewer predictions than moving the tile by a few pixels does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phaseedge import names, synth
from phaseedge import sidecar as sidecar_mod
from phaseedge.normalize import apply, frame_range

#: the border effect must fall below this share of the shift floor
SHARE = 0.5
#: below this a difference is float rounding (the float16 output's step near 0.5 is 4.9e-4 per pixel)
EPS = 1e-4
#: synthetic frames the halo is measured on (no training, validation, demo or test seed)
SEEDS = (41, 42, 43)
_SMOOTH = 5

Run = Callable[[np.ndarray], np.ndarray]  # float16 [1, 1, S, S] -> probs [1, n, S, S]


@dataclass(frozen=True)
class HaloProfile:
    """Border effect per distance from the tile border, the shift floor, and the halo they give."""

    tile: int  # side of the measured tiles
    margin: int  # context around each tile, pixels per side
    seeds: tuple[int, ...]
    mean_abs: np.ndarray  # [tile // 2] mean |dp| at each distance, aligned tiles (border effect)
    flips: np.ndarray  # [tile // 2] share of argmax changes at each distance, aligned tiles
    floor_mean_abs: float  # shifted tiles, tile interior (d >= tile / 4)
    floor_flips: float
    halo: int

    def summary(self) -> dict[str, Any]:
        """What the sidecar keeps (``source["halo"]``) and the docs quote."""
        at = {str(d): [round(float(self.mean_abs[d]), 5), round(float(self.flips[d]), 5)]
              for d in (0, 4, 8, 16, 24, 32, 48, 64) if d < len(self.mean_abs)}
        return {"halo": self.halo, "method": f"border effect (next {_SMOOTH} distances) < {SHARE} x shift floor "
                                             "(phaseedge.export.halo)",
                "tile": self.tile, "margin": self.margin, "synthetic_seeds": list(self.seeds),
                "floor_mean_abs": round(self.floor_mean_abs, 5), "floor_flips": round(self.floor_flips, 5),
                "mean_abs_flips_at_distance": at}


def _distance(t: int) -> np.ndarray:
    i = np.arange(t)
    d = np.minimum(i, t - 1 - i)
    return np.minimum(d[:, None], d[None, :])


def _profile(run: Run, frames: Sequence[np.ndarray], tile: int, margin: int, shifts: Sequence[int]
             ) -> tuple[np.ndarray, np.ndarray]:
    """Mean |dp| and argmax-change share per distance from the border, over frames and shifts."""
    dist = _distance(tile).ravel()
    half = tile // 2
    counts = np.bincount(dist, minlength=half)
    diff_sum, flip_sum = np.zeros(half), np.zeros(half)
    for x in frames:
        ctx = run(x)[0].astype(np.float32)
        for s in shifts:
            o = margin + s
            p = run(np.ascontiguousarray(x[:, :, o:o + tile, o:o + tile]))[0].astype(np.float32)
            q = ctx[:, o:o + tile, o:o + tile]
            diff_sum += np.bincount(dist, np.abs(p - q).max(axis=0).ravel(), minlength=half)
            flip_sum += np.bincount(dist, (p.argmax(0) != q.argmax(0)).ravel().astype(np.float64), minlength=half)
    n = counts * len(frames) * len(shifts)
    return diff_sum / n, flip_sum / n


def measure(run: Run, n_classes: int, train_tile: int, multiple: int, seeds: Sequence[int] = SEEDS) -> HaloProfile:
    """The halo of the model behind ``run`` (trained at ``train_tile``, tiles multiples of ``multiple``):
    tiles of 2 x train_tile, each in a context 1.5 x train_tile wider on every side."""
    tile = 2 * train_tile
    margin = -(-3 * train_tile // (2 * multiple)) * multiple
    side = tile + 2 * margin + 4 * multiple
    frames = []
    for seed in seeds:
        img, _ = synth.micrograph((side, side), n_phases=min(n_classes, 4), seed=seed)
        lo, hi = frame_range(img)
        frames.append(np.ascontiguousarray(apply(img, lo, hi, np.float16)[None, None]))
    aligned = [k * multiple for k in range(4)]
    # shifts whose remainders move the pooling grid at the first level and deeper (tile origins are arbitrary)
    residues = sorted({r for r in (1, multiple // 4 + 1, multiple // 2, 3 * multiple // 4 + 1) if 0 < r < multiple})
    mean_abs, flips = _profile(run, frames, tile, margin, aligned)
    floor_mean = floor_flips = 0.0
    if residues:
        smean, sflips = _profile(run, frames, tile, margin, [k * multiple + r for k, r in enumerate(residues)])
        inner = slice(tile // 4, None)
        floor_mean, floor_flips = float(smean[inner].mean()), float(sflips[inner].mean())
    if mean_abs[-_SMOOTH:].max() > max(SHARE * floor_mean, EPS):
        raise RuntimeError(f"the border effect reaches the middle of {tile}-pixel tiles: measure with larger ones")
    ahead = np.ones(_SMOOTH) / _SMOOTH  # mean over distances d .. d + 4
    above = ((np.convolve(mean_abs, ahead, mode="valid") > max(SHARE * floor_mean, EPS))
             | (np.convolve(flips, ahead, mode="valid") > max(SHARE * floor_flips, EPS)))
    halo = int(np.nonzero(above)[0].max()) + 1 if above.any() else 0
    return HaloProfile(tile, margin, tuple(seeds), mean_abs, flips, floor_mean, floor_flips, halo)


def onnx_runner(path: str | Path, threads: int | None = None) -> Run:
    """``run`` for an ONNX graph that takes any tile size (ONNX Runtime on the CPU, ratio unknown)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    n = next(i for i in session.get_inputs() if i.name == names.RATIO).shape[1]

    def run(image: np.ndarray) -> np.ndarray:
        return session.run([names.PROBS], {names.IMAGE: image, names.RATIO: np.zeros((1, n), np.float32)})[0]

    return run


def record(path: str | Path, seeds: Sequence[int] = SEEDS, threads: int | None = None, log=print) -> HaloProfile:
    """Measure the halo of the ONNX graph at ``path`` (one that takes any tile size) and write it
    into its sidecar (``halo``, details under ``source["halo"]``), the runtime's default from then on."""
    sc = sidecar_mod.load(path)
    if sc.tile_multiple is None:
        raise ValueError(f"{Path(path).name} takes only {sc.tile}-pixel tiles: it keeps its fractional overlap "
                         "(export it with dynamic tile sizes first: phaseedge-export dynamic)")
    profile = measure(onnx_runner(path, threads), sc.n_classes, sc.tile, sc.tile_multiple, seeds)
    sidecar_mod.write(dataclasses.replace(sc, halo=profile.halo, source={**sc.source, "halo": profile.summary()}),
                      path)
    log(f"halo {profile.halo} px: beyond it the tile border moves mean |dprobs| / argmax less than "
        f"{SHARE} x a few-pixel shift does ({profile.floor_mean_abs:.2e} / {profile.floor_flips:.2%}); "
        f"at the border itself {profile.mean_abs[0]:.3f} / {profile.flips[0]:.1%}")
    return profile
