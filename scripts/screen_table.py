"""Markdown table of a recipe screen (scripts/gpu_screen.sh): per variant, each seed's
validation main-3 pooled Dice at the epoch the fit keeps (the ``best_epoch`` its ``log.jsonl``
records: best ``select_classes`` Dice, macro-4 in the recipe) and at the last epoch, and their means.

usage: python scripts/screen_table.py SCREEN_DIR   (runs named VARIANT-sSEED)
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from phaseedge.train.evaluate import METALDAM_GROUPS

MAIN3 = METALDAM_GROUPS["main3"]


def main3(record: dict) -> float:
    per_class = record["val"]["per_class_dice"]
    return 100 * sum(per_class[c] for c in MAIN3) / len(MAIN3)


def run_scores(log: Path) -> tuple[float, float, int]:
    """(main-3 at the kept epoch, main-3 at the last epoch, number of epochs)."""
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{log} holds no epoch")
    kept = next(r for r in records if r["epoch"] == records[-1]["best_epoch"])  # what fit kept
    return main3(kept), main3(records[-1]), len(records)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("screen_dir", type=Path)
    args = ap.parse_args()
    by_variant: dict[str, dict[int, tuple[float, float, int]]] = defaultdict(dict)
    for log in sorted(args.screen_dir.glob("*/log.jsonl")):
        m = re.fullmatch(r"(.+)-s(\d+)", log.parent.name)
        if m is None:
            raise ValueError(f"{log.parent.name}: expected VARIANT-sSEED")
        by_variant[m[1]][int(m[2])] = run_scores(log)
    if not by_variant:
        raise SystemExit(f"no */log.jsonl under {args.screen_dir}")
    print("| variant | seeds | main-3 per seed (kept epoch) | mean | mean of seeds 0, 1 | last-epoch mean | epochs |")
    print("|---|---|---|---:|---:|---:|---|")
    for variant, seeds in sorted(by_variant.items(), key=lambda kv: -sum(s[0] for s in kv[1].values()) / len(kv[1])):
        kept = [seeds[s][0] for s in sorted(seeds)]
        last = [seeds[s][1] for s in sorted(seeds)]
        epochs = sorted({seeds[s][2] for s in seeds})
        first2 = [seeds[s][0] for s in (0, 1) if s in seeds]
        pair = f"{sum(first2) / len(first2):.1f}" if len(first2) == 2 else "—"
        print(f"| {variant} | {', '.join(map(str, sorted(seeds)))} | {' / '.join(f'{k:.1f}' for k in kept)} "
              f"| {sum(kept) / len(kept):.1f} | {pair} | {sum(last) / len(last):.1f} | {', '.join(map(str, epochs))} |")


if __name__ == "__main__":
    main()
