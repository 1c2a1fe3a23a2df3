"""Where a checkpoint's validation errors are: the pooled confusion matrix and the share of the
wrong pixels within a band of ``--band`` pixels either side of an annotated phase boundary, at
the frames' own resolution and at the simulated α = 0.9 frame ratio eval scores with.

    python scripts/error_anatomy.py runs/s19-ds3-s0/best --json runs/s21/error-anatomy-s0.json

Used to choose what to try on the single model (docs/results.md, "Session 21").
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
    add_sweep_arguments,
    load_named_split,
    open_segmenter,
    split_probabilities,
)

from phaseedge.outputs import atomic_write


def boundary_band(mask: np.ndarray, n_classes: int, band: int) -> np.ndarray:
    """True within ``band`` pixels of a change of label (each class's dilation minus its erosion)."""
    if band < 1:
        raise ValueError(f"--band must be >= 1 pixel, got {band}")
    kernel = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    edge = np.zeros(mask.shape, bool)
    for k in range(n_classes):
        b = (mask == k).astype(np.uint8)
        edge |= (cv2.dilate(b, kernel) - cv2.erode(b, kernel)) > 0
    return edge


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sweep_arguments(ap)
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--band", type=int, default=2, help="pixels either side of a boundary")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    torch.set_num_threads(1)

    with open_segmenter(args.checkpoint) as seg:
        n, names = seg.n_classes, list(seg.class_names)
        items = load_named_split(args.data, args.split, n, read_pixel_sizes(args.pixel_sizes))
        probs = split_probabilities(seg, items, args.alpha)
    cm = np.zeros((n, n), np.int64)
    wrong = wrong_in_band = in_band = 0
    for p, it in zip(probs, items):
        pred, truth = p.argmax(0), it.mask
        ok = truth < n
        cm += np.bincount(truth[ok] * n + pred[ok], minlength=n * n).reshape(n, n)
        band = boundary_band(truth, n, args.band) & ok
        miss = (pred != truth) & ok
        wrong += int(miss.sum())
        wrong_in_band += int((miss & band).sum())
        in_band += int(band.sum())
    out = {"checkpoint": str(args.checkpoint), "split": args.split, "alpha": args.alpha, "band_px": args.band,
           "classes": names, "confusion_truth_by_pred": cm.tolist(), "wrong_pixels": wrong,
           "wrong_share_in_band": wrong_in_band / max(wrong, 1), "band_share_of_pixels": in_band / max(int(cm.sum()), 1),
           "error_rate_in_band": wrong_in_band / max(in_band, 1),
           "error_rate_outside_band": (wrong - wrong_in_band) / max(int(cm.sum()) - in_band, 1)}
    print(json.dumps(out, indent=1))
    if args.json:
        atomic_write(args.json, json.dumps(out, indent=1).encode())


if __name__ == "__main__":
    main()
