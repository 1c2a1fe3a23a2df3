"""Reading SEM frames from disk: TIFF (memory-mapped where possible), PNG and JPEG.

A microscope usually burns an information band (data bar: magnification, scale bar,
logos) into the bottom rows of the saved image. It is not micrograph and must not
be segmented, so ``read_image`` removes it: from an explicit ``crop``, from FEI/Thermo
metadata, or by a conservative detector that only fires on a clearly flat, saturated
panel at the bottom. Files are opened read-only and never modified.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile

from phaseedge import normalize

_TIFF_SUFFIXES = {".tif", ".tiff"}
_LENGTH_UNITS = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "\u03bcm": 1e-6, "nm": 1e-9, "pm": 1e-12}

# band detector (see _detect_band): a row is "panel" when this share of its pixels
# sits within _EDGE of the frame's darkest or brightest value
_PANEL_ROW = 0.75
_EDGE = 0.05
_MAX_BAND = 0.35  # never remove more than this share of the rows
_MAX_GAP = 3  # non-panel rows tolerated inside the band (a grey logo line)
_ABOVE = 16  # rows just above the band that must look like micrograph
_ABOVE_MAX = 0.3  # ... i.e. have at most this mean panel share


@dataclass(frozen=True)
class Frame:
    """One grey SEM frame ready for ``Segmenter.segment``.

    ``pixels`` is 2-D and read-only (a memory map for plain TIFFs). ``band_rows`` is how
    many bottom rows were removed as information band (or by ``crop``). ``bits`` is the
    stored bit depth per sample. ``pixel_size_m`` is metres per pixel from SEM metadata,
    or None when the file does not say.
    """

    pixels: np.ndarray
    path: Path
    pixel_size_m: float | None
    band_rows: int
    bits: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape


def read_image(path, crop: tuple[int, int] | None = None, detect_band: bool = True) -> Frame:
    """Read a grey micrograph and drop its information band.

    ``crop=(rows, cols)`` keeps the top-left ``rows x cols`` pixels and disables
    detection. Otherwise, with ``detect_band``, FEI/Thermo metadata (image height below
    the TIFF height) or the detector decide. Colour files are accepted only when the
    colour channels of the kept part are equal (a grey image saved as RGB).
    Raises FileNotFoundError for a missing file and ValueError (naming the path) for an
    unreadable one or unusable content.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such image file: {p}")
    if p.suffix.lower() in _TIFF_SUFFIXES:
        raw, bits, pixel_size, meta_rows = _read_tiff(p)
    else:
        raw, bits = _read_opencv(p)
        pixel_size, meta_rows = None, None

    height = raw.shape[0]
    if crop is not None:
        rows, cols = _check_crop(crop, raw.shape, p)
        raw = raw[:rows, :cols]
    elif detect_band:
        rows = meta_rows if meta_rows is not None else height - _detect_band(_first_channel(raw))
        raw = raw[:rows]
    try:
        pixels = normalize.check_frame(raw)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{p}: {exc}") from exc
    return Frame(pixels=pixels, path=p, pixel_size_m=pixel_size, band_rows=height - raw.shape[0], bits=bits)


def _check_crop(crop, shape, path: Path) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in crop)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"crop must be (rows, cols), got {crop!r}") from exc
    if (rows, cols) != tuple(crop) or not (2 <= rows <= shape[0] and 2 <= cols <= shape[1]):
        raise ValueError(f"crop {crop!r} does not fit image {path} of {shape[0]} x {shape[1]} pixels")
    return rows, cols


def _first_channel(a: np.ndarray) -> np.ndarray:
    return a[..., 0] if a.ndim == 3 else a


def _read_opencv(path: Path) -> tuple[np.ndarray, int]:
    # imdecode from bytes: cv2.imread cannot open non-ASCII paths on some platforms
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ValueError(f"cannot read image {path}: not a format OpenCV can decode (PNG, JPEG, ...)")
    img.flags.writeable = False
    return img, img.dtype.itemsize * 8


def _read_tiff(path: Path) -> tuple[np.ndarray, int, float | None, int | None]:
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            series = tif.series[0]
            bits, axes = int(page.bitspersample), series.axes
            pixel_size = _pixel_size(tif)
            meta_rows = _fei_image_rows(tif, int(page.imagelength))
            arr = None if series.dataoffset is not None else series.asarray(level=0)
        if arr is None:  # contiguous, uncompressed: map it instead of reading it
            try:
                arr = tifffile.memmap(path, mode="r")  # read-only: the file is never written
            except ValueError:  # e.g. a layout numpy cannot map: read into memory
                arr = tifffile.imread(path)
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as exc:
        raise ValueError(f"cannot read TIFF {path}: {exc}") from exc
    arr = _first_image(arr, axes)
    if not isinstance(arr, np.memmap):
        arr.flags.writeable = False
    return arr, bits, pixel_size, meta_rows


def _first_image(arr: np.ndarray, axes: str) -> np.ndarray:
    """The first Y x X image of a series (first page, channel, z...), samples ('S') last."""
    if len(axes) != arr.ndim:
        raise ValueError(f"TIFF series axes {axes!r} do not match its shape {arr.shape}")
    arr = arr[tuple(slice(None) if a in "YXS" else 0 for a in axes)]
    kept = [a for a in axes if a in "YXS"]
    if "S" in kept and kept[-1] != "S":  # planar RGB: (S, Y, X) -> (Y, X, S)
        arr = np.moveaxis(arr, kept.index("S"), -1)
    return arr


def _pixel_size(tif: tifffile.TiffFile) -> float | None:
    """Metres per pixel from FEI/Thermo (``[Scan] PixelWidth``, metres) or Zeiss tags."""
    fei = tif.fei_metadata
    if fei:
        for section in ("Scan", "EScan", "IScan"):
            value = fei.get(section, {}).get("PixelWidth")
            if isinstance(value, (int, float)) and value > 0:
                return float(value)
    sem = tif.sem_metadata
    if sem:
        for key in ("ap_image_pixel_size", "ap_pixel_size"):
            entry = sem.get(key)
            if isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[1], (int, float)):
                scale = _LENGTH_UNITS.get(str(entry[2]).strip())
                if scale is not None and entry[1] > 0:
                    return float(entry[1]) * scale
    return None


def _fei_image_rows(tif: tifffile.TiffFile, height: int) -> int | None:
    """FEI/Thermo store the scan height as ``[Image] ResolutionY``; the data bar lies below it."""
    fei = tif.fei_metadata
    if not fei:
        return None
    rows = fei.get("Image", {}).get("ResolutionY")
    if isinstance(rows, int) and 2 <= rows < height:
        return rows
    return None


def _detect_band(grey: np.ndarray) -> int:
    """Number of bottom rows forming an information panel; 0 unless the evidence is clear.

    A panel row has most pixels at the frame's extremes (flat black or white panel,
    text). The band must start within ``_MAX_GAP`` rows of the bottom (a stray edge row),
    may hold up to ``_MAX_GAP`` consecutive other rows, must not exceed ``_MAX_BAND`` of the height, and the rows above it must
    look like ordinary micrograph.
    """
    h, w = grey.shape
    if h < 4 * _ABOVE:
        return 0
    step = max(1, w // 2048)
    sample = np.asarray(grey[:, ::step], dtype=np.float32)
    lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        return 0
    edge = _EDGE * (hi - lo)
    share = ((sample <= lo + edge) | (sample >= hi - edge)).mean(axis=1)
    panel = share >= _PANEL_ROW
    top = None
    gap = 0
    for r in range(h - 1, h - 1 - int(_MAX_BAND * h), -1):
        if panel[r]:
            top = r
            gap = 0
        else:
            gap += 1
            if gap > _MAX_GAP:
                break
    else:
        return 0  # panel-like rows reach too far up: not a data bar (e.g. a saturated frame)
    if top is None or top < _ABOVE:
        return 0
    if share[top - _ABOVE : top].mean() > _ABOVE_MAX:
        return 0
    return h - top
