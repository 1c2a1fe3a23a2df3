"""Segmentation metrics in numpy: Dice (the paper's headline), IoU, accuracy, phase fractions.

Convention for a class absent from both prediction and truth: its Dice and IoU are
undefined, reported as NaN, and left out of the macro means (``macro_dice``, ``miou``).
A class present in only one of the two scores 0. If every class is NaN (no pixels),
the macro means are NaN too. Everything is computed from one confusion matrix, so the
per-image functions and the ``ConfusionMatrix`` accumulator agree exactly.
"""

from __future__ import annotations

import warnings

import numpy as np

_CHUNK = 1 << 22  # pixels per bincount pass: bounds the int64 temporaries on huge frames


def check_n_classes(n_classes: int) -> int:
    """``n_classes`` as an int, or ValueError unless it is a positive integer (bool is not)."""
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
    return int(n_classes)


def _labels(a, name: str, n: int) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "ui":
        raise TypeError(f"{name} must hold integer class labels, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= n):
        raise ValueError(f"{name} has labels outside [0, {n - 1}] (min {a.min()}, max {a.max()})")
    return a


def confusion(pred, truth, n_classes: int) -> np.ndarray:
    """Confusion matrix int64 ``[n, n]``: rows are the truth, columns the prediction."""
    n = check_n_classes(n_classes)
    p = _labels(pred, "pred", n)
    t = _labels(truth, "truth", n)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} differs from truth shape {t.shape}")
    p = p.ravel()
    t = t.ravel()
    cm = np.zeros(n * n, np.int64)
    for i in range(0, p.size, _CHUNK):
        cm += np.bincount(t[i : i + _CHUNK].astype(np.int64) * n + p[i : i + _CHUNK], minlength=n * n)
    return cm.reshape(n, n)


def _dice(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def _iou(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def _macro(per_class: np.ndarray) -> float:
    if np.all(np.isnan(per_class)):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(per_class))


def fractions_from_counts(counts) -> np.ndarray:
    """Phase fractions float64 ``[n]`` from per-class pixel counts, NaN when there are no pixels.

    The one counts -> fractions step: a mask's bincount, a confusion matrix's row or column
    sums, a result's ``counts``; :func:`fractions` is it applied to a label mask.
    """
    c = np.asarray(counts)
    total = c.sum()
    return c / total if total else np.full(c.shape, np.nan)


def dice(pred, truth, n_classes: int) -> np.ndarray:
    """Per-class Dice ``2|P∩T| / (|P|+|T|)``, float64 ``[n]``; NaN where a class is in neither."""
    return _dice(confusion(pred, truth, n_classes))


def iou(pred, truth, n_classes: int) -> np.ndarray:
    """Per-class IoU ``|P∩T| / |P∪T|``, float64 ``[n]``; NaN where a class is in neither."""
    return _iou(confusion(pred, truth, n_classes))


def macro_dice(pred, truth, n_classes: int) -> float:
    """Mean Dice over the classes present in prediction or truth."""
    return _macro(dice(pred, truth, n_classes))


def miou(pred, truth, n_classes: int) -> float:
    """Mean IoU over the classes present in prediction or truth."""
    return _macro(iou(pred, truth, n_classes))


def pixel_accuracy(pred, truth, n_classes: int) -> float:
    """Fraction of pixels labelled correctly."""
    cm = confusion(pred, truth, n_classes)
    return float(np.trace(cm) / cm.sum()) if cm.sum() else float("nan")


def fractions(mask, n_classes: int) -> np.ndarray:
    """Phase fractions of a label mask, float64 ``[n]`` summing to 1 (NaN for an empty mask)."""
    n = check_n_classes(n_classes)
    m = _labels(mask, "mask", n)
    return fractions_from_counts(np.bincount(m.ravel(), minlength=n).astype(np.float64))


def fraction_error(pred, truth, n_classes: int) -> float:
    """Mean absolute error between predicted and true phase fractions, over all classes."""
    cm = confusion(pred, truth, n_classes)
    pred, true = fractions_from_counts(cm.sum(axis=0)), fractions_from_counts(cm.sum(axis=1))
    return float(np.mean(np.abs(pred - true)))


class ConfusionMatrix:
    """Accumulates one confusion matrix over a dataset (pixels pooled over images).

    ``update(pred, truth)`` per image or tile; the scores are those of all pixels seen,
    so large images weigh more (the usual "global" dataset Dice). Fractions and their
    error are pooled the same way; average ``fraction_error`` per image yourself if you
    want images to count equally.
    """

    def __init__(self, n_classes: int, class_names: list[str] | None = None) -> None:
        self.n_classes = check_n_classes(n_classes)
        if class_names is not None and len(class_names) != self.n_classes:
            raise ValueError(f"{len(class_names)} class names for {self.n_classes} classes")
        self.class_names = list(class_names) if class_names is not None else None
        self.matrix = np.zeros((self.n_classes, self.n_classes), np.int64)

    def update(self, pred, truth) -> None:
        self.matrix += confusion(pred, truth, self.n_classes)

    def reset(self) -> None:
        self.matrix[...] = 0

    def dice(self) -> np.ndarray:
        return _dice(self.matrix)

    def iou(self) -> np.ndarray:
        return _iou(self.matrix)

    def macro_dice(self) -> float:
        return _macro(self.dice())

    def miou(self) -> float:
        return _macro(self.iou())

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def fractions(self) -> tuple[np.ndarray, np.ndarray]:
        """(predicted, true) phase fractions over all pixels seen."""
        return fractions_from_counts(self.matrix.sum(axis=0)), fractions_from_counts(self.matrix.sum(axis=1))

    def fraction_error(self) -> float:
        pred, true = self.fractions()
        return float(np.mean(np.abs(pred - true)))

    def summary(self) -> dict:
        """JSON-able scores (NaN becomes None); per-class values keyed by class name."""
        names = self.class_names or [str(i) for i in range(self.n_classes)]

        def clean(x: float) -> float | None:
            return None if np.isnan(x) else float(x)

        pred, true = self.fractions()
        return {
            "macro_dice": clean(self.macro_dice()),
            "miou": clean(self.miou()),
            "pixel_accuracy": clean(self.pixel_accuracy()),
            "fraction_mae": clean(self.fraction_error()),
            "per_class_dice": {k: clean(v) for k, v in zip(names, self.dice())},
            "per_class_iou": {k: clean(v) for k, v in zip(names, self.iou())},
            "pred_fractions": {k: clean(v) for k, v in zip(names, pred)},
            "true_fractions": {k: clean(v) for k, v in zip(names, true)},
            "pixels": int(self.matrix.sum()),
        }
