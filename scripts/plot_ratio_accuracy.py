"""Dice vs. ratio accuracy (paper Figure 9 style) from ``phaseedge-train eval --json`` sweeps.

usage: python scripts/plot_ratio_accuracy.py BASELINE.json PLM.json OUT.png [--extra LABEL=FILE] [--title T]
       [--group NAME]   (plot group_dice[NAME], e.g. main3, instead of the 5-class macro Dice)

The baseline (no PLM, no ratio) is a horizontal line; the PLM model and prior-shift
calibration of either model are curves over the simulated expert's accuracy α ("none" =
zeros at the left, "exact" at α = 1). Drawing is `phaseedge.bench.plots.dice_vs_alpha`,
the same chart `phaseedge-bench accuracy` writes.
"""

from __future__ import annotations

import argparse
import json

from phaseedge.bench.plots import dice_vs_alpha

#: expert-free ratios of an eval sweep: drawn as horizontal lines, not on the α axis
EXPERT_FREE = ("auto", "em", "iter2")


def _curve(results: list[dict], calibrate: bool, group: str | None = None) -> dict[str, float]:
    """{α label: Dice in %} for one calibration setting of an eval sweep (macro, or a group's)."""
    def score(r: dict) -> float:
        return r["group_dice"][group] if group else r["macro_dice"]

    return {str(r["ratio_accuracy"]): 100.0 * score(r) for r in results
            if r["calibrate"] == calibrate and r["ratio_accuracy"] not in EXPERT_FREE}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("baseline", help="eval JSON list of the model without PLM")
    ap.add_argument("plm", help="eval JSON list of the model with PLM")
    ap.add_argument("out", help="PNG to write")
    ap.add_argument("--extra", action="append", default=[], metavar="LABEL=FILE",
                    help="another PLM eval JSON drawn as its own curve (e.g. a shorter run)")
    ap.add_argument("--group", help="plot this eval group's Dice (e.g. main3) instead of macro Dice")
    ap.add_argument("--title", default="MetalDAM validation: macro Dice (%) vs. ratio accuracy")
    args = ap.parse_args()
    with open(args.baseline) as f:
        base = json.load(f)
    with open(args.plm) as f:
        plm = json.load(f)
    curves = {
        "U-Net + PLM": _curve(plm, False, args.group),
        "U-Net + PLM + calibration": _curve(plm, True, args.group),
        "U-Net + calibration": _curve(base, True, args.group),
    }
    for spec in args.extra:
        label, _, path = spec.partition("=")
        with open(path) as f:
            curves[label] = _curve(json.load(f), False, args.group)
    baseline = _curve(base, False, args.group)["none"]
    flat = {"U-Net baseline (no ratio)": baseline}
    auto = [r for r in plm if r["ratio_accuracy"] == "auto" and not r["calibrate"]]
    if auto:  # the expert-free ratio (issue: where does an expert beat it?)
        flat["U-Net + PLM, ratio auto (no expert)"] = 100.0 * (auto[0]["group_dice"][args.group] if args.group
                                                               else auto[0]["macro_dice"])
    ylabel = f"{args.group} Dice (%)" if args.group else "macro Dice (%)"
    out = dice_vs_alpha(curves, flat, args.out, title=args.title, ylabel=ylabel)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
