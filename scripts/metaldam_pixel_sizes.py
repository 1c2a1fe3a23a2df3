"""Pixel size of every MetalDAM image, read off the scale bar in its information band.

MetalDAM's metadata.csv gives each image's scale-bar length (e.g. "2.0 um") but not how
many pixels the bar spans; this script measures that in the band below the micrograph:
- 1024-wide frames (white panel, ZEISS-style): the dark horizontal bar with end ticks at
  the panel's left; its length is the longest dark run on one row.
- 1280-wide frames (black band, Hitachi-style): the row of white ticks at the band's top;
  the bar spans the first to the last tick.
It writes ``image,pixel_size_m,magnification,bar_px`` to OUT (the table
``phaseedge-train fit/eval --pixel-sizes`` read) and fails on any frame whose bar it cannot
find. Usage: python scripts/metaldam_pixel_sizes.py ../shared/data/metaldam runs/metaldam_pixel_sizes.csv
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import cv2
import numpy as np


def longest_run(row: np.ndarray) -> int:
    best = run = 0
    for v in row:
        run = run + 1 if v else 0
        best = max(best, run)
    return best


def bar_pixels(grey: np.ndarray, mask_rows: int) -> float:
    """Length in pixels of the scale bar in the band below ``mask_rows``."""
    if grey.shape[1] == 1280:
        # white ticks hanging from the top of the black band, in its right half: columns
        # white in most of the band's first rows
        ticks = (grey[mask_rows + 3 : mask_rows + 13, 600:] > 200).mean(axis=0) > 0.5
        cols = np.nonzero(ticks)[0]
        groups = np.split(cols, np.nonzero(np.diff(cols) > 2)[0] + 1) if cols.size else []
        if len(groups) < 3:
            raise ValueError("no scale ticks found in the black band")
        return float(groups[-1].mean() - groups[0].mean())
    # white panel (its frame is the first dark row and the first columns): the longest dark
    # run inside it is the bar
    rows = np.nonzero((grey[mask_rows:, :300] > 200).mean(axis=1) > 0.5)[0]
    if rows.size == 0:
        raise ValueError("no white information panel below the micrograph")
    top = mask_rows + int(rows[0])
    panel = grey[top : top + 48, 4:300] < 100
    panel = panel[panel.mean(axis=1) < 0.9]  # drop the panel's own border rows
    best = max((longest_run(r) for r in panel), default=0)
    if not 10 <= best <= 290:
        raise ValueError(f"scale bar of {best} px is implausible")
    return float(best)


def main(root: str, out: str) -> int:
    root_p = Path(root)
    meta = {r["image"]: r for r in csv.DictReader((root_p / "metadata.csv").open())}
    rows = []
    for name, m in sorted(meta.items()):
        path = root_p / "images" / f"{name}.jpg"
        if not path.is_file():
            continue
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        unit = {"um": 1e-6, "nm": 1e-9, "mm": 1e-3}[m["scale_bar_units"].strip()]
        px = bar_pixels(grey, int(m["mask_height"]))
        rows.append((name, float(m["scale_bar"]) * unit / px, m["magnification"], px))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "pixel_size_m", "magnification", "bar_px"])
        for name, size, mag, px in rows:
            w.writerow([name, f"{size:.6e}", mag, f"{px:.1f}"])
    sizes = np.array([r[1] for r in rows])
    print(f"{len(rows)} images: pixel size {sizes.min() * 1e9:.1f}-{sizes.max() * 1e9:.1f} nm, "
          f"median {np.median(sizes) * 1e9:.1f} nm -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
