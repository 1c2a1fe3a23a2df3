"""``phaseedge-bench coverage``: do the fraction error bars cover the truth as often as they say?

A "specimen" is one big synthetic micrograph whose true phase fractions are known exactly
(its mask). A scientist images fields of view (FOVs) of it: random crops, each segmented on
its own through `phaseedge.Segmenter`. Each FOV's `Result.fraction_uncertainty()` interval
(a bootstrap over row bands: "how much would this move on another field of view") should
contain the specimen's fraction at roughly its nominal rate. Reported per phase, for the
model's labels and — to separate the bootstrap from the model's own error — for the FOV's
true labels put through the same bootstrap.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np


def _covered(result: Any, truth: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inside [n] bool, se [n], error [n]) of one result's interval against ``truth`` [n]."""
    u = result.fraction_uncertainty(level=level)
    rows = [u[c] for c in result.class_names]
    low = np.array([r["low"] for r in rows])
    high = np.array([r["high"] for r in rows])
    inside = (low <= truth) & (truth <= high)
    return inside, np.array([r["se"] for r in rows]), np.array([r["fraction"] for r in rows]) - truth


def run_coverage(model: Any, specimens: int = 4, size: int = 2048, fov: int = 512, fovs: int = 10,
                 level: float = 0.95, seed: int = 0, backend: str = "auto") -> dict[str, Any]:
    from phaseedge import Segmenter, synth
    from phaseedge.metrics import fractions_from_counts
    from phaseedge.result import Result

    if not 0 < level < 1 or fov > size or min(specimens, fovs) < 1:
        raise ValueError(f"need 0 < level < 1, fov <= size, specimens and fovs >= 1; got level={level}, "
                         f"fov={fov}, size={size}, specimens={specimens}, fovs={fovs}")
    rng = np.random.default_rng(seed)
    stats: dict[str, list[np.ndarray]] = {k: [] for k in ("inside", "se", "error", "true_inside", "true_se")}
    with Segmenter(model, backend=backend) as seg:
        n, names = seg.n_classes, seg.class_names
        for s in range(specimens):
            image, mask = synth.micrograph((size, size), n_phases=n, seed=seed + 1000 * s, dtype=np.uint16)
            truth = fractions_from_counts(np.bincount(mask.ravel(), minlength=n)[:n])
            for _ in range(fovs):
                y, x = rng.integers(0, size - fov + 1, 2)
                result = seg.segment(image[y:y + fov, x:x + fov])
                inside, se, err = _covered(result, truth, level)
                true_labels = mask[y:y + fov, x:x + fov]
                counts = np.bincount(true_labels.ravel(), minlength=n)[:n]
                oracle = Result(labels=true_labels, fractions=dict(zip(names, fractions_from_counts(counts).tolist())),
                                class_names=names, counts=counts)
                t_inside, t_se, _ = _covered(oracle, truth, level)
                for k, v in zip(stats, (inside, se, err, t_inside, t_se)):
                    stats[k].append(v)
    a = {k: np.stack(v) for k, v in stats.items()}
    per_class = {c: {"coverage": float(a["inside"][:, i].mean()), "mean_se": float(a["se"][:, i].mean()),
                     "mean_abs_error": float(np.abs(a["error"][:, i]).mean()),
                     "truth_coverage": float(a["true_inside"][:, i].mean()),
                     "truth_mean_se": float(a["true_se"][:, i].mean())} for i, c in enumerate(names)}
    return {"benchmark": "coverage", "model": str(model), "level": level, "specimens": specimens, "size": size,
            "fov": fov, "fovs_per_specimen": fovs, "seed": seed, "per_class": per_class,
            "coverage": float(a["inside"].mean()), "truth_coverage": float(a["true_inside"].mean())}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("coverage", help="do fraction error bars cover the truth at their nominal rate?",
                              description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--model", default="default", help="model (default: the bundled one)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--specimens", type=int, default=4, help="synthetic specimens (default 4)")
    p.add_argument("--size", type=int, default=2048, help="specimen side in pixels (default 2048)")
    p.add_argument("--fov", type=int, default=512, help="field-of-view side in pixels (default 512)")
    p.add_argument("--fovs", type=int, default=10, help="fields of view per specimen (default 10)")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    r = run_coverage(args.model, args.specimens, args.size, args.fov, args.fovs, args.level, args.seed, args.backend)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"{r['level']:.0%} intervals, {r['specimens']} specimens {r['size']}², {r['fovs_per_specimen']} FOVs "
          f"{r['fov']}² each, model {r['model']}")
    print(f"{'phase':<14}{'coverage':>10}{'mean se':>10}{'|error|':>10}{'truth cov.':>12}{'truth se':>10}")
    for c, v in r["per_class"].items():
        print(f"{c:<14}{v['coverage']:>10.2f}{v['mean_se']:>10.4f}{v['mean_abs_error']:>10.4f}"
              f"{v['truth_coverage']:>12.2f}{v['truth_mean_se']:>10.4f}")
    print(f"{'all':<14}{r['coverage']:>10.2f}{'':>20}{r['truth_coverage']:>12.2f}")
    return 0
