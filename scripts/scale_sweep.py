"""Sweep the inference pixel size of a checkpoint: each scale's probabilities once, then every
listed combination averaged (what ``Segmenter(scales=...)`` computes), scored pooled over a split
at a simulated α = 0.9 frame ratio (the validation setting of the recipe).

    python scripts/scale_sweep.py runs/md-plm-s0/best --split train --scales 0.7,0.8,0.9,1,1.1 \
        --combos "0.9,1;0.8,1;0.8,0.9,1;0.8,0.9,1,1.1;0.7,0.8,0.9,1" --json runs/scale-sweep-train.json

Used to choose the multi-scale set on the training split (docs/results.md, "Multi-scale
inference"); `phaseedge-train eval --scales` then scores the chosen set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from phaseedge.train import checkpoint
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sweep_arguments(ap)
    ap.add_argument("--scales", type=parse_scales, required=True, help="every scale to run once")
    ap.add_argument("--combos", default="", help="';'-separated scale sets to average, e.g. '0.9,1;0.8,0.9,1'")
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--json", type=Path, help="also write the table here")
    args = ap.parse_args()
    torch.set_num_threads(1)

    model = checkpoint.load(args.checkpoint)
    names = list(model.config["class_names"])
    n = len(names)
    items = load_named_split(args.data, args.split, n, read_pixel_sizes(args.pixel_sizes))
    probs: dict[float, list[np.ndarray]] = {}
    for s in args.scales:
        with open_segmenter(model, scales=(s,)) as seg:
            probs[s] = split_probabilities(seg, items, args.alpha)
    combos = [(s,) for s in args.scales] + [parse_scales(c) for c in args.combos.split(";") if c.strip()]
    rows = []
    for combo in combos:
        missing = [s for s in combo if s not in probs]
        if missing:
            raise SystemExit(f"combination {combo} uses scales not in --scales: {missing}")
        cm = ConfusionMatrix(n, names)
        for i, it in enumerate(items):
            total = probs[combo[0]][i].copy()
            for s in combo[1:]:
                total += probs[s][i]
            cm.update((total / np.float32(len(combo))).argmax(axis=0).astype(np.uint8), it.mask)
        dice = cm.summary()["per_class_dice"]
        groups = group_dice(dice, METALDAM_GROUPS)
        rows.append({"scales": list(combo), **{g: 100 * v for g, v in groups.items()},
                     "ma": 100 * dice["martensite_austenite"],
                     "cost": float(sum(1.0 / s**2 for s in combo))})
    print(f"{args.checkpoint} on {args.split} ({len(items)} frames), alpha {args.alpha}, pooled Dice (%)")
    print("| scales | main-3 | MA | macro-4 | pixels vs one pass |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {', '.join(f'{s:g}' for s in r['scales'])} | {r['main3']:.2f} | {r['ma']:.2f} | "
              f"{r['macro4']:.2f} | {r['cost']:.2f}x |")
    if args.json:
        atomic_write(args.json, json.dumps(rows, indent=1).encode())


if __name__ == "__main__":
    main()
