"""What one segmented frame gives back, and how to draw it."""

from __future__ import annotations

import copy
import functools
import itertools
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from phaseedge.metrics import fractions_from_counts

#: distinct, colour-blind-friendly-ish colours (Okabe-Ito first), RGB
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
    (213, 94, 0), (204, 121, 167), (120, 120, 120), (153, 0, 0), (0, 0, 128),
)


_OVERLAY_ROWS = 512
#: the frame is cut into CELLS x CELLS sub-fields for the fraction's standard error. 3 x 3 measured
#: best (docs/benchmarks.md, `phaseedge-bench coverage`): smaller cells are correlated with their
#: neighbours (grains span them) and understate the spread; 16 row bands covered 0.67 of 0.95
UNCERTAINTY_CELLS = 3


@functools.lru_cache(maxsize=64)
def t_quantile(p: float, dof: int) -> float:
    """Student-t quantile for 0.5 < p < 1 (numerical CDF + bisection: no scipy in the runtime)."""
    logc = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)

    def cdf(x: float) -> float:
        t = np.linspace(0.0, x, 2001)
        pdf = np.exp(logc - (dof + 1) / 2 * np.log1p(t * t / dof))
        return 0.5 + float(np.sum((pdf[1:] + pdf[:-1]) * 0.5 * np.diff(t)))

    lo, hi = 0.0, 1000.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return 0.5 * (lo + hi)


def palette(n: int) -> np.ndarray:
    """uint8 [n, 3] RGB colours; beyond the fixed list, evenly spaced hues."""
    import cv2

    colours = list(PALETTE[:n])
    for i in range(len(colours), n):
        hsv = np.uint8([[[int(180 * i / n), 200, 230]]])
        colours.append(tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]))
    return np.array(colours, dtype=np.uint8).reshape(n, 3)


@dataclass
class Result:
    """Segmentation of one frame.

    labels: uint8 [H, W] class indices; fractions: class name -> pixel fraction (sums to 1);
    probabilities: float32 [n, H, W] when asked for. timings, in seconds: prepare (check +
    normalisation range), survey (first pass of the local/calibrate modes), tiles (cutting
    and normalising tiles, all passes), infer (backend, main pass), stitch (blending),
    finish (labels and counts of finished rows), total.
    """

    labels: np.ndarray
    fractions: dict[str, float]
    class_names: tuple[str, ...]
    counts: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    probabilities: np.ndarray | None = None
    ratio: np.ndarray | None = None
    ratio_mode: str = "global"
    backend: str = ""
    ratio_source: str | None = None  # "given", "auto" (estimated by the model), "partial" (named + estimated), None
    # fraction_uncertainty() by its arguments: the CLI's JSON and overlay legend ask for it twice;
    # not an init field, so dataclasses.replace (within) starts a fresh one
    _uncertainty: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def fraction_vector(self) -> np.ndarray:
        """float64 [n] fractions in class order."""
        return np.array([self.fractions[c] for c in self.class_names], dtype=np.float64)

    def fraction_uncertainty(self, cells: int = UNCERTAINTY_CELLS, level: float = 0.95) -> dict[str, dict[str, float]]:
        """Per phase: the standard error and ``level`` interval of its fraction, as for a
        point count over sub-fields (stereology): the frame is cut into ``cells`` x ``cells``
        sub-fields, the fraction's standard error is that of a ratio estimate over them, and the
        interval is Student-t with (sub-fields - 1) degrees of freedom — how much the fraction
        would move on another, similar field of view. Pixels outside a region of interest
        (label 255) are left out. With probabilities, ``soft`` is the expected fraction (mean
        probability) beside the argmax count.
        """
        key = (int(cells), float(level))
        if key not in self._uncertainty:
            self._uncertainty[key] = self._fraction_uncertainty(*key)
        return copy.deepcopy(self._uncertainty[key])

    def _fraction_uncertainty(self, cells: int, level: float) -> dict[str, dict[str, float]]:
        from phaseedge.outputs import EXCLUDED

        if not 0 < level < 1:
            raise ValueError(f"level must lie in (0, 1), got {level!r}")
        n = len(self.class_names)
        h, w = self.labels.shape
        ky, kx = max(1, min(int(cells), h)), max(1, min(int(cells), w))
        ey, ex = (np.linspace(0, m, k + 1).round().astype(int) for m, k in ((h, ky), (w, kx)))
        # EXCLUDED (255) lands in bincount's last slot, outside [:n]
        per = np.stack([np.bincount(self.labels[a:b, c:d].ravel(), minlength=256)[:n]
                        for a, b in itertools.pairwise(ey) for c, d in itertools.pairwise(ex)]).astype(np.float64)
        totals = per.sum(axis=1)
        per, totals = per[totals > 0], totals[totals > 0]
        k = len(totals)
        frac = per.sum(axis=0) / max(totals.sum(), 1.0)
        if k > 1:  # ratio estimator over sub-fields of unequal valid area (cluster sampling)
            share = totals / totals.mean()
            resid = per / totals[:, None] - frac
            se = np.sqrt(((share[:, None] * resid) ** 2).sum(axis=0) / (k * (k - 1)))
            half = t_quantile((1 + level) / 2, k - 1) * se
        else:
            se = half = np.zeros(n)
        out = {c: {"fraction": self.fractions[c], "se": float(se[i]),
                   "low": float(max(0.0, frac[i] - half[i])), "high": float(min(1.0, frac[i] + half[i]))}
               for i, c in enumerate(self.class_names)}
        if self.probabilities is not None:
            inside = self.labels != EXCLUDED
            soft = self.probabilities[:, inside].mean(axis=1, dtype=np.float64) if inside.any() else np.zeros(n)
            for i, c in enumerate(self.class_names):
                out[c]["soft"] = float(soft[i])
        return out

    def within(self, roi: np.ndarray) -> Result:
        """This result restricted to a region of interest (bool [H, W], True = counted): pixels
        outside get label `phaseedge.outputs.EXCLUDED` and count for no phase."""
        from phaseedge.outputs import EXCLUDED

        roi = np.asarray(roi)
        if roi.shape != self.labels.shape:
            raise ValueError(f"region of interest {roi.shape} differs from the frame {self.labels.shape}")
        if roi.dtype != bool:
            raise TypeError(f"region of interest must be boolean (True = counted), got {roi.dtype}")
        if not roi.any():
            raise ValueError("the region of interest excludes every pixel")
        labels = np.where(roi, self.labels, np.uint8(EXCLUDED)).astype(np.uint8)
        counts = np.bincount(self.labels[roi].ravel(), minlength=len(self.class_names))[: len(self.class_names)]
        return replace(self, labels=labels, counts=counts.astype(np.int64),
                       fractions=dict(zip(self.class_names, fractions_from_counts(counts).tolist())))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (no arrays): what the CLI writes and adapters attach."""
        return {
            "fractions": dict(self.fractions),
            "fraction_uncertainty": self.fraction_uncertainty(),
            "class_names": list(self.class_names),
            "pixel_counts": {c: int(k) for c, k in zip(self.class_names, self.counts)},
            "shape": list(self.labels.shape),
            "ratio": None if self.ratio is None else [float(r) for r in self.ratio],
            "ratio_mode": self.ratio_mode,
            "ratio_source": self.ratio_source,
            "backend": self.backend,
            "timings": dict(self.timings),
        }

    def overlay(self, image: np.ndarray, alpha: float = 0.45, legend: bool = True) -> np.ndarray:
        """RGB uint8 [H, W, 3]: the grey frame with class colours blended in, plus a legend
        box (colour, name, fraction) in the top-left corner."""
        from phaseedge.normalize import apply, check_frame, frame_range

        frame = check_frame(image)
        if frame.shape != self.labels.shape:
            raise ValueError(f"image shape {frame.shape} differs from the labels' {self.labels.shape}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        lo, hi = frame_range(frame)
        colours = palette(len(self.class_names))
        table = np.zeros((256, 3), np.float32)  # label 255 (outside the ROI) stays plain grey
        table[: len(colours)] = colours
        weight = np.full(256, alpha, np.float32)
        weight[len(colours):] = 0.0
        out = np.empty((*frame.shape, 3), np.uint8)
        for y in range(0, frame.shape[0], _OVERLAY_ROWS):  # row chunks: small temporaries on huge frames
            lab = self.labels[y: y + _OVERLAY_ROWS]
            a = weight[lab][..., None]
            grey = apply(frame[y: y + _OVERLAY_ROWS], lo, hi)[..., None] * 255.0
            out[y: y + _OVERLAY_ROWS] = np.clip(table[lab] * a + grey * (1.0 - a) + 0.5, 0, 255).astype(np.uint8)
        if legend:
            unc = self.fraction_uncertainty()
            _draw_legend(out, self.class_names, self.fraction_vector, colours,
                         np.array([unc[c]["se"] for c in self.class_names]))
        return out


def _draw_legend(img: np.ndarray, names: tuple[str, ...], fractions: np.ndarray, colours: np.ndarray,
                 errors: np.ndarray) -> None:
    import cv2

    h, w = img.shape[:2]
    scale = max(0.35, min(h, w) / 1200)
    thick = max(1, round(scale * 1.5))
    line = int(28 * scale) + 6
    texts = [f"{n}  {100 * f:.1f}% +/- {100 * e:.1f}" for n, f, e in zip(names, fractions, errors)]
    tw = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0] for t in texts)
    box_w = min(w, tw + line + 16)
    box_h = min(h, line * len(texts) + 8)
    img[:box_h, :box_w] = (img[:box_h, :box_w] * 0.3).astype(np.uint8)
    for i, (t, c) in enumerate(zip(texts, colours)):
        y = 4 + i * line
        cv2.rectangle(img, (6, y + 3), (6 + line - 8, y + line - 5), tuple(int(v) for v in c), -1)
        cv2.putText(img, t, (line + 6, y + line - 8), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick,
                    cv2.LINE_AA)
