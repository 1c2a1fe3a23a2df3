"""Corrections become training data: one frame and its label map written as a training pair.

The layout is the labelled folder `phaseedge-train fit` reads (`phaseedge.train.data.load_folder`)
and `phaseedge-train import` writes: ``ROOT/images/NAME.tif`` (the frame's own pixels),
``ROOT/labels/NAME.png`` (uint8 class index per pixel), ``ROOT/classes.json`` (class names in
index order) and the split lists ``ROOT/train.txt`` / ``ROOT/val.txt``. Every file goes
through `phaseedge.outputs.atomic_write`, so an interrupted export never leaves a
half-written file under its final name. Qt-free.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import tifffile

from phaseedge.normalize import check_frame
from phaseedge.outputs import EXCLUDED, atomic_write

SPLITS = ("train", "val")
CLASSES_FILE = "classes.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def split_path(root: Path, split: str) -> Path:
    return root / f"{split}.txt"


def write_training_pair(root: str | Path, name: str, image: np.ndarray, labels: np.ndarray,
                        class_names: Sequence[str], split: str = "train") -> dict[str, Path]:
    """Write ``image`` + ``labels`` as pair ``name`` under ``root`` and list it in ``split``.

    Refused with ValueError, before anything is written: a name that is not a plain file
    stem, a frame `check_frame` rejects, labels of another shape or outside 0..n-1 (an
    erased pixel, label `EXCLUDED`, has no class: paint it first), class names that differ
    from the folder's ``classes.json``, or a name already listed in the other split.
    Exporting the same name again replaces its files. Returns {kind: path written}.
    """
    root = Path(root)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"training pair name must be a plain file stem (letters, digits, . _ -), "
                         f"got {name!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    names = [str(c) for c in class_names]
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"need at least two distinct class names, got {names}")
    frame = check_frame(image)
    lab = np.asarray(labels)
    if lab.shape != frame.shape:
        raise ValueError(f"labels {lab.shape} and image {frame.shape} differ in shape")
    if lab.dtype.kind not in "ui":
        raise ValueError(f"labels must be integers, got {lab.dtype}")
    erased = int(np.count_nonzero(lab == EXCLUDED))
    if erased:
        raise ValueError(f"{erased} pixels have no class (erased); paint them a phase before exporting")
    bad = (lab < 0) | (lab >= len(names))
    if bad.any():
        raise ValueError(f"label value {int(lab[bad].flat[0])} is not a class (0..{len(names) - 1}: "
                         f"{', '.join(names)})")
    classes_file = root / CLASSES_FILE
    if classes_file.is_file():
        try:
            existing = json.loads(classes_file.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{classes_file} is not a JSON list of class names: {exc}") from exc
        if existing != names:
            raise ValueError(f"{classes_file} lists classes {existing}, this model has {names}: "
                             "export into another folder")
    other = next(s for s in SPLITS if s != split)
    if name in _listed(split_path(root, other)):
        raise ValueError(f"{name} is already listed in {split_path(root, other)}; pick another name")

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ascontiguousarray(frame), metadata=None)
    paths = {"image": root / "images" / f"{name}.tif", "labels": root / "labels" / f"{name}.png",
             "classes": classes_file, "split": split_path(root, split)}
    atomic_write(paths["image"], buf.getvalue())
    ok, png = cv2.imencode(".png", np.ascontiguousarray(lab, dtype=np.uint8))  # plain grey: values = classes
    if not ok:
        raise OSError(f"cannot encode the label PNG for {name}")
    atomic_write(paths["labels"], png.tobytes())
    atomic_write(classes_file, (json.dumps(names, indent=1) + "\n").encode())
    if name not in _listed(paths["split"]):  # appended: the list's own lines and comments stay
        text = paths["split"].read_text() if paths["split"].is_file() else ""
        if text and not text.endswith("\n"):
            text += "\n"
        atomic_write(paths["split"], f"{text}{name}\n".encode())
    return paths


def _listed(path: Path) -> list[str]:
    """Names in a split list (blank lines and # comments dropped), [] when it does not exist."""
    if not path.is_file():
        return []
    return [s for s in (line.split("#", 1)[0].strip() for line in path.read_text().splitlines()) if s]
