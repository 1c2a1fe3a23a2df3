"""Markdown tables for docs/results.md from `phaseedge-train eval --json` sweeps, so no
number is copied by hand.

usage: python scripts/results_tables.py LABEL=EVAL.json [LABEL=EVAL.json ...] [--forest FOREST.json]
       python scripts/results_tables.py --summary LABEL=EVAL.json ...   (one row per model)

Per model: main-3 / macro-4 / macro-5 pooled Dice, mIoU, fraction MAE at each ratio accuracy,
raw and calibrated (the runtime's calibrate mode), the expert-free estimates where the sweep
has them; then per-class pooled Dice at alpha = 0.9 (raw).
"""

from __future__ import annotations

import argparse
import json

#: expert ratios (none = unknown), then the expert-free estimates (eval --ratio-accuracy auto,em,iter2)
ORDER = ["none", 0.5, 0.662, 0.9, "exact", "auto", "em", "iter2"]


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="LABEL=FILE")
    ap.add_argument("--forest", help="phaseedge-bench forest JSON (no ratio input)")
    ap.add_argument("--summary", action="store_true",
                    help="one row per model: main-3 with no ratio and at alpha = 0.9 (raw and calibrated), "
                         "macro-4/5, MA Dice and fraction MAE at 0.9 raw")
    args = ap.parse_args()
    runs = []
    for spec in args.runs:
        label, _, path = spec.partition("=")
        with open(path) as f:
            runs.append((label, json.load(f)))
    if args.summary:
        summary(runs)
        return
    print("| model | ratio α | calibrated | main-3 Dice | macro-4 Dice | macro-5 Dice | mIoU (5) | fraction MAE (pp) |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for label, results in runs:
        for a in ORDER:
            for cal in (False, True):
                hit = [r for r in results if r["ratio_accuracy"] == a and r["calibrate"] == cal]
                if not hit or (a == "none" and cal):
                    continue
                r = hit[0]
                g = r["group_dice"]
                print(f"| {label} | {a} | {'yes' if cal else 'no'} | {pct(g.get('main3'))} | {pct(g.get('macro4'))} "
                      f"| {pct(r['macro_dice'])} | {pct(r['miou'])} | {100 * r['fraction_mae']:.2f} |")
    if args.forest:
        with open(args.forest) as f:
            fr = json.load(f)["results"]  # phaseedge-bench forest's report
        print(f"| random forest (ilastik features) | — | no | {pct(fr.get('macro_dice_main3'))} "
              f"| {pct(fr.get('macro_dice_4'))} | {pct(fr.get('macro_dice_5'))} | {pct(fr.get('miou'))} "
              f"| {100 * fr['fraction_mae']:.2f} |")
    print()
    names = list(runs[0][1][0]["per_class_dice"])
    print("| model (α = 0.9, raw) | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for label, results in runs:
        r = next(r for r in results if r["ratio_accuracy"] == 0.9 and not r["calibrate"])
        print(f"| {label} | " + " | ".join(pct(r["per_class_dice"][n]) for n in names) + " |")
    if args.forest:
        print("| random forest | " + " | ".join(pct(fr["per_class_dice"][n]) for n in names) + " |")


def _row(results: list[dict], accuracy: object, calibrate: bool) -> dict | None:
    """The sweep's row at one ratio accuracy and calibration; None where the sweep did not run it."""
    return next((r for r in results if r["ratio_accuracy"] == accuracy and r["calibrate"] == calibrate), None)


def summary(runs: list[tuple[str, list[dict]]]) -> None:
    print("| model | main-3, no ratio | main-3, α = 0.9 | main-3, α = 0.9 calibrated | macro-4 | macro-5 "
          "| MA | fraction MAE (pp) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, results in runs:
        none, raw, cal = _row(results, "none", False), _row(results, 0.9, False), _row(results, 0.9, True)
        print(f"| {label} | {pct(none and none['group_dice']['main3'])} | {pct(raw['group_dice']['main3'])} "
              f"| {pct(cal and cal['group_dice']['main3'])} | {pct(raw['group_dice']['macro4'])} | {pct(raw['macro_dice'])} "
              f"| {pct(raw['per_class_dice']['martensite_austenite'])} | {100 * raw['fraction_mae']:.2f} |")


if __name__ == "__main__":
    main()
