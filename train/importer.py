"""``phaseedge-train import``: label exports of other tools -> the labelled folder `fit` reads.

Writes ``OUT/images/NAME.ext`` (copied unchanged), ``OUT/labels/NAME.png`` (uint8 class
index), ``OUT/classes.json`` (class names in index order) and ``OUT/train.txt`` /
``OUT/val.txt`` (a seeded split). Formats of the masks:

- ``integer``: a label TIFF/PNG whose values are the class indices 0..n-1 (napari Labels,
  Fiji, our own exports).
- ``ilastik``: ilastik's exported *Simple Segmentation*: values 1..n (label 1 = the first
  class drawn); 0 would be an unlabelled pixel and is refused.
- ``colour``: an RGB mask with one colour per class; ``--classes`` is then a JSON object
  ``{"ferrite": [255, 0, 0], ...}``. Every pixel must be one of the listed colours exactly
  (JPEG-compressed masks are refused with the stray colours named), and two classes may not
  share a colour.
Masks are matched to images by file stem. Nothing is written unless every pair checks out.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import tifffile
from phaseedge.train.data import IMAGE_SUFFIXES

FORMATS = ("integer", "ilastik", "colour")


def read_mask(path: Path) -> np.ndarray:
    """A mask file as stored (TIFF via tifffile, PNG via OpenCV, colour as RGB)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        arr = tifffile.imread(path)
    else:
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise ValueError(f"{path}: cannot be read as an image")
        if arr.ndim == 3:
            arr = cv2.cvtColor(arr[..., :3], cv2.COLOR_BGR2RGB)
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    return arr


def to_index(mask: np.ndarray, fmt: str, path: Path, classes: list[str] | dict[str, list[int]]) -> np.ndarray:
    """uint8 class indices [H, W] from one mask, or ValueError naming the file and the problem."""
    n = len(classes)
    if fmt == "colour":
        if mask.ndim != 3 or mask.shape[-1] != 3:
            raise ValueError(f"{path}: a colour mask must be RGB, got shape {mask.shape}")
        table = {tuple(int(v) for v in c): i for i, c in enumerate(classes.values())}
        flat = mask.reshape(-1, 3).astype(np.int64)
        codes = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
        uniq, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
        lut = np.full(len(uniq), -1, np.int64)
        for k, code in enumerate(uniq):
            rgb = (int(code >> 16), int((code >> 8) & 255), int(code & 255))
            lut[k] = table.get(rgb, -1)
        if (lut < 0).any():
            stray = sorted(zip(counts[lut < 0], uniq[lut < 0]), reverse=True)[:5]
            named = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255}) x{k}" for k, c in stray)
            raise ValueError(f"{path}: colours not in --classes: {named} (compressed or anti-aliased masks "
                             "cannot be imported; export them losslessly)")
        return lut[inverse].reshape(mask.shape[:2]).astype(np.uint8)
    if mask.ndim != 2:
        raise ValueError(f"{path}: a {fmt} mask must have one channel, got shape {mask.shape}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"{path}: a {fmt} mask must hold integers, got {mask.dtype}")
    m = mask.astype(np.int64)
    if fmt == "ilastik":
        if m.size and m.min() < 1:
            raise ValueError(f"{path}: ilastik Simple Segmentation labels start at 1; found 0 (unlabelled) pixels")
        m = m - 1
    if m.size and (m.min() < 0 or m.max() >= n):
        raise ValueError(f"{path}: label {int(m.max())} outside 0..{n - 1} for {n} classes")
    return m.astype(np.uint8)


def _classes(args: argparse.Namespace) -> list[str] | dict[str, list[int]]:
    if args.format == "colour":
        if args.classes is None:
            raise ValueError("--format colour needs --classes JSON {name: [r, g, b], ...}")
        spec = json.loads(args.classes.read_text())
        if not isinstance(spec, dict) or not spec:
            raise ValueError(f"{args.classes}: expected a JSON object of class name -> [r, g, b]")
        seen: dict[tuple, str] = {}
        for name, rgb in spec.items():
            if not (isinstance(rgb, list) and len(rgb) == 3 and all(isinstance(v, int) and 0 <= v < 256 for v in rgb)):
                raise ValueError(f"{args.classes}: colour of {name!r} must be [r, g, b] integers 0-255, got {rgb!r}")
            if tuple(rgb) in seen:
                raise ValueError(f"{args.classes}: {seen[tuple(rgb)]!r} and {name!r} share the colour {rgb}")
            seen[tuple(rgb)] = name
        return spec
    if args.class_names:
        return [c.strip() for c in args.class_names.split(",") if c.strip()]
    if args.classes is not None:
        names = json.loads(args.classes.read_text())
        if isinstance(names, list) and all(isinstance(c, str) for c in names):
            return names
    raise ValueError("name the classes: --class-names a,b,c (or --classes a JSON list)")


def run(args: argparse.Namespace) -> int:
    classes = _classes(args)
    names = list(classes)
    if len(names) < 2 or len(names) > 254:
        raise ValueError(f"need 2..254 classes, got {len(names)}")
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {args.images}")
    masks = {p.stem: p for p in args.labels.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff")}
    pairs, converted = [], []
    for img in images:
        if img.stem not in masks:
            raise FileNotFoundError(f"{img.name}: no mask named {img.stem}.png/.tif in {args.labels}")
        m = to_index(read_mask(masks[img.stem]), args.format, masks[img.stem], classes)
        pairs.append(img)
        converted.append(m)
    if len({p.stem for p in pairs}) != len(pairs):
        raise ValueError("two images share a file stem; rename one")
    out = args.out
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    for img, m in zip(pairs, converted):
        shutil.copy2(img, out / "images" / img.name)
        if not cv2.imwrite(str(out / "labels" / f"{img.stem}.png"), m):
            raise OSError(f"cannot write {out / 'labels' / (img.stem + '.png')}")
    (out / "classes.json").write_text(json.dumps(names, indent=1) + "\n")
    order = np.random.default_rng(args.seed).permutation(len(pairs))
    n_val = max(1, round(args.val_fraction * len(pairs))) if len(pairs) > 1 else 0
    val = sorted(pairs[i].stem for i in order[:n_val])
    train = sorted(pairs[i].stem for i in order[n_val:])
    (out / "train.txt").write_text("\n".join(train) + "\n")
    (out / "val.txt").write_text("\n".join(val) + ("\n" if val else ""))
    counts = np.bincount(np.concatenate([m.ravel() for m in converted]), minlength=len(names))
    share = ", ".join(f"{n} {100 * c / counts.sum():.1f}%" for n, c in zip(names, counts))
    print(f"imported {len(pairs)} pairs ({len(train)} train, {len(val)} val) -> {out}; classes: {share}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import",
        help="convert images + masks from ilastik / napari / Fiji into a labelled folder",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--images", type=Path, required=True, help="folder of micrographs")
    p.add_argument("--labels", type=Path, required=True, help="folder of masks, matched by file stem")
    p.add_argument("--format", choices=FORMATS, required=True, help="integer, ilastik (Simple Segmentation) or colour")
    p.add_argument("--class-names", help="comma-separated names in index order (integer, ilastik)")
    p.add_argument("--classes", type=Path, help="JSON: a list of names, or for colour {name: [r, g, b]}")
    p.add_argument("--out", type=Path, required=True, help="labelled folder to write")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of images for validation (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.set_defaults(func=run)
