"""Labelled micrographs for training and evaluation: folders, split lists, synthetic frames.

A labelled folder is ``DIR/images/NAME.(tif|tiff|png|jpg|jpeg)`` with ``DIR/labels/NAME.png``
(one integer class per pixel). Images larger than their mask are cut top-left to the mask
(the microscope information band, as in MetalDAM); anything else that does not fit fails
with a message naming the file, because a silently skipped or misaligned image poisons a
whole training run.

Each :class:`LabelledImage` keeps the raw frame (what a user hands the runtime, so eval sees
exactly what inference sees) and the frame normalised once as a whole with
:func:`phaseedge.normalize.frame_range` (what training crops from, so a crop is scaled the
way the runtime scales the tile that covers it).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import tifffile

from phaseedge import normalize, synth
from phaseedge.resample import RESCALE_TOLERANCE, resample_frame, resample_mask

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


@dataclass
class LabelledImage:
    """One frame: ``image`` raw grey [H,W] (uint8/uint16/float32), ``mask`` uint8 [H,W],
    ``pixel_size_m`` metres per pixel when known."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    pixel_size_m: float | None = None
    normalized: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.image.shape != self.mask.shape:
            raise ValueError(f"{self.name}: image {self.image.shape} and mask {self.mask.shape} differ")
        self.normalized = normalize.apply(self.image, *normalize.frame_range(self.image))

    def fractions(self, n_classes: int) -> np.ndarray:
        """True phase fractions of the whole frame (Eq. 1), float64 [n]."""
        counts = np.bincount(self.mask.ravel(), minlength=n_classes)[:n_classes]
        return counts / max(1, self.mask.size)


def read_pixel_sizes(path: str | Path) -> dict[str, float]:
    """``image,pixel_size_m`` CSV (a header row, one image a row) -> {name: metres per pixel}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pixel-size table not found: {path}")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"image", "pixel_size_m"} <= set(rows[0]):
        raise ValueError(f"{path}: expected a CSV with columns image,pixel_size_m")
    out: dict[str, float] = {}
    for i, row in enumerate(rows, start=2):
        name = Path(row["image"].strip()).stem
        try:
            value = float(row["pixel_size_m"])
        except ValueError:
            raise ValueError(f"{path}:{i}: pixel_size_m {row['pixel_size_m']!r} is not a number") from None
        if not (math.isfinite(value) and 0 < value < 1e-3):
            raise ValueError(f"{path}:{i}: pixel_size_m must be metres per pixel in (0, 1e-3), got {value}")
        if name in out:
            raise ValueError(f"{path}:{i}: {name} is listed twice")
        out[name] = value
    return out


def to_pixel_size(items: list[LabelledImage], target_m: float) -> list[LabelledImage]:
    """Frames resampled to ``target_m`` metres per pixel with the runtime's resampler
    (masks nearest); frames already within RESCALE_TOLERANCE are kept as they are."""
    out = []
    for it in items:
        if it.pixel_size_m is None:
            raise ValueError(f"{it.name}: no pixel size known; pass a pixel-size table (--pixel-sizes)")
        factor = it.pixel_size_m / target_m
        if abs(factor - 1.0) <= RESCALE_TOLERANCE:
            out.append(it)
            continue
        image = resample_frame(it.image, factor)
        out.append(replace(it, image=image, mask=resample_mask(it.mask, image.shape), pixel_size_m=target_m))
    return out


def read_split(path: str | Path) -> list[str]:
    """Names from a split list: one a line; blank lines and ``#`` comments ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split list not found: {path}")
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(Path(line).stem if Path(line).suffix.lower() in IMAGE_SUFFIXES else line)
    if not names:
        raise ValueError(f"split list {path} names no images")
    return names


def _read_grey(path: Path) -> np.ndarray:
    """Read an image file as it is stored (any channel count), without scaling."""
    if path.suffix.lower() in (".tif", ".tiff"):
        return tifffile.imread(path)
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError(f"{path}: cannot be read as an image")
    if arr.ndim == 3:  # OpenCV gives BGR(A); channel order does not matter for grey checks
        arr = arr[..., :3]
    return arr


def _to_single_channel(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Grey stored as RGB is accepted when the channels are equal; colour is refused."""
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        rgb = arr[..., : min(3, arr.shape[-1])]
        if not all(np.array_equal(rgb[..., 0], rgb[..., c]) for c in range(1, rgb.shape[-1])):
            raise ValueError(f"{path}: {what} has colour channels that differ; expected grey")
        return np.ascontiguousarray(rgb[..., 0])
    raise ValueError(f"{path}: {what} has shape {arr.shape}; expected [H,W] or [H,W,3]")


def read_pair(image_path: Path, mask_path: Path, n_classes: int) -> LabelledImage:
    """Read, band-crop and check one image/mask pair."""
    if not mask_path.is_file():
        raise FileNotFoundError(f"{image_path}: no mask at {mask_path}")
    mask = _read_grey(mask_path)
    mask = _to_single_channel(mask, mask_path, "mask")
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"{mask_path}: mask must hold integers, got {mask.dtype}")
    image = _read_grey(image_path)
    mh, mw = mask.shape
    if image.ndim < 2 or image.shape[0] < mh or image.shape[1] < mw:
        raise ValueError(
            f"{image_path}: image {image.shape[:2]} is smaller than its mask {mask.shape} ({mask_path})"
        )
    image = _to_single_channel(image[:mh, :mw], image_path, "image")  # band crop before grey check
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        raise ValueError(f"{image_path}: pixel type {image.dtype} not supported (uint8, uint16, float32)")
    if image.dtype == np.float32 and not np.isfinite(image).all():
        raise ValueError(f"{image_path}: image holds NaN or inf")
    top = int(mask.max()) if mask.size else 0
    if top >= n_classes or int(mask.min()) < 0:
        raise ValueError(f"{mask_path}: label value {top} outside 0..{n_classes - 1} (n_classes={n_classes})")
    return LabelledImage(image_path.stem, np.ascontiguousarray(image), mask.astype(np.uint8))


def _find_image(images_dir: Path, name: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        for cand in (images_dir / f"{name}{suffix}", images_dir / f"{name}{suffix.upper()}"):
            if cand.is_file():
                return cand
    raise FileNotFoundError(
        f"no image named {name!r} in {images_dir} (looked for {', '.join(IMAGE_SUFFIXES)})"
    )


def load_folder(
    root: str | Path,
    n_classes: int,
    names: list[str] | None = None,
    pixel_sizes: dict[str, float] | None = None,
) -> list[LabelledImage]:
    """Load ``root/images`` + ``root/labels``; ``names`` (a split) selects and orders images;
    ``pixel_sizes`` (from :func:`read_pixel_sizes`) must then name every image loaded."""
    root = Path(root)
    images_dir, labels_dir = root / "images", root / "labels"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise FileNotFoundError(f"{root}: expected sub-folders images/ and labels/")
    if not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    if names is None:
        names = sorted(p.stem for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not names:
            raise ValueError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    if len(set(names)) != len(names):
        raise ValueError(f"{root}: split names repeat an image")
    items = [
        read_pair(p := _find_image(images_dir, n), labels_dir / f"{p.stem}.png", n_classes) for n in names
    ]
    if pixel_sizes is not None:
        missing = [it.name for it in items if it.name not in pixel_sizes]
        if missing:
            raise ValueError(f"the pixel-size table lacks {', '.join(missing[:5])}")
        items = [replace(it, pixel_size_m=pixel_sizes[it.name]) for it in items]
    return items


def synthetic(
    seeds: list[int], shape: tuple[int, int] = (512, 512), n_classes: int = 3, dtype=np.uint16
) -> list[LabelledImage]:
    """Synthetic micrographs from :mod:`phaseedge.synth` (licence-clean, for tests and the demo model)."""
    if not seeds:
        raise ValueError("synthetic data needs at least one seed")
    out = []
    for s in seeds:
        image, mask = synth.micrograph(tuple(shape), n_phases=n_classes, seed=int(s), dtype=dtype)
        out.append(LabelledImage(f"synth-{s}", image, mask))
    return out


def class_frequencies(items: list[LabelledImage], n_classes: int) -> np.ndarray:
    """Pixel frequency of each class over ``items`` (for class weights)."""
    counts = np.zeros(n_classes, np.int64)
    for it in items:
        counts += np.bincount(it.mask.ravel(), minlength=n_classes)[:n_classes]
    return counts / max(1, counts.sum())
