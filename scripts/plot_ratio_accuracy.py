"""Dice vs. ratio accuracy (paper Figure 9 style) from ``phaseedge-train eval --json`` sweeps.

usage: python scripts/plot_ratio_accuracy.py BASELINE.json PLM.json OUT.png [--title T]

The baseline (no PLM, no ratio) is a horizontal line; the PLM model and prior-shift
calibration of either model are curves over the simulated expert's accuracy α, with "exact"
drawn at α = 1 and "none" (zeros) as a separate marker at the left.
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _series(results: list[dict], calibrate: bool) -> tuple[list[float], list[float]]:
    pts = []
    for r in results:
        a = r["ratio_accuracy"]
        if r["calibrate"] != calibrate or a == "none":
            continue
        pts.append((1.0 if a == "exact" else float(a), 100.0 * r["macro_dice"]))
    pts.sort()
    return [p[0] for p in pts], [p[1] for p in pts]


def _none(results: list[dict]) -> float:
    return next(
        100.0 * r["macro_dice"] for r in results if r["ratio_accuracy"] == "none" and not r["calibrate"]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("baseline", help="eval JSON list of the model without PLM")
    ap.add_argument("plm", help="eval JSON list of the model with PLM")
    ap.add_argument("out", help="PNG to write")
    ap.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="LABEL=FILE",
        help="another PLM eval JSON drawn faded (e.g. a shorter run)",
    )
    ap.add_argument("--title", default="MetalDAM validation: macro Dice vs. ratio accuracy")
    args = ap.parse_args()
    with open(args.baseline) as f:
        base = json.load(f)
    with open(args.plm) as f:
        plm = json.load(f)

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.axhline(_none(base), color="0.3", ls="--", label="U-Net baseline (no ratio)")
    ax.plot(*_series(plm, False), "o-", color="C0", label="U-Net + PLM")
    ax.plot(*_series(plm, True), "s:", color="C0", alpha=0.7, label="U-Net + PLM + calibration")
    ax.plot(*_series(base, True), "^-", color="C1", label="U-Net + calibration")
    ax.plot([0.47], [_none(plm)], "o", color="C0", mfc="white", label="U-Net + PLM, ratio unknown (zeros)")
    for i, spec in enumerate(args.extra):
        label, _, path = spec.partition("=")
        with open(path) as f:
            extra = json.load(f)
        ax.plot(*_series(extra, False), "o-", color=f"C{i + 2}", alpha=0.45, label=label)
    ax.set_xlabel("expert ratio accuracy α (Eq. 4-5; 1 = exact)")
    ax.set_ylabel("macro Dice (%)")
    ax.set_title(args.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
