"""Synthetic SEM-like micrographs of steel with exact phase masks.

Licence-clean data for tests, the demo and the bundled model. Phases differ the way
steel phases do in secondary-electron images: by local texture first and grey level
second, with grey levels that overlap (per-grain contrast, a brightness gradient and
noise), so no single global threshold separates them but a small CNN can.

Everything except the shot noise is a function of the pixel coordinates (integer
hashes, jittered seed grids), so the image is generated in row chunks with small
temporaries: 16k x 16k needs little more memory than the output arrays themselves.
"""

from __future__ import annotations

import numpy as np

PHASE_NAMES: tuple[str, ...] = ("ferrite", "martensite", "bainite", "austenite", "precipitate")

_MIN_SIDE = 8
_DTYPES = (np.uint8, np.uint16, np.float32)


def class_names(n: int) -> list[str]:
    """Names of the first ``n`` synthetic phases (class index = position)."""
    if not isinstance(n, (int, np.integer)) or not 1 <= n <= len(PHASE_NAMES):
        raise ValueError(f"n must be an integer in [1, {len(PHASE_NAMES)}], got {n!r}")
    return list(PHASE_NAMES[:n])


# --------------------------------------------------------------------------- noise
def _hash(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Integer lattice hash -> uniform float32 in [0, 1). Wrapping uint32 arithmetic."""
    h = ix.astype(np.uint32) * np.uint32(0x8DA6B343)
    h ^= iy.astype(np.uint32) * np.uint32(0xD8163841)
    h ^= np.uint32((salt * 0x9E3779B1) & 0xFFFFFFFF)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0x5BD1E995)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x27D4EB2F)
    h ^= h >> np.uint32(16)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _value_noise(x: np.ndarray, y: np.ndarray, salt: int) -> np.ndarray:
    """Smooth value noise in [0, 1) at lattice spacing 1 (scale the coordinates first)."""
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = x - x0
    fy = y - y0
    fx = fx * fx * (3.0 - 2.0 * fx)
    fy = fy * fy * (3.0 - 2.0 * fy)
    ix = x0.astype(np.int64)
    iy = y0.astype(np.int64)
    a = _hash(ix, iy, salt)
    b = _hash(ix + 1, iy, salt)
    c = _hash(ix, iy + 1, salt)
    d = _hash(ix + 1, iy + 1, salt)
    top = a + (b - a) * fx
    bot = c + (d - c) * fx
    return (top + (bot - top) * fy).astype(np.float32)


# ---------------------------------------------------------------------- textures
def _ferrite(x, y, g, salt):
    """Smooth grains: faint low-frequency shading only."""
    return 0.05 * (_value_noise(x / 45.0, y / 45.0, salt) - 0.5)


def _martensite(x, y, g, salt):
    """Laths: wavy parallel stripes, two packet orientations per grain."""
    packet = _value_noise(x / 40.0, y / 40.0, salt + 1) > 0.5
    th = np.where(packet, g["theta"], g["theta2"])
    proj = x * np.cos(th) + y * np.sin(th)
    w = proj / g["lam"] + 1.2 * _value_noise(x / 28.0, y / 28.0, salt + 2)
    s = np.sin(2.0 * np.pi * w)
    return 0.13 * np.tanh(2.5 * s) + 0.05 * (_value_noise(x / 6.0, y / 6.0, salt + 3) - 0.5)


def _bainite(x, y, g, salt):
    """Sheaves of short bright carbide needles on a grey ferritic matrix."""
    c, s = np.cos(g["theta"]), np.sin(g["theta"])
    u = x * c + y * s
    v = -x * s + y * c
    n = _value_noise(u / 16.0, v / 2.2, salt + 4)
    needles = np.clip((n - 0.62) * 5.0, 0.0, 1.0)
    return 0.30 * needles + 0.04 * (_value_noise(x / 12.0, y / 12.0, salt + 5) - 0.5)


def _austenite(x, y, g, salt):
    """Smooth grains crossed by straight annealing-twin bands."""
    proj = x * np.cos(g["theta"]) + y * np.sin(g["theta"])
    bands = np.floor(proj / g["twin"] + 0.6 * _value_noise(x / 80.0, y / 80.0, salt + 6)) % 2
    return 0.06 * bands - 0.03 + 0.03 * (_value_noise(x / 40.0, y / 40.0, salt + 7) - 0.5)


_TEXTURES = (_ferrite, _martensite, _bainite, _austenite)
_BASE_GREY = (0.40, 0.50, 0.44, 0.58)  # overlapping on purpose, see module docstring


# ---------------------------------------------------------------------- generator
def _check_args(shape, n_phases, dtype, band) -> tuple[int, int, int, np.dtype]:
    if not isinstance(shape, (tuple, list)) or len(shape) != 2:
        raise ValueError(f"shape must be (height, width), got {shape!r}")
    h, w = (int(s) for s in shape)
    if h != shape[0] or w != shape[1] or h < _MIN_SIDE or w < _MIN_SIDE:
        raise ValueError(f"shape must be two integers >= {_MIN_SIDE}, got {shape!r}")
    if not isinstance(n_phases, (int, np.integer)) or not 1 <= n_phases <= len(PHASE_NAMES):
        raise ValueError(f"n_phases must be an integer in [1, {len(PHASE_NAMES)}], got {n_phases!r}")
    dt = np.dtype(dtype)
    if dt not in [np.dtype(d) for d in _DTYPES]:
        raise TypeError(f"dtype must be uint8, uint16 or float32, got {dt}")
    if not isinstance(band, (int, np.integer)) or band < 0 or h - band < _MIN_SIDE:
        raise ValueError(f"band must be an integer in [0, {h - _MIN_SIDE}] for height {h}, got {band!r}")
    return h, w, int(band), dt


def micrograph(
    shape: tuple[int, int],
    n_phases: int = 3,
    seed: int = 0,
    dtype=np.uint16,
    band: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image, mask)``: an SEM-like steel micrograph and its phase labels.

    ``shape`` is the full image (height, width). ``band`` > 0 adds a microscope
    information panel in the bottom ``band`` rows; the mask then covers only the
    micrograph rows, shape ``(height - band, width)``, as in MetalDAM. ``mask`` is
    uint8 with values ``0..n_phases-1`` named by ``class_names(n_phases)``. Phase 4
    (precipitate) is a class only when ``n_phases == 5``; with fewer phases the bright
    precipitate particles belong to the grain around them. ``image`` is uint8 / uint16
    over the full range, or float32 in [0, 1]. The same arguments give the same arrays.
    """
    h, w, band, dt = _check_args(shape, n_phases, dtype, band)
    hm = h - band
    rng = np.random.default_rng([int(seed), 0x5E11])

    grain_px = float(rng.uniform(48.0, 80.0))  # a 256 tile holds several grains
    n_grain_phases = min(n_phases, len(_TEXTURES))
    weights = rng.dirichlet(np.full(n_grain_phases, 2.0))
    weights = 0.1 / n_grain_phases + 0.9 * weights  # every phase present in big frames

    ncy = int(np.ceil(hm / grain_px)) + 2
    ncx = int(np.ceil(w / grain_px)) + 2
    jitter = 0.9
    sy = ((np.arange(ncy)[:, None] - 1 + 0.5 + jitter * (rng.random((ncy, ncx)) - 0.5)) * grain_px).astype(
        np.float32
    )
    sx = ((np.arange(ncx)[None, :] - 1 + 0.5 + jitter * (rng.random((ncy, ncx)) - 0.5)) * grain_px).astype(
        np.float32
    )
    grain = {
        "phase": rng.choice(n_grain_phases, size=ncy * ncx, p=weights).astype(np.uint8),
        "offset": rng.normal(0.0, 0.055, ncy * ncx).astype(np.float32),
        "theta": rng.uniform(0, np.pi, ncy * ncx).astype(np.float32),
        "theta2": rng.uniform(0, np.pi, ncy * ncx).astype(np.float32),
        "lam": rng.uniform(5.0, 9.0, ncy * ncx).astype(np.float32),
        "twin": rng.uniform(10.0, 22.0, ncy * ncx).astype(np.float32),
    }
    salt = int(rng.integers(1, 2**31 - 1))

    prec_cell = 40.0
    pcy, pcx = int(np.ceil(hm / prec_cell)) + 1, int(np.ceil(w / prec_cell)) + 1
    prec_on = rng.random((pcy, pcx)) < (0.35 if n_phases >= 5 else 0.12)
    prec_r = rng.uniform(1.8, 5.0, (pcy, pcx)).astype(np.float32)
    prec_y = ((np.arange(pcy)[:, None] + 0.5) * prec_cell + (rng.random((pcy, pcx)) - 0.5) * 24).astype(
        np.float32
    )
    prec_x = ((np.arange(pcx)[None, :] + 0.5) * prec_cell + (rng.random((pcy, pcx)) - 0.5) * 24).astype(
        np.float32
    )

    grad = rng.normal(0.0, 0.07, 3).astype(np.float32)  # brightness gradient x, y, vignetting
    photons = float(rng.uniform(150.0, 400.0))  # shot noise: variance = signal / photons
    read_sigma = float(rng.uniform(0.01, 0.025))  # detector (Gaussian) noise

    image = np.empty((h, w), dtype=dt)
    mask = np.empty((hm, w), dtype=np.uint8)
    xs = np.arange(w, dtype=np.float32)[None, :]
    cx = np.floor(xs[0] / grain_px).astype(np.int64) + 1
    # chunks are the rows of one seed-grid row: each pixel's 3x3 candidate cells then
    # vary only along x, so their seeds are 1-D gathers broadcast over the chunk
    cell_row = np.floor(np.arange(hm, dtype=np.float64) / grain_px).astype(np.int64)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(cell_row)) + 1, [hm]])
    for y0, y1 in zip(starts[:-1].tolist(), starts[1:].tolist()):
        ys = np.arange(y0, y1, dtype=np.float32)[:, None]
        cy = int(cell_row[y0]) + 1
        d1 = np.full((y1 - y0, w), np.inf, np.float32)
        d2 = np.full_like(d1, np.inf)
        gid = np.zeros(d1.shape, np.int32)
        tmp = np.empty_like(d1)
        for dy in (-1, 0, 1):
            iy = min(max(cy + dy, 0), ncy - 1)
            for dx in (-1, 0, 1):
                ix = np.clip(cx + dx, 0, ncx - 1)
                d = np.square(ys - sy[iy, ix][None, :])
                d += np.square(xs - sx[iy, ix][None, :])
                np.maximum(d1, d, out=tmp)
                np.minimum(d2, tmp, out=d2)  # second nearest = min(d2, max(d1, d))
                closer = d < d1
                np.minimum(d1, d, out=d1)
                np.copyto(gid, (iy * ncx + ix).astype(np.int32)[None, :], where=closer)
        labels = grain["phase"][gid]
        value = np.empty(d1.shape, np.float32)
        yy, xx = np.broadcast_arrays(ys, xs)
        for k in range(n_grain_phases):
            sel = labels == k
            if not sel.any():
                continue
            g = {key: arr[gid[sel]] for key, arr in grain.items() if key != "phase"}
            value[sel] = _BASE_GREY[k] + g["offset"] + _TEXTURES[k](xx[sel], yy[sel], g, salt + 17 * k)
        # grain boundaries: etched, dark, about 2 px wide
        gb = (np.sqrt(d2) - np.sqrt(d1)) * 0.5
        value -= 0.16 * np.clip(1.2 - gb, 0.0, 1.0)

        # precipitates: at most one round particle per 40 px cell, brightest at its centre
        py = np.minimum((ys // prec_cell).astype(np.int64), pcy - 1)
        px = np.minimum((xs // prec_cell).astype(np.int64), pcx - 1)
        dist = np.sqrt((ys - prec_y[py, px]) ** 2 + (xs - prec_x[py, px]) ** 2)
        inside = prec_on[py, px] & (dist <= prec_r[py, px])
        value = np.where(inside, 0.86 - 0.08 * dist / prec_r[py, px], value)
        if n_phases >= 5:
            labels = np.where(inside, np.uint8(4), labels)
        mask[y0:y1] = labels

        # brightness gradient (detector position) and vignetting
        u = xs / w - 0.5
        v = ys / h - 0.5
        value *= 1.0 + grad[0] * u + grad[1] * v - abs(grad[2]) * (u * u + v * v)

        # SEM noise: Poisson-Gaussian, Poisson approximated by signal-dependent Gaussian
        noise_rng = np.random.default_rng([int(seed), 0xA015E, y0])  # per chunk: deterministic
        sigma = np.sqrt(np.clip(value, 0.0, None) / photons + read_sigma**2)
        value += sigma * noise_rng.standard_normal(value.shape, dtype=np.float32)
        image[y0:y1] = _to_dtype(value, dt)

    if band:
        image[hm:] = _to_dtype(_info_panel(band, w, rng), dt)
    return image, mask


def _info_panel(band: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A microscope data bar: black panel, white text-like glyph rows and a scale bar."""
    panel = np.zeros((band, w), np.float32)
    panel[:2] = 1.0  # frame line
    glyph_h = max(2, min(12, band // 3))
    y = 4
    while y + glyph_h <= band - 2:
        x = 6
        while x < w - 10:
            gw = int(rng.integers(2, 8))
            if rng.random() < 0.8:
                panel[y : y + glyph_h, x : x + gw] = 1.0
            x += gw + int(rng.integers(1, 4)) + (8 if rng.random() < 0.15 else 0)
        y += glyph_h + max(2, glyph_h // 2)
    bar_w = max(4, w // 8)
    bar_y = max(2, band // 2)
    panel[bar_y : bar_y + 2, w - bar_w - 8 : w - 8] = 1.0
    return panel


def _to_dtype(value: np.ndarray, dt: np.dtype) -> np.ndarray:
    v = np.clip(value, 0.0, 1.0)
    if dt == np.float32:
        return v.astype(np.float32)
    top = np.iinfo(dt).max
    return np.rint(v * top).astype(dt)
