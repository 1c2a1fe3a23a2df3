"""Files people open: what `phaseedge segment` writes for one frame.

- ``NAME_labels.png``: indexed-colour PNG; pixel value = class index, palette = the overlay's
  colours, so any viewer shows the phases in colour and Fiji/ImageJ keeps the indices.
- ``NAME_labels.tif``: plain 16-bit label image (class index; EXCLUDED outside the ROI).
- ``NAME_uncertainty.tif`` (optional): per-pixel entropy of the class probabilities, float32,
  in bits (0 = certain, log2(n) = uniform).
Every file is written to a temporary name beside its target and renamed, so an interrupted
run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

#: label value of pixels outside the region of interest (counted for no phase)
EXCLUDED = 255
#: palette entry of EXCLUDED pixels (black)
EXCLUDED_RGB = (0, 0, 0)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """A staging folder beside ``final`` (mode 0755) that becomes ``final`` by one rename when the
    block ends, or is removed if it raises: readers never see a half-written directory."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the result from other users (a server, a colleague)
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def indexed_png(labels: np.ndarray, colours: np.ndarray) -> bytes:
    """8-bit palette PNG bytes of ``labels`` (uint8 [H, W]) with ``colours`` (uint8 [n, 3]) as
    entries 0..n-1 and EXCLUDED black."""
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise ValueError(f"labels must be uint8 [H, W], got {labels.dtype} {labels.shape}")
    table = np.zeros((256, 3), np.uint8)
    table[: len(colours)] = colours
    table[EXCLUDED] = EXCLUDED_RGB
    h, w = labels.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), labels], axis=1)  # filter byte 0 per row
    return b"".join([
        b"\x89PNG\r\n\x1a\n",
        _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0)),
        _chunk(b"PLTE", table.tobytes()),
        _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)),
        _chunk(b"IEND", b""),
    ])


def entropy_bits(probs: np.ndarray) -> np.ndarray:
    """float32 [H, W] entropy (bits) of class probabilities [n, H, W]."""
    p = np.clip(probs.astype(np.float32), 1e-12, 1.0)
    return -(p * np.log2(p)).sum(axis=0).astype(np.float32)


def write_tiff(path: Path, image: np.ndarray, description: str) -> None:
    import io

    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, image, description=description, metadata=None)
    atomic_write(path, buf.getvalue())


def write_frame_outputs(out: Path, stem: str, labels: np.ndarray, colours: np.ndarray,
                        class_names: tuple[str, ...], probabilities: np.ndarray | None = None) -> dict[str, str]:
    """Write the label PNG and TIFF (and the uncertainty TIFF when probabilities are given);
    returns {kind: file name}."""
    files = {"labels": f"{stem}_labels.png", "labels_tiff": f"{stem}_labels.tif"}
    atomic_write(out / files["labels"], indexed_png(labels, colours))
    legend = "; ".join(f"{i}={c}" for i, c in enumerate(class_names)) + f"; {EXCLUDED}=excluded"
    write_tiff(out / files["labels_tiff"], labels.astype(np.uint16), f"phaseedge labels: {legend}")
    if probabilities is not None:
        files["uncertainty"] = f"{stem}_uncertainty.tif"
        write_tiff(out / files["uncertainty"], entropy_bits(probabilities),
                   "phaseedge uncertainty: entropy of the class probabilities, bits")
    return files
