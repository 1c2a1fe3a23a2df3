"""Training crops: one random affine per crop, applied jointly to image and mask.

Every geometric change (position, flip, 90-degree and small-angle rotation, scale) is
folded into one 2x3 matrix and resampled once with ``torch.nn.functional.grid_sample``
straight from the whole normalised frame: bilinear for the image, nearest for the mask,
mirrored outside the frame. One resample means no double interpolation and no crop
margins to get wrong. A share of crops (``class_centred``) is centred on a pixel of a class
drawn uniformly among those in the frame, so rare phases are seen often (nnU-Net's
foreground oversampling). Photometric changes (intensity, contrast, brightness ramp, gamma,
blur, scan-line offsets, noise) follow on the batch. All random draws come from one ``numpy.random.Generator`` so a run is
seedable and its sampler state can be saved for resume.

The PLM's ratio input (paper Sec. 2.1, App. A.2) is what deployment feeds: the *frame's*
ratio as an expert of accuracy alpha would guess it (Eq. 4-5), the same vector for every
crop of that frame, sometimes zeroed ("unknown"). ``RatioConfig.level = "crop"`` keeps the
older per-crop reading (each crop its own ratio) for the ablation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from phaseedge.train.data import LabelledImage
from phaseedge.train.settings import check_known

from phaseedge import ratio as ratio_ops


@dataclass
class AugmentConfig:
    """Ranges of the random changes; set a range to its identity to switch it off."""

    flip: bool = True
    rot90: bool = True
    max_angle: float = 15.0  # degrees, uniform in [-max_angle, max_angle]
    scale: tuple[float, float] = (0.8, 1.25)  # magnification, log-uniform
    brightness: float = 0.08  # additive shift, uniform in [-b, b]
    contrast: tuple[float, float] = (0.8, 1.25)  # multiplicative about the crop mean, log-uniform
    gamma: tuple[float, float] = (0.75, 1.33)  # x ** g, log-uniform
    noise: float = 0.0  # Gaussian noise, sigma uniform in [0, noise] per crop
    blur: float = 0.0  # Gaussian blur (defocus, astigmatism), sigma in pixels uniform in [0, blur] per crop
    gradient: float = 0.0  # linear brightness ramp (uneven detector response), end-to-end change in [-g, g]
    scan_lines: float = 0.0  # per-row additive offset (SEM line jitter), sigma uniform in [0, scan_lines] per crop
    class_centred: float = 0.0  # share of crops centred on a pixel of a uniformly drawn class

    @classmethod
    def from_dict(cls, d: dict) -> AugmentConfig:
        check_known(cls, d, "augmentation")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        cfg = cls(**d)
        for name in ("scale", "contrast", "gamma"):
            lo, hi = getattr(cfg, name)
            if not 0 < lo <= hi:
                raise ValueError(f"augment.{name} must be 0 < low <= high, got {(lo, hi)}")
        for name in ("max_angle", "brightness", "noise", "blur", "gradient", "scan_lines"):
            if getattr(cfg, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0, got {getattr(cfg, name)}")
        if not 0.0 <= cfg.class_centred <= 1.0:
            raise ValueError(f"augment.class_centred must be in [0, 1], got {cfg.class_centred}")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RatioConfig:
    """How the PLM's ratio input is simulated during training (Eq. 4-5)."""

    alpha_min: float = 0.5  # guess accuracy alpha ~ U[alpha_min, 1]
    p_zero: float = 0.2  # probability that a crop gets the all-zero "unknown" ratio
    level: str = "frame"  # "frame": the guess of the whole frame's ratio (as deployed); "crop": the crop's own

    @classmethod
    def from_dict(cls, d: dict) -> RatioConfig:
        check_known(cls, d, "ratio")
        cfg = cls(**d)
        if not 0.0 <= cfg.alpha_min <= 1.0:
            raise ValueError(f"ratio.alpha_min must be in [0, 1], got {cfg.alpha_min}")
        if not 0.0 <= cfg.p_zero <= 1.0:
            raise ValueError(f"ratio.p_zero must be in [0, 1], got {cfg.p_zero}")
        if cfg.level not in ("frame", "crop"):
            raise ValueError(f"ratio.level must be 'frame' or 'crop', got {cfg.level!r}")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if hi > lo else float(lo)


def _crop_matrix(
    rng: np.random.Generator,
    h: int,
    w: int,
    tile: int,
    cfg: AugmentConfig,
    centre: tuple[float, float] | None = None,
) -> np.ndarray:
    """2x3 matrix mapping centred output pixel offsets (u, v) to frame pixel coordinates (x, y).
    ``centre`` (x, y) asks for a crop around that pixel, moved inward as far as the frame allows."""
    half = (tile - 1) / 2.0
    # centre such that an unrotated crop lies inside the frame when the frame allows it
    lo_x, hi_x = min(half, (w - 1) / 2), max(w - 1 - half, (w - 1) / 2)
    lo_y, hi_y = min(half, (h - 1) / 2), max(h - 1 - half, (h - 1) / 2)
    if centre is None:
        cx, cy = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
    else:
        cx, cy = float(np.clip(centre[0], lo_x, hi_x)), float(np.clip(centre[1], lo_y, hi_y))
    cx, cy = round(cx - half) + half, round(cy - half) + half  # on the pixel grid: no blur when unrotated
    k = int(rng.integers(4)) if cfg.rot90 else 0
    angle = math.radians(90.0 * k + (rng.uniform(-cfg.max_angle, cfg.max_angle) if cfg.max_angle else 0.0))
    s = _log_uniform(rng, *cfg.scale)
    flip = -1.0 if (cfg.flip and rng.random() < 0.5) else 1.0
    c, si = math.cos(angle), math.sin(angle)
    lin = s * np.array([[c, -si], [si, c]]) @ np.diag([flip, 1.0])
    return np.concatenate([lin, [[cx], [cy]]], axis=1)


def _resample(
    frame: torch.Tensor, mask: torch.Tensor, mat: np.ndarray, base: torch.Tensor, soft: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Resample one crop (frame, mask: float [1,1,H,W]; ``soft``: [1,n,H,W] class probabilities,
    bilinear like the image) through ``mat``; ``base`` holds the centred output pixel offsets
    (u, v, 1) as [T,T,3]."""
    h, w = frame.shape[-2:]
    # pixel -> grid_sample coordinates (align_corners=True: -1/1 are the edge pixel centres)
    to_grid = np.array([[2.0 / max(w - 1, 1), 0.0, -1.0], [0.0, 2.0 / max(h - 1, 1), -1.0]])
    full = to_grid @ np.vstack([mat, [0.0, 0.0, 1.0]])
    grid = (base @ torch.from_numpy(full.T.astype(np.float32)))[None]  # [1,T,T,2] as (x, y)
    img = F.grid_sample(frame, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    lab = F.grid_sample(mask, grid, mode="nearest", padding_mode="reflection", align_corners=True)
    probs = None
    if soft is not None:
        probs = F.grid_sample(soft, grid, mode="bilinear", padding_mode="reflection", align_corners=True)[0]
    return img[0], lab[0, 0], probs


def photometric(images: torch.Tensor, rng: np.random.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Intensity shift, contrast about the crop mean, brightness ramp, gamma, blur, scan-line
    offsets and noise, per crop, in the order a detector would add them; result in [0, 1].
    A change switched off draws no random numbers, so a config without it keeps its stream."""
    b = images.shape[0]
    shift = torch.tensor(rng.uniform(-cfg.brightness, cfg.brightness, b) if cfg.brightness else np.zeros(b))
    contrast = torch.tensor([_log_uniform(rng, *cfg.contrast) for _ in range(b)])
    gamma = torch.tensor([_log_uniform(rng, *cfg.gamma) for _ in range(b)])
    view = (b, 1, 1, 1)
    x = images
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast.view(view).to(x) + mean + shift.view(view).to(x)
    if cfg.gradient:
        x = x + _ramp(x.shape, rng, cfg.gradient).to(x)
    x = x.clamp(0.0, 1.0) ** gamma.view(view).to(x)
    if cfg.blur:
        x = _gaussian_blur(x, rng.uniform(0.0, cfg.blur, b))
    if cfg.scan_lines:
        sigma = rng.uniform(0.0, cfg.scan_lines, b).astype(np.float32)
        rows = rng.standard_normal((b, 1, x.shape[2], 1), dtype=np.float32) * sigma[:, None, None, None]
        x = x + torch.from_numpy(rows)
    if cfg.noise:
        sigma = rng.uniform(0.0, cfg.noise, b).astype(np.float32)
        x = x + torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32) * sigma[:, None, None, None])
    return x.clamp(0.0, 1.0)


def _ramp(shape: torch.Size, rng: np.random.Generator, amplitude: float) -> torch.Tensor:
    """A linear ramp per crop along a random direction, zero-mean, end to end in [-a, a]."""
    b, _, h, w = shape
    theta = rng.uniform(0.0, 2.0 * math.pi, b)
    amp = rng.uniform(-amplitude, amplitude, b)
    yy, xx = torch.meshgrid(torch.linspace(-0.5, 0.5, h), torch.linspace(-0.5, 0.5, w), indexing="ij")
    c = torch.tensor(np.cos(theta), dtype=torch.float32).view(b, 1, 1, 1)
    s = torch.tensor(np.sin(theta), dtype=torch.float32).view(b, 1, 1, 1)
    # the projection onto (cos, sin) spans |cos| + |sin| over the crop: scale it to one
    span = (c.abs() + s.abs()).clamp_min(1e-6)
    return torch.tensor(amp, dtype=torch.float32).view(b, 1, 1, 1) * (xx * c + yy * s) / span


def _gaussian_blur(x: torch.Tensor, sigmas: np.ndarray) -> torch.Tensor:
    """Separable Gaussian blur of each crop [B,1,H,W] with its own sigma (pixels; 0 = unchanged),
    mirrored at the edges."""
    radius = max(1, math.ceil(3.0 * float(sigmas.max())))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    sig = torch.tensor(np.maximum(sigmas, 1e-3), dtype=torch.float32)[:, None]
    k = torch.exp(-0.5 * (t[None] / sig) ** 2)
    k = (k / k.sum(dim=1, keepdim=True)).to(x)  # [B, K]; a tiny sigma gives a delta
    b = x.shape[0]
    y = F.pad(x.reshape(1, b, *x.shape[2:]), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(b, 1, 1, -1), groups=b)
    y = F.conv2d(y, k.view(b, 1, -1, 1), groups=b)
    return y.reshape_as(x)


class CropSampler:
    """Draws augmented random crops from whole frames, frames chosen in proportion to area."""

    def __init__(self, items: list[LabelledImage], tile: int, cfg: AugmentConfig | None = None,
                 soft: list[np.ndarray] | None = None):
        """``soft``: per frame class probabilities float32 [n,H,W] (a distillation teacher's),
        warped with each crop's affine and returned by ``sample(..., return_soft=True)``."""
        if not items:
            raise ValueError("CropSampler needs at least one image")
        if not isinstance(tile, int) or tile < 8:
            raise ValueError(f"tile must be an integer >= 8, got {tile!r}")
        self.items = items
        self.tile = tile
        self.cfg = cfg or AugmentConfig()
        self._frames = [torch.from_numpy(it.normalized)[None, None] for it in items]
        self._masks = [torch.from_numpy(it.mask.astype(np.float32))[None, None] for it in items]
        if soft is not None and (len(soft) != len(items) or any(
                p.ndim != 3 or p.shape[1:] != it.mask.shape for p, it in zip(soft, items, strict=False))):
            raise ValueError("soft targets must be one [n,H,W] array per frame, on the frame's grid")
        self._soft = [torch.from_numpy(np.asarray(p, np.float32))[None] for p in soft] if soft is not None else None
        r = torch.arange(tile, dtype=torch.float32) - (tile - 1) / 2.0
        v, u = torch.meshgrid(r, r, indexing="ij")
        self._base = torch.stack([u, v, torch.ones_like(u)], dim=-1)
        area = np.array([it.mask.size for it in items], np.float64)
        self._p = area / area.sum()
        self._class_pixels = [_class_pixels(it.mask) for it in items] if self.cfg.class_centred else []

    def sample(
        self, batch: int, rng: np.random.Generator, return_index: bool = False, return_soft: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """Return images float32 [B,1,T,T] in [0,1] and masks int64 [B,T,T], then with
        ``return_index`` the frame each crop came from (int64 [B]), then with ``return_soft``
        the soft targets float32 [B,n,T,T]. The soft targets draw no random numbers."""
        if return_soft and self._soft is None:
            raise ValueError("this sampler holds no soft targets")
        idx = rng.choice(len(self.items), size=batch, p=self._p)
        imgs, labs, softs = [], [], []
        for i in idx:
            h, w = self.items[i].mask.shape
            centre = None
            if self.cfg.class_centred and rng.random() < self.cfg.class_centred:
                pixels = self._class_pixels[i]
                ys, xs = pixels[int(rng.integers(len(pixels)))]
                k = int(rng.integers(len(ys)))
                centre = (float(xs[k]), float(ys[k]))
            mat = _crop_matrix(rng, h, w, self.tile, self.cfg, centre)
            img, lab, soft = _resample(self._frames[i], self._masks[i], mat, self._base,
                                       self._soft[i] if return_soft else None)
            imgs.append(img)
            labs.append(lab)
            softs.append(soft)
        images = photometric(torch.stack(imgs), rng, self.cfg)
        masks = torch.stack(labs).round().to(torch.int64)
        out: tuple[torch.Tensor, ...] = (images, masks)
        if return_index:
            out += (torch.from_numpy(idx.astype(np.int64)),)
        if return_soft:
            out += (torch.stack(softs),)
        return out


def _class_pixels(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rows, cols) of the pixels of each class present in ``mask``, in class order."""
    return [np.nonzero(mask == c) for c in np.unique(mask)]


def true_ratios(masks: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Fraction of each class in each crop (Eq. 1): float32 [B, n]."""
    counts = F.one_hot(masks.reshape(masks.shape[0], -1), n_classes).sum(dim=1)
    return counts.to(torch.float32) / masks[0].numel()


def input_ratios(
    masks: torch.Tensor,
    n_classes: int,
    rng: np.random.Generator,
    cfg: RatioConfig,
    frame_ratios: np.ndarray | None = None,
) -> torch.Tensor:
    """The PLM's ratio input per crop: a true ratio guessed at alpha ~ U[alpha_min, 1]
    (Eq. 4-5), or all zeros ("unknown") with probability ``p_zero``. The true ratio is the
    crop's frame's (``frame_ratios`` [B, n], required for level "frame") or the crop's own."""
    if cfg.level == "frame" and frame_ratios is None:
        raise ValueError("ratio.level 'frame' needs the ratio of each crop's frame")
    out = np.zeros((masks.shape[0], n_classes), np.float32)
    for b, m in enumerate(masks.numpy()):
        if rng.random() < cfg.p_zero:
            continue
        alpha = rng.uniform(cfg.alpha_min, 1.0)
        truth = frame_ratios[b] if cfg.level == "frame" else ratio_ops.from_mask(m, n_classes)
        out[b] = ratio_ops.guess(truth, alpha)
    return torch.from_numpy(out)
