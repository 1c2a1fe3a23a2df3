"""`phaseedge-bench forest`: the classic peer, an ilastik-style pixel-classification random forest.

What a microscopist would do without deep learning: ilastik's Pixel Classification
feature set (Gaussian smoothing, Laplacian of Gaussian, Gaussian gradient magnitude,
difference of Gaussians, structure-tensor and Hessian-of-Gaussian eigenvalues at scales
0.7, 1.0, 1.6, 3.5, 5.0, 10.0, plus the frame smoothed at 0.3) computed with
scipy.ndimage on each frame normalised as a whole (`phaseedge.normalize`), and a
random forest trained on a class-balanced pixel sample of the training images.

Scoring follows ``phaseedge-bench accuracy``: every pixel of every validation frame in
one pooled confusion matrix, ``fraction_mae`` the mean over frames of each frame's mean
absolute phase-fraction error. Macro Dice is also reported over 4 classes (without
precipitate) and over the 3 main phases. Reuse :func:`pixel_features` for the features
and :func:`score_labels` (or :func:`score` with a forest) for the scores.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from phaseedge.outputs import atomic_write

#: ilastik's scales for every feature but the raw smoothing
SCALES = (0.7, 1.0, 1.6, 3.5, 5.0, 10.0)
#: ilastik offers only Gaussian smoothing at its smallest scale: the (almost) raw intensity
RAW_SIGMA = 0.3
#: ilastik's difference of Gaussians: G(σ) - G(0.66 σ)
DOG_RATIO = 0.66
#: ilastik's structure tensor: gradients at σ (inner scale), tensor smoothed at 0.5 σ (outer)
ST_OUTER_RATIO = 0.5
#: kernel radius in σ (ilastik's window_size default)
TRUNCATE = 3.5

METALDAM_CLASSES = ("matrix", "austenite", "martensite_austenite", "precipitate", "defect")
#: the class left out of the 4-class macro Dice (sparsely annotated in MetalDAM)
RARE_CLASS = "precipitate"
MAIN_PHASES = ("matrix", "austenite", "martensite_austenite")

_PER_SCALE = ("gauss", "log", "ggm", "dog", "st_ev1", "st_ev2", "hess_ev1", "hess_ev2")
_CHUNK = 1 << 18  # pixels per predict call: bounds the forest's temporaries


def feature_names(scales: Iterable[float] = SCALES) -> list[str]:
    """Channel names of :func:`pixel_features`, in order (eigenvalues largest first)."""
    return [f"gauss_{RAW_SIGMA:g}"] + [f"{kind}_{s:g}" for s in scales for kind in _PER_SCALE]


def _eig2(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (largest, smallest) of the symmetric 2x2 field [[a, b], [b, c]]."""
    mean = 0.5 * (a + c)
    radius = np.sqrt((0.5 * (a - c)) ** 2 + b * b)
    return mean + radius, mean - radius


def pixel_features(frame: np.ndarray, scales: Iterable[float] = SCALES) -> np.ndarray:
    """ilastik's pixel features of one normalised frame: float32 ``[H, W, F]``, F = 1 + 8·len(scales).

    ``frame`` is the frame already scaled to [0, 1] (``LabelledImage.normalized``, or
    :func:`frame_features` from a raw frame). Channels as :func:`feature_names`. All
    filters are scipy.ndimage Gaussians (reflecting borders, radius ``TRUNCATE``·σ) in
    float32; the Laplacian of Gaussian is the trace of the Hessian of Gaussian.
    """
    from scipy import ndimage

    x = np.asarray(frame, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"pixel_features needs a 2-D frame, got shape {x.shape}")
    scales = tuple(float(s) for s in scales)
    if any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive, got {scales}")
    out = np.empty(x.shape + (1 + len(_PER_SCALE) * len(scales),), np.float32)

    def g(sigma: float, order=0, src=x) -> np.ndarray:
        return ndimage.gaussian_filter(src, sigma, order=order, mode="reflect", truncate=TRUNCATE,
                                       output=np.float32)

    out[..., 0] = g(RAW_SIGMA)
    k = 1
    for s in scales:
        smooth = g(s)
        gy, gx = g(s, (1, 0)), g(s, (0, 1))
        hyy, hxx, hxy = g(s, (2, 0)), g(s, (0, 2)), g(s, (1, 1))
        so = ST_OUTER_RATIO * s
        st1, st2 = _eig2(g(so, src=gy * gy), g(so, src=gy * gx), g(so, src=gx * gx))
        he1, he2 = _eig2(hyy, hxy, hxx)
        for feat in (smooth, hyy + hxx, np.sqrt(gy * gy + gx * gx), smooth - g(DOG_RATIO * s),
                     st1, st2, he1, he2):
            out[..., k] = feat
            k += 1
    return out


def frame_features(image: np.ndarray, scales: Iterable[float] = SCALES) -> np.ndarray:
    """:func:`pixel_features` of a raw frame, normalised first as the runtime does (whole-frame range)."""
    from phaseedge import normalize

    return pixel_features(normalize.apply(image, *normalize.frame_range(image)), scales)


# ------------------------------------------------------------------ training
def sample_pixels(masks: list[np.ndarray], n_classes: int, per_class: int, seed: int = 0) -> list[list[np.ndarray]]:
    """A class-balanced pixel sample: ``[image][class]`` -> sorted flat pixel indices.

    For each class, ``min(per_class, available)`` pixels drawn without replacement from
    all pixels of that class pooled over every image, with ``numpy.random.default_rng(seed)``.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    counts = np.stack([np.bincount(m.ravel(), minlength=n_classes)[:n_classes] for m in masks])  # [I, C]
    rng = np.random.default_rng(seed)
    out: list[list[np.ndarray]] = [[np.empty(0, np.int64)] * n_classes for _ in masks]
    for c in range(n_classes):
        total = int(counts[:, c].sum())
        if total == 0:
            continue
        chosen = np.sort(rng.choice(total, size=min(per_class, total), replace=False))
        starts = np.concatenate([[0], np.cumsum(counts[:, c])])
        for i in range(len(masks)):
            lo, hi = np.searchsorted(chosen, starts[i : i + 2])
            if hi > lo:
                where = np.flatnonzero(masks[i].ravel() == c)
                out[i][c] = where[chosen[lo:hi] - starts[i]]
    return out


def training_set(items: list, n_classes: int, per_class: int, seed: int = 0, scales: Iterable[float] = SCALES,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Features ``X`` float32 [N, F] and labels ``y`` uint8 [N] of the balanced sample of ``items``."""
    from tqdm import tqdm

    picks = sample_pixels([it.mask for it in items], n_classes, per_class, seed)
    xs, ys = [], []
    for it, per_image in zip(tqdm(items, desc="features (train)", unit="image", disable=not progress), picks):
        idx = np.concatenate(per_image)
        if idx.size == 0:
            continue
        feats = pixel_features(it.normalized, scales)
        xs.append(feats.reshape(-1, feats.shape[-1])[idx])
        ys.append(it.mask.ravel()[idx])
    if not xs:
        raise ValueError("the training images hold no labelled pixels")
    return np.concatenate(xs), np.concatenate(ys).astype(np.uint8)


def train(items: list, n_classes: int, per_class: int = 20000, trees: int = 100, seed: int = 0,
          scales: Iterable[float] = SCALES, progress: bool = False):
    """A fitted ``RandomForestClassifier`` (one thread, ``random_state=seed``) and the sample's class counts."""
    from sklearn.ensemble import RandomForestClassifier

    X, y = training_set(items, n_classes, per_class, seed, scales, progress)
    forest = RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=1)
    forest.fit(X, y)
    return forest, np.bincount(y, minlength=n_classes)[:n_classes]


def predict_frame(forest, frame: np.ndarray, scales: Iterable[float] = SCALES, bar=None) -> np.ndarray:
    """Labels uint8 [H, W] of one normalised frame (``bar``: a tqdm advanced by pixels)."""
    feats = pixel_features(frame, scales)
    X = feats.reshape(-1, feats.shape[-1])
    labels = np.empty(X.shape[0], np.uint8)
    for i in range(0, X.shape[0], _CHUNK):
        labels[i : i + _CHUNK] = forest.predict(X[i : i + _CHUNK])
        if bar is not None:
            bar.update(min(_CHUNK, X.shape[0] - i))
    return labels.reshape(frame.shape)


# ------------------------------------------------------------------ scoring
def _mean_of(dice: np.ndarray, names: list[str], subset: Iterable[str]) -> float | None:
    values = [dice[names.index(k)] for k in subset if k in names]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else None


def score_labels(pairs: Iterable[tuple[str, np.ndarray, np.ndarray]], class_names: list[str]) -> dict[str, Any]:
    """Scores of ``(name, predicted labels, true mask)`` frames, pooled in one confusion matrix.

    ``ConfusionMatrix.summary()`` plus ``macro_dice_<n>`` (all n classes), ``macro_dice_<n-1>``
    (without ``RARE_CLASS``, when present) and ``macro_dice_main3`` (``MAIN_PHASES``, when
    present), each the mean of the pooled per-class Dice (a class in neither prediction nor
    truth left out); on MetalDAM ``macro_dice_5``, ``macro_dice_4``, ``macro_dice_main3``; ``fraction_mae``
    the mean over frames of each frame's mean absolute fraction error (the pooled one is
    ``pooled_fraction_mae``); ``per_image`` each frame's fraction error and macro Dice.
    """
    from phaseedge import metrics

    names = list(class_names)
    n = len(names)
    cm = metrics.ConfusionMatrix(n, names)
    per_image = []
    for name, pred, truth in pairs:
        frame = metrics.ConfusionMatrix(n, names)
        frame.update(pred, truth)
        cm.matrix += frame.matrix
        per_image.append({"name": name, "fraction_mae": frame.fraction_error(), "macro_dice": frame.macro_dice()})
    if not per_image:
        raise ValueError("no frames to score")
    dice = cm.dice()
    out = cm.summary()
    out["pooled_fraction_mae"] = out["fraction_mae"]
    out["fraction_mae"] = float(np.mean([p["fraction_mae"] for p in per_image]))
    out[f"macro_dice_{n}"] = _mean_of(dice, names, names)
    if RARE_CLASS in names:
        out[f"macro_dice_{n - 1}"] = _mean_of(dice, names, [k for k in names if k != RARE_CLASS])
    if set(MAIN_PHASES) <= set(names):
        out["macro_dice_main3"] = _mean_of(dice, names, MAIN_PHASES)
    out["per_image"] = per_image
    return out


def score(forest, items: list, class_names: list[str], scales: Iterable[float] = SCALES,
          progress: bool = False) -> dict[str, Any]:
    """:func:`score_labels` of the forest's labels on every pixel of ``items``."""
    from tqdm import tqdm

    with tqdm(total=sum(it.mask.size for it in items), desc="predict (val)", unit="px", unit_scale=True,
              disable=not progress) as bar:
        return score_labels(((it.name, predict_frame(forest, it.normalized, scales, bar), it.mask)
                             for it in items), class_names)


# ------------------------------------------------------------------ command
def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_forest(args: argparse.Namespace) -> dict[str, Any]:
    from phaseedge.bench import system
    from phaseedge.train.data import load_folder, read_split
    from threadpoolctl import threadpool_limits

    names = list(args.class_names)
    n = len(names)
    progress = not args.no_progress
    t0 = time.perf_counter()
    with threadpool_limits(1):
        train_items = load_folder(args.data, n, read_split(args.train_split))
        val_items = load_folder(args.data, n, read_split(args.val_split))
        t_load = time.perf_counter()
        forest, counts = train(train_items, n, args.per_class, args.trees, args.seed, SCALES, progress)
        t_fit = time.perf_counter()
        results = score(forest, val_items, names, SCALES, progress)
        t_end = time.perf_counter()
    return {
        "command": "phaseedge-bench forest",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": system.machine_info(),
        "versions": {**system.library_versions(), "scikit-learn": _version("scikit-learn"),
                     "scipy": _version("scipy")},
        "data": str(args.data), "train_split": str(args.train_split), "val_split": str(args.val_split),
        "train_images": len(train_items), "val_images": len(val_items), "class_names": names,
        "params": {"per_class": args.per_class, "trees": args.trees, "seed": args.seed, "threads": 1,
                   "scales": list(SCALES), "raw_sigma": RAW_SIGMA, "dog_ratio": DOG_RATIO,
                   "st_outer_ratio": ST_OUTER_RATIO, "truncate": TRUNCATE,
                   "features": feature_names(SCALES)},
        "train_samples": {k: int(v) for k, v in zip(names, counts)},
        "timing_s": {"load": t_load - t0, "train_features_and_fit": t_fit - t_load,
                     "val_features_and_predict": t_end - t_fit, "total": t_end - t0},
        "results": results,
    }


def print_report(report: dict[str, Any]) -> None:
    r = report["results"]
    print(f"random forest ({report['params']['trees']} trees, {sum(report['train_samples'].values())} training "
          f"pixels from {report['train_images']} images) on {report['val_images']} validation images of "
          f"{report['data']}; {report['timing_s']['total']:.0f} s")

    def f(v):
        return "—" if v is None else f"{v:.4f}"

    for k, v in r["per_class_dice"].items():
        print(f"  Dice {k:<22} {f(v)}")
    n = len(report["class_names"])
    print(f"  macro Dice ({n}) {f(r[f'macro_dice_{n}'])}  ({n - 1}, no {RARE_CLASS}) {f(r.get(f'macro_dice_{n - 1}'))}"
          f"  (main 3) {f(r.get('macro_dice_main3'))}  mIoU {f(r['miou'])}  fraction MAE {f(r['fraction_mae'])}")


def _class_names(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(","))
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"need two or more distinct class names, got {text!r}")
    return names


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "forest", help="the classic peer: ilastik-style pixel-classification random forest, scored on a split",
        description=" ".join(__doc__.split("\n\n")[1:3]).replace("\n", " "))
    p.add_argument("--data", required=True, type=Path, help="labelled folder with images/ and labels/")
    p.add_argument("--train-split", required=True, type=Path, help="list of training image names")
    p.add_argument("--val-split", required=True, type=Path, help="list of validation image names (scored)")
    p.add_argument("--per-class", type=_positive, default=20000, help="training pixels per class (default 20000)")
    p.add_argument("--trees", type=_positive, default=100, help="trees in the forest (default 100)")
    p.add_argument("--seed", type=int, default=0, help="sampling and forest seed (default 0)")
    p.add_argument("--class-names", type=_class_names, default=METALDAM_CLASSES,
                   help=f"comma list, one per label value (default {','.join(METALDAM_CLASSES)})")
    p.add_argument("--out", type=Path, help="write the JSON report to this file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a summary")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they go to stderr)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = run_forest(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out, (json.dumps(report, indent=2) + "\n").encode())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0
