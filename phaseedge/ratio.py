"""The phase ratio: the fraction of pixels of each phase (paper Eq. 1, Appendix A.2).

A ratio is a float32 vector of length ``n_classes`` that sums to 1. A ratio of all
zeros (or ``None``) means "unknown": the PLM models were trained to ignore it then.

This module also holds the cheap competitor to the PLM: ``calibrate`` shifts the
per-class log-priors of any model's probabilities so that the predicted fractions
match a given ratio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from phaseedge.metrics import check_n_classes as _check_n

#: ratios below this are raised to it before calibration (a zero would need log 0 = -inf)
MIN_RATIO = 1e-3
#: bound on the log-prior shift: a class the model never predicts cannot be forced in
MAX_SHIFT = 20.0
#: calibration estimates the shift on at most this many pixels (strided subsample)
MAX_SAMPLES = 1 << 20
#: the ratio the model estimates itself (``ratio="auto"``; ``"rest": "auto"`` in a partial ratio)
AUTO = "auto"
#: the key of a partial ratio that stands for every class not named
REST = "rest"


def from_mask(mask: np.ndarray, n_classes: int) -> np.ndarray:
    """Fraction of pixels of each class in an integer label mask (Eq. 1); float32, sums to 1."""
    n = _check_n(n_classes)
    m = np.asarray(mask)
    if m.dtype.kind not in "ui":
        raise TypeError(f"mask must hold integer class labels, got dtype {m.dtype}")
    if m.size == 0:
        raise ValueError("mask is empty")
    if m.dtype.kind == "i" and m.min() < 0:
        raise ValueError(f"mask has negative labels (min {m.min()})")
    counts = np.bincount(m.ravel(), minlength=n)
    if counts.size > n:
        raise ValueError(f"mask has label {counts.size - 1} but n_classes is {n}")
    return (counts / m.size).astype(np.float32)


def guess(true_ratio, accuracy) -> np.ndarray:
    """The simulated expert of accuracy α (paper Eq. 4-5).

    ``G_i = α P_i + (1 - α) (1 - P_i) / (n - 1)``: α = 1 gives the truth, α = 0 spreads
    each phase's share over the others. The last axis of ``true_ratio`` holds the
    classes, so a batch ``[B, n]`` with ``accuracy`` of shape ``[B]`` works too.
    """
    p = np.asarray(true_ratio, dtype=np.float64)
    if p.ndim == 0 or p.shape[-1] < 1:
        raise ValueError(f"true_ratio must have the classes on its last axis, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("true_ratio must be finite and non-negative")
    total = p.sum(axis=-1, keepdims=True)
    if np.any(total <= 0):
        raise ValueError("true_ratio is all zeros: a truth has at least one phase")
    p = p / total
    a = np.asarray(accuracy, dtype=np.float64)
    if not np.all(np.isfinite(a)) or np.any(a < 0) or np.any(a > 1):
        raise ValueError(f"accuracy must lie in [0, 1], got {accuracy!r}")
    a = a[..., None]
    n = p.shape[-1]
    if n == 1:
        return np.ones(np.broadcast_shapes(p.shape, a.shape), np.float32)
    return (a * p + (1.0 - a) * (1.0 - p) / (n - 1)).astype(np.float32)


def by_name(ratio: Mapping[str, Any], class_names: Sequence[str]) -> list[float]:
    """``{"martensite": 0.3, ...}`` -> a vector in the model's class order; names match
    case-insensitively, classes not named get 0."""
    lookup = {c.lower(): i for i, c in enumerate(class_names)}
    out = [0.0] * len(class_names)
    seen: dict[int, str] = {}
    for name, value in ratio.items():
        if not isinstance(name, str):
            raise TypeError(f"ratio keys must be class names, got {name!r}")
        i = lookup.get(name.strip().lower())
        if i is None:
            raise ValueError(f"ratio names {name!r}, which is not a class of this model "
                             f"({', '.join(class_names)})")
        if i in seen:
            raise ValueError(f"ratio names {class_names[i]!r} twice ({seen[i]!r} and {name!r})")
        seen[i] = name
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise TypeError(f"ratio for {name!r} must be a number, got {value!r}")
        out[i] = float(value)
    return out


@dataclass(frozen=True)
class Partial:
    """A ratio that fixes some classes' fractions and leaves the rest to the frame: "about 10 %
    martensite, the rest as the model sees it" (``{"martensite": 0.10, "rest": "auto"}``)."""

    known: tuple[tuple[int, float], ...]  # (class index, fraction of the frame in [0, 1])
    n_classes: int

    def complete(self, estimate) -> np.ndarray:
        """The full ratio: the named fractions as given, the remaining share split over the
        other classes in proportion to ``estimate`` (the model's own fractions; evenly where
        it sees none of them)."""
        est = np.clip(np.asarray(estimate, np.float64), 0.0, None)
        if est.shape != (self.n_classes,) or not np.all(np.isfinite(est)):
            raise ValueError(f"estimate must be {self.n_classes} finite fractions, got {estimate!r}")
        r = np.zeros(self.n_classes)
        named = [i for i, _ in self.known]
        for i, v in self.known:
            r[i] = v
        rest = np.setdiff1d(np.arange(self.n_classes), named)
        share = max(0.0, 1.0 - r.sum())
        if rest.size:
            e = est[rest]
            r[rest] = share * (e / e.sum() if e.sum() > 0 else np.full(rest.size, 1.0 / rest.size))
        out = validate(r, self.n_classes)
        if out is None:
            raise ValueError("the partial ratio names only zero fractions and leaves no other class")
        return out


def partial(ratio: Mapping[str, Any], class_names: Sequence[str]) -> Partial:
    """``{"martensite": 0.10, "rest": "auto"}`` -> a `Partial`. Named values are fractions of
    the frame (not relative weights): each in [0, 1], together at most 1."""
    items = dict(ratio)
    rest = next((k for k in items if isinstance(k, str) and k.strip().lower() == REST), None)
    if rest is None or not (isinstance(items[rest], str) and items[rest].strip().lower() == AUTO):
        raise ValueError(f"a partial ratio needs \"{REST}\": \"{AUTO}\" beside the named fractions, got {ratio!r}")
    del items[rest]
    if not items:
        raise ValueError("a partial ratio names at least one class; for none use ratio='auto'")
    vector = by_name(items, class_names)
    for name, value in items.items():
        if not np.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"partial ratio: {name!r} must be a fraction of the frame in [0, 1], got {value!r}")
    named = {i for i, c in enumerate(class_names) if c.lower() in {k.strip().lower() for k in items}}
    total = sum(vector)
    if total > 1.0 + 1e-6:
        raise ValueError(f"partial ratio: the named fractions sum to {total:.3f} > 1, leaving nothing for the rest")
    if len(named) == len(class_names):
        raise ValueError("partial ratio names every class; drop \"rest\" and give the ratio itself")
    return Partial(tuple((i, vector[i]) for i in sorted(named)), len(class_names))


def check(ratio, n_classes: int, class_names: Sequence[str] | None = None) -> np.ndarray | str | Partial | None:
    """Any ratio a user may give: a vector or mapping (`validate`), ``"auto"``, or a partial
    mapping with ``"rest": "auto"`` (`partial`); an already checked `Partial` passes."""
    if isinstance(ratio, Partial):
        if ratio.n_classes != _check_n(n_classes):
            raise ValueError(f"partial ratio for {ratio.n_classes} classes but the model has {n_classes}")
        return ratio
    if isinstance(ratio, str):
        if ratio.strip().lower() == AUTO:
            return AUTO
        raise ValueError(f"a ratio given as text must be {AUTO!r}, got {ratio!r}")
    if isinstance(ratio, Mapping) and any(isinstance(k, str) and k.strip().lower() == REST for k in ratio):
        if class_names is None or len(class_names) != _check_n(n_classes):
            raise ValueError("a partial ratio needs the model's class names")
        return partial(ratio, class_names)
    return validate(ratio, n_classes, class_names)


def validate(ratio, n_classes: int, class_names: Sequence[str] | None = None) -> np.ndarray | None:
    """Check a user-given ratio; return it as float32 summing to 1, or None for "unknown".

    ``ratio`` is a vector in the model's class order or, with ``class_names``, a mapping
    from class names to values (:func:`by_name`). ``None`` or all zeros mean unknown and
    give ``None``. NaN/inf, negative values, a length other than ``n_classes`` or more
    than one dimension raise ``ValueError``. A vector that does not sum to 1
    (percentages, counts, rounding) is divided by its sum.
    """
    n = _check_n(n_classes)
    if ratio is None:
        return None
    if isinstance(ratio, Mapping):
        if class_names is None:
            raise ValueError("a ratio by class name needs the model's class names")
        if len(class_names) != n:
            raise ValueError(f"{len(class_names)} class names for {n} classes")
        ratio = by_name(ratio, class_names)
        if sum(ratio) == 0:
            raise ValueError("the named ratio sums to zero; give at least one phase a positive share")
    try:
        r = np.asarray(ratio, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"ratio must be a sequence of {n} numbers, got {ratio!r}") from exc
    if r.ndim != 1:
        raise ValueError(f"ratio must be a 1-D vector of {n} numbers, got shape {r.shape}")
    if r.size != n:
        raise ValueError(f"ratio has {r.size} values but the model has {n} classes")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"ratio contains NaN or inf: {r.tolist()}")
    if np.any(r < 0):
        raise ValueError(f"ratio contains negative values: {r.tolist()}")
    total = r.sum()
    if total == 0:
        return None
    return (r / total).astype(np.float32)


def _sample(probs: np.ndarray) -> np.ndarray:
    """Class-first probabilities as float32 [n, m], a deterministic strided subsample."""
    flat = probs.reshape(probs.shape[0], -1)
    stride = max(1, -(-flat.shape[1] // MAX_SAMPLES))
    return np.ascontiguousarray(flat[:, ::stride], dtype=np.float32)


def _check_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs)
    if p.ndim < 2 or p.shape[0] < 1 or p[0].size == 0:
        raise ValueError(f"probs must be [n_classes, ...] with at least one pixel, got shape {p.shape}")
    if p.dtype.kind != "f":
        raise TypeError(f"probs must be floating point, got dtype {p.dtype}")
    return p


def prior_shift(probs: np.ndarray, ratio, steps: int = 50, tol: float = 1e-5) -> np.ndarray:
    """Log-prior shift ``b`` (float32 [n]) so that ``mean(softmax(log probs + b))`` matches ``ratio``.

    Fixed-point iteration ``b += log(ratio) - log(mean fraction)``, stopped after ``steps``
    or when no fraction moves by more than ``tol``. Ratios below ``MIN_RATIO`` are raised
    to it and ``|b|`` is bounded by ``MAX_SHIFT``, so classes the expert says are absent
    are suppressed strongly but finitely. ``probs`` has the class axis first.
    """
    p = _check_probs(probs)
    n = p.shape[0]
    r = validate(ratio, n)
    if r is None:
        return np.zeros(n, np.float32)
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    target = np.maximum(r.astype(np.float64), MIN_RATIO)
    target /= target.sum()
    s = _sample(p).astype(np.float64)
    s = np.clip(s, 0.0, None)
    b = np.zeros(n)
    for _ in range(int(steps)):
        w = np.exp(b - b.max())[:, None]
        q = s * w
        q /= np.maximum(q.sum(axis=0, keepdims=True), 1e-300)
        frac = q.mean(axis=1)
        if np.max(np.abs(frac - target)) < tol:
            break
        b = np.clip(b + np.log(target) - np.log(np.maximum(frac, 1e-300)), -MAX_SHIFT, MAX_SHIFT)
    return (b - b.mean()).astype(np.float32)


def em_prior(probs: np.ndarray, train_prior, steps: int = 100, tol: float = 1e-6) -> np.ndarray:
    """A frame's class fractions re-estimated from ratio-free posteriors by EM (Saerens,
    Latinne & Decaestecker, Neural Computation 2002): ``π ← mean_x p(c|x) π_c / π_train,c``
    (renormalised per pixel) until no fraction moves by more than ``tol``. ``train_prior`` is
    the class prior the model's posteriors were learnt under. Returns float32 [n], sums to 1."""
    p = _check_probs(probs)
    n = p.shape[0]
    base = validate(train_prior, n)
    if base is None:
        raise ValueError("train_prior is all zeros: EM needs the model's training class prior")
    base = np.maximum(base.astype(np.float64), MIN_RATIO)
    s = np.clip(_sample(p).astype(np.float64), 0.0, None)
    prior = s.mean(axis=1)
    prior /= prior.sum()
    for _ in range(int(steps)):
        q = s * (prior / base)[:, None]
        q /= np.maximum(q.sum(axis=0, keepdims=True), 1e-300)
        new = q.mean(axis=1)
        done = np.max(np.abs(new - prior)) < tol
        prior = new
        if done:
            break
    return (prior / prior.sum()).astype(np.float32)


def calibrate(probs: np.ndarray, ratio, steps: int = 50) -> np.ndarray:
    """Probabilities re-weighted by ``prior_shift``: float32, same shape, class axis first.

    An unknown ratio (None or zeros) returns the probabilities unchanged (as float32).
    The input array is never modified.
    """
    p = _check_probs(probs)
    if validate(ratio, p.shape[0]) is None:
        return p.astype(np.float32)  # always a copy: astype copies by default
    b = prior_shift(p, ratio, steps=steps)
    w = np.exp(b - b.max()).astype(np.float32).reshape((-1,) + (1,) * (p.ndim - 1))
    out = np.clip(p.astype(np.float32), 0.0, None) * w
    out /= np.maximum(out.sum(axis=0, keepdims=True), np.float32(1e-30))
    return out
