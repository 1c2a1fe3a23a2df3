"""Sweep an edge-aware refinement of a checkpoint's probabilities: the probabilities of each
frame once (at a simulated alpha = 0.9 frame ratio, optionally averaged over several scales; an
ensemble from `phaseedge-train ensemble` is one checkpoint), then every (radius, eps) pair of a
guided filter (He, Sun & Tang, TPAMI 2013) with the native-resolution frame as guide, scored
pooled over a split. The idea: the recipe's model sees ~2x coarser pixels than MetalDAM's, and
most MA errors lie within 3 px of a true boundary, so probabilities that follow the image's own
edges might place boundaries better.

    python scripts/refine_sweep.py runs/md-plm-s0/best --split train --radii 1,2,4,8 \
        --eps 1e-4,1e-3,1e-2,1e-1 --json runs/refine-sweep-train.json

Parameters are chosen on the training split and then scored once on validation. It measured
worse than no refinement at every setting (docs/results.md, ablation), so the filter lives here,
with its measurement, and not in the runtime.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch
from phaseedge.train.data import read_pixel_sizes
from phaseedge.train.evaluate import (
    METALDAM_GROUPS,
    add_sweep_arguments,
    group_dice,
    load_named_split,
    open_segmenter,
    split_probabilities,
)

from phaseedge.metrics import ConfusionMatrix
from phaseedge.outputs import atomic_write
from phaseedge.tta import parse_scales


def _box(a: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(a, -1, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


def guide_image(frame: np.ndarray) -> np.ndarray:
    """The frame as a float32 guide in [0, 1], by its 0.5/99.5 percentiles (robust to hot pixels)."""
    g = np.asarray(frame, dtype=np.float32)
    if g.ndim == 3:
        g = g.mean(axis=-1)
    if g.ndim != 2:
        raise ValueError(f"the guide must be a 2-D frame (or H x W x channels); got shape {frame.shape}")
    lo, hi = np.percentile(g, (0.5, 99.5))
    return np.clip((g - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)


def guided_filter(probs: np.ndarray, guide: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Filter each class map of ``probs`` [C, H, W] guided by ``guide`` [H, W] in [0, 1].

    Returns renormalised probabilities (clipped at 0, summing to 1 per pixel)."""
    if probs.ndim != 3 or probs.shape[1:] != guide.shape:
        raise ValueError(f"probabilities [C, H, W] and guide [H, W] must share H, W; got {probs.shape} and {guide.shape}")
    if int(radius) != radius or radius < 1:
        raise ValueError(f"radius must be a positive integer number of pixels; got {radius!r}")
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive finite number; got {eps!r}")
    r = int(radius)
    i = guide.astype(np.float32, copy=False)
    mean_i = _box(i, r)
    var_i = _box(i * i, r) - mean_i * mean_i
    out = np.empty(probs.shape, np.float32)
    for c in range(probs.shape[0]):
        p = probs[c].astype(np.float32, copy=False)
        mean_p = _box(p, r)
        a = (_box(i * p, r) - mean_i * mean_p) / (var_i + np.float32(eps))
        b = mean_p - a * mean_i
        out[c] = _box(a, r) * i + _box(b, r)
    np.clip(out, 0.0, None, out=out)
    total = out.sum(axis=0, keepdims=True)
    out /= np.maximum(total, np.float32(1e-6))
    return out


def _score(cm: ConfusionMatrix) -> dict[str, float]:
    dice = cm.summary()["per_class_dice"]
    groups = group_dice(dice, METALDAM_GROUPS)
    return {g: 100 * v for g, v in groups.items()} | {"ma": 100 * dice["martensite_austenite"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sweep_arguments(ap)
    ap.add_argument("--scales", type=parse_scales, default=(1.0,))
    ap.add_argument("--radii", default="1,2,4,8")
    ap.add_argument("--eps", default="1e-4,1e-3,1e-2,1e-1")
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--json", type=Path, help="also write the table here")
    args = ap.parse_args()
    torch.set_num_threads(1)

    with open_segmenter(args.checkpoint, scales=args.scales) as seg:
        names, n = list(seg.class_names), seg.n_classes
        items = load_named_split(args.data, args.split, n, read_pixel_sizes(args.pixel_sizes))
        probs = split_probabilities(seg, items, args.alpha)
    guides = [guide_image(it.image) for it in items]
    settings = [(0, 0.0)] + [(int(r), float(e)) for r in args.radii.split(",") for e in args.eps.split(",")]
    rows = []
    for r, e in settings:
        cm = ConfusionMatrix(n, names)
        for p, g, it in zip(probs, guides, items):
            cm.update((guided_filter(p, g, r, e) if r else p).argmax(axis=0).astype(np.uint8), it.mask)
        rows.append({"radius": r, "eps": e, **_score(cm)})
    print(f"{args.checkpoint} on {args.split} ({len(items)} frames), scales {args.scales}, "
          f"alpha {args.alpha}, pooled Dice (%); radius 0 = no refinement")
    print("| radius | eps | main-3 | MA | macro-4 |\n|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['radius']} | {row['eps']:g} | {row['main3']:.2f} | {row['ma']:.2f} | {row['macro4']:.2f} |")
    if args.json:
        atomic_write(args.json, json.dumps(rows, indent=1).encode())


if __name__ == "__main__":
    main()
