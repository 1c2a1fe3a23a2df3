"""Numpy reference of the host-side kernels (see DEVELOPERS.md, "Host ops").

This is the specification the native module `phaseedge._hostops` must match bit for
bit (labels, counts, and — because the arithmetic order is the same — the stitched
sums too), and the fallback when the extension is not built. Use it through
`phaseedge.hostops`, which picks the native module when it is importable.

Arithmetic is float32 throughout and fixed so both implementations agree:
  gather:     v = (float32(x) - float32(lo)) * float32(1 / (hi - lo)), clipped to [0, 1]
  accumulate: w = wy[i] * wx[j];  acc += float32(p) * w;  wsum += w   (tiles in batch order)
  finish:     p = acc / wsum;  score = p * class_weights;  label = first argmax
"""

from __future__ import annotations

import numpy as np

FRAME_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
BATCH_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
_F32 = np.dtype(np.float32)


# ---------------------------------------------------------------- validation helpers
def _array(name: str, a: object, dtypes: tuple[np.dtype, ...], ndim: int) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype not in dtypes:
        allowed = "/".join(str(d) for d in dtypes)
        raise TypeError(f"{name} must have dtype {allowed}, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return a


def _contiguous(name: str, a: np.ndarray) -> None:
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray)")


def _writeable(name: str, a: np.ndarray) -> None:
    if not a.flags.writeable:
        raise ValueError(f"{name} is written in place and must be writeable")


def _rows_contiguous(name: str, a: np.ndarray) -> None:
    """[k, rows, W] whose last two axes are contiguous: a row band of a bigger array is fine."""
    s = a.strides
    if s[2] != a.itemsize or (a.shape[1] > 1 and s[1] != a.shape[2] * a.itemsize) or s[0] < 0:
        raise ValueError(f"{name} must have C-contiguous rows (last two axes), got strides {s}")


def _origins(origins: object, batch: int | None) -> np.ndarray:
    o = _array("origins", origins, (np.dtype(np.int64),), 2)
    if o.shape[1] != 2 or (batch is not None and o.shape[0] != batch):
        want = f"[{batch}, 2]" if batch is not None else "[B, 2]"
        raise ValueError(f"origins must have shape {want} (y, x), got {o.shape}")
    _contiguous("origins", o)
    return o


def _norm_params(lo: float, hi: float) -> tuple[np.float32, np.float32]:
    lo_f, hi_f = float(lo), float(hi)
    if not (np.isfinite(lo_f) and np.isfinite(hi_f)) or hi_f <= lo_f:
        raise ValueError(f"need finite lo < hi, got lo={lo_f}, hi={hi_f}")
    return np.float32(lo_f), np.float32(1.0 / (hi_f - lo_f))


def _mirror(idx: np.ndarray, n: int) -> np.ndarray:
    """Symmetric mirroring (numpy.pad 'symmetric': edge pixel repeated), any distance."""
    m = np.mod(idx, 2 * n)
    return np.where(m >= n, 2 * n - 1 - m, m)


# ---------------------------------------------------------------- kernels
def gather_tiles(frame: np.ndarray, origins: np.ndarray, tile: int, lo: float, hi: float,
                 out: np.ndarray) -> None:
    """Cut tiles at `origins` out of `frame`, normalised, into `out` [B,1,T,T] in place.

    Tiles may hang over the frame edge (pixels mirror symmetrically) but must overlap it.
    """
    _array("frame", frame, FRAME_DTYPES, 2)
    _contiguous("frame", frame)
    _array("out", out, BATCH_DTYPES, 4)
    _contiguous("out", out)
    _writeable("out", out)
    tile = int(tile)
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    batch = out.shape[0]
    if out.shape[1:] != (1, tile, tile):
        raise ValueError(f"out must have shape [B, 1, {tile}, {tile}], got {out.shape}")
    o = _origins(origins, batch)
    lo32, scale32 = _norm_params(lo, hi)
    h, w = frame.shape
    if h < 1 or w < 1:
        raise ValueError(f"frame is empty: shape {frame.shape}")
    for b in range(batch):
        y0, x0 = int(o[b, 0]), int(o[b, 1])
        if not (-tile < y0 < h and -tile < x0 < w):
            raise ValueError(f"origins[{b}] = ({y0}, {x0}): tile {tile} does not overlap frame {h}x{w}")
    for b in range(batch):
        y0, x0 = int(o[b, 0]), int(o[b, 1])
        if 0 <= y0 and y0 + tile <= h and 0 <= x0 and x0 + tile <= w:
            src = frame[y0:y0 + tile, x0:x0 + tile]
        else:
            ry = _mirror(np.arange(y0, y0 + tile), h)
            rx = _mirror(np.arange(x0, x0 + tile), w)
            src = frame[np.ix_(ry, rx)]
        v = (src.astype(np.float32) - lo32) * scale32
        out[b, 0] = np.clip(v, np.float32(0), np.float32(1))


def accumulate(acc: np.ndarray, wsum: np.ndarray, probs: np.ndarray, origins: np.ndarray,
               wy: np.ndarray, wx: np.ndarray) -> None:
    """acc[:, tile] += probs * (wy ⊗ wx), wsum[tile] += wy ⊗ wx, tiles clipped to the band."""
    _array("acc", acc, (_F32,), 3)
    _contiguous("acc", acc)
    _writeable("acc", acc)
    n, h, w = acc.shape
    _array("wsum", wsum, (_F32,), 2)
    _contiguous("wsum", wsum)
    _writeable("wsum", wsum)
    if wsum.shape != (h, w):
        raise ValueError(f"wsum must have shape {(h, w)} like acc's rows, got {wsum.shape}")
    _array("probs", probs, BATCH_DTYPES, 4)
    _contiguous("probs", probs)
    batch, pn, t, t2 = probs.shape
    if pn != n or t != t2:
        raise ValueError(f"probs must have shape [B, {n}, T, T], got {probs.shape}")
    o = _origins(origins, batch)
    for name, a in (("wy", wy), ("wx", wx)):
        _array(name, a, (_F32,), 2)
        _contiguous(name, a)
        if a.shape != (batch, t):
            raise ValueError(f"{name} must have shape {(batch, t)}, got {a.shape}")
    for b in range(batch):
        y0, x0 = int(o[b, 0]), int(o[b, 1])
        ys, ye = max(y0, 0), min(y0 + t, h)
        xs, xe = max(x0, 0), min(x0 + t, w)
        if ys >= ye or xs >= xe:
            continue
        wt = wy[b, ys - y0:ye - y0, None] * wx[b, None, xs - x0:xe - x0]
        p = probs[b, :, ys - y0:ye - y0, xs - x0:xe - x0].astype(np.float32)
        acc[:, ys:ye, xs:xe] += p * wt
        wsum[ys:ye, xs:xe] += wt


def finish(acc: np.ndarray, wsum: np.ndarray, rows: int, labels: np.ndarray, counts: np.ndarray,
           class_weights: np.ndarray | None = None, probs_out: np.ndarray | None = None) -> None:
    """Labels (weighted argmax, ties → lowest class) and class counts of the first `rows` rows.

    Every finished pixel must have been covered (wsum > 0); otherwise ValueError and
    `counts` is left untouched.
    """
    _array("acc", acc, (_F32,), 3)
    _contiguous("acc", acc)
    n, h, w = acc.shape
    _array("wsum", wsum, (_F32,), 2)
    _contiguous("wsum", wsum)
    if wsum.shape != (h, w):
        raise ValueError(f"wsum must have shape {(h, w)} like acc's rows, got {wsum.shape}")
    rows = int(rows)
    if not 0 <= rows <= h:
        raise ValueError(f"rows must be in [0, {h}], got {rows}")
    if n < 1 or n > 256:
        raise ValueError(f"uint8 labels hold 1..256 classes, acc has {n}")
    _array("labels", labels, (np.dtype(np.uint8),), 2)
    _contiguous("labels", labels)
    _writeable("labels", labels)
    if labels.shape != (rows, w):
        raise ValueError(f"labels must have shape {(rows, w)}, got {labels.shape}")
    _array("counts", counts, (np.dtype(np.int64),), 1)
    _contiguous("counts", counts)
    _writeable("counts", counts)
    if counts.shape != (n,):
        raise ValueError(f"counts must have shape {(n,)}, got {counts.shape}")
    if class_weights is not None:
        _array("class_weights", class_weights, (_F32,), 1)
        _contiguous("class_weights", class_weights)
        if class_weights.shape != (n,):
            raise ValueError(f"class_weights must have shape {(n,)}, got {class_weights.shape}")
    if probs_out is not None:
        _array("probs_out", probs_out, BATCH_DTYPES, 3)
        _writeable("probs_out", probs_out)
        if probs_out.shape != (n, rows, w):
            raise ValueError(f"probs_out must have shape {(n, rows, w)}, got {probs_out.shape}")
        _rows_contiguous("probs_out", probs_out)
    if rows == 0:
        return
    ws = wsum[:rows]
    if not np.all(ws > 0):
        bad = np.argwhere(~(ws > 0))[0]
        raise ValueError(f"pixel (row {bad[0]}, col {bad[1]}) of the band has no weight: no tile covered it")
    p = acc[:, :rows] / ws
    score = p if class_weights is None else p * class_weights[:, None, None]
    lab = np.argmax(score, axis=0)
    labels[...] = lab
    counts += np.bincount(lab.ravel(), minlength=n)[:n]
    if probs_out is not None:
        probs_out[...] = p


# ---------------------------------------------------------------- blending windows
def gaussian_1d(tile: int, sigma_scale: float = 0.125, min_weight: float = 1e-3) -> np.ndarray:
    """Separable Gaussian blend window, 1 at the centre, floored at `min_weight` (> 0 so
    every covered pixel keeps some weight and edges still blend)."""
    tile = int(tile)
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    if not sigma_scale > 0 or not 0 < min_weight <= 1:
        raise ValueError(f"need sigma_scale > 0 and 0 < min_weight <= 1, got {sigma_scale}, {min_weight}")
    i = np.arange(tile, dtype=np.float64) - (tile - 1) / 2
    sigma = sigma_scale * tile
    return np.maximum(np.exp(-0.5 * (i / sigma) ** 2), min_weight).astype(np.float32)


def owned_intervals(starts: np.ndarray | list[int], tile: int, length: int) -> np.ndarray:
    """0/1 weights [len(starts), tile] for centre-crop stitching along one axis.

    Each pixel of [0, length) is owned by exactly one tile: the one whose centre is nearest
    (ties → the earlier tile in `starts`). Every pixel must lie inside its owner.
    """
    s = np.asarray(starts, dtype=np.int64).reshape(-1)
    tile, length = int(tile), int(length)
    if tile < 1 or length < 1 or s.size == 0:
        raise ValueError(f"need tile >= 1, length >= 1 and at least one start, got {tile}, {length}, {s.size}")
    p = np.arange(length, dtype=np.int64)
    # twice the distance to each centre s + (tile - 1) / 2, in integers; argmin takes the first on ties
    owner = np.argmin(np.abs(2 * p[:, None] - (2 * s[None, :] + tile - 1)), axis=1)
    outside = (p < s[owner]) | (p >= s[owner] + tile)
    if np.any(outside):
        q = int(np.argmax(outside))
        raise ValueError(f"pixel {q} lies outside its nearest tile (start {s[owner[q]]}, size {tile}): "
                         "the starts leave a gap")
    k = s[:, None] + np.arange(tile, dtype=np.int64)[None, :]
    inside = (k >= 0) & (k < length)
    owned = inside & (owner[np.clip(k, 0, length - 1)] == np.arange(s.size)[:, None])
    return owned.astype(np.float32)
