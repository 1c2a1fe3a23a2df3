"""The training loop: Adam on Dice+CE+ratio-MSE (the CE target optionally mixed with a
teacher's probabilities, :mod:`phaseedge.train.distill`) over a fixed number of iterations
(epochs x steps), poly learning-rate decay, validation on whole frames, resumable state.

``OUT/`` after a run:
- ``config.json``  the full :class:`FitConfig` (what to pass back with ``--config``)
- ``log.jsonl``    one line per epoch: losses, validation metrics, gamma/delta of the PLM
- ``pretrain.json`` when ``pretrain.steps`` > 0: the self-supervised stage's loss curve and minutes
  (:mod:`phaseedge.train.pretrain`, run before the first epoch and counted in the fit's minutes)
- ``state/``       resume point: trainable weights + buffers (and their EMA), optimizer moments, epoch/step,
                   sampler and torch RNG (safetensors + JSON, no pickles)
- ``best/``        the best epoch by validation Dice (of the EMA weights when ``ema`` is set): a LoRA-merged checkpoint
                   (``phaseedge.train.checkpoint``) plus ``trainable.safetensors`` and ``metrics.json``

Validation runs as deployment does: each whole validation frame goes through
:class:`phaseedge.Segmenter` (tiles, overlap, blending, the model's pixel size) with the
frame-level ratio an expert of accuracy ``val_ratio_accuracy`` would give (the paper's 90 %
by default; ``None`` = no ratio), fed as ``val_ratio_mode`` feeds it. The best epoch is the
one with the highest mean pooled Dice over ``select_classes`` (all classes when unset).

Frames are resampled to one pixel size for training when ``pixel_size_m`` is set
("median": the training frames' median), which is stored in the checkpoint so the runtime
resamples the same way.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from phaseedge.train import checkpoint
from phaseedge.train.augment import (
    AugmentConfig,
    CropSampler,
    RatioConfig,
    input_ratios,
    true_ratios,
)
from phaseedge.train.data import LabelledImage, class_frequencies, to_pixel_size
from phaseedge.train.distill import DistillConfig, teacher_probabilities
from phaseedge.train.losses import LossConfig, resolve_class_weights, segmentation_loss
from phaseedge.train.models import build_model, load_sam_checkpoint
from phaseedge.train.pretrain import PretrainConfig, pretrain
from phaseedge.train.settings import check_known
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from phaseedge.segmenter import Segmenter
from phaseedge.strategies import RATIO_MODES

STATE_VERSION = 1
#: the step count of the weight average, beside its tensors in state/ema.safetensors
EMA_COUNT = "ema.n_averaged"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("adam", "sgd")


def make_optimizer(name: str, params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam (the recipe), or nnU-Net's SGD: Nesterov momentum 0.99, which its poly schedule assumes."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.99, nesterov=True, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a precision setting means on ``device`` (None: plain fp32).
    fp16 needs a GradScaler and CUDA; bf16 has fp32's range and runs on CPUs too."""
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' on a CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@dataclass
class FitConfig:
    """Everything that defines a run. ``None`` fields take per-architecture defaults."""

    model: str = "unet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    sam_checkpoint: str | None = None  # official SAM weights (e.g. sam_vit_b_01ec64.pth) for sam-* models
    plm: bool = True
    tile: int = 256
    class_names: list[str] | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    crops_per_epoch: int | None = None  # default: training area / tile area, at least 8 batches
    max_minutes: float | None = None
    seed: int = 0
    precision: str = "auto"  # autocast: "auto" (fp16 on CUDA, fp32 on CPU), "fp32", "bf16", "fp16" (CUDA)
    channels_last: bool = False  # NHWC activations: with bf16, 2.3x faster U-Net steps on a CPU (docs/results.md)
    num_threads: int = 1  # OpenMP threads spin-wait when cores are shared: 1 is far faster on a busy box
    val_ratio_accuracy: float | None = 0.9
    val_ratio_mode: str = "global"  # how validation feeds the ratio (a Segmenter ratio_mode)
    select_classes: list[str] | None = None  # best epoch by mean Dice over these (None: all)
    lr_schedule: str = "poly"  # "poly": lr * (1 - it / total) ** 0.9 (nnU-Net); "constant"
    optimizer: str = "adam"  # "adam", or "sgd": nnU-Net's SGD with Nesterov momentum 0.99 (give it lr ~1e-2)
    weight_decay: float = 0.0  # L2 on the trainable weights (nnU-Net: 3e-5 with SGD)
    ema: float | None = None  # weight EMA decay per step (e.g. 0.999): validate and keep the average
    pixel_size_m: float | str | None = None  # train at one pixel size: metres, "median" or None
    trained_on: str | None = None  # dataset name recorded in the checkpoint ("synthetic" for phaseedge.synth)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    ratio: RatioConfig = field(default_factory=RatioConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # self-supervised first stage (U-Nets)
    distill: DistillConfig = field(default_factory=DistillConfig)  # a teacher's probabilities in the CE target

    @classmethod
    def from_dict(cls, d: dict) -> FitConfig:
        d = dict(d)
        check_known(cls, d, "training")
        sub = {
            "augment": AugmentConfig.from_dict(d.pop("augment", {}) or {}),
            "ratio": RatioConfig.from_dict(d.pop("ratio", {}) or {}),
            "loss": LossConfig.from_dict(d.pop("loss", {}) or {}),
            "pretrain": PretrainConfig.from_dict(d.pop("pretrain", {}) or {}),
            "distill": DistillConfig.from_dict(d.pop("distill", {}) or {}),
        }
        return cls(**d, **sub).checked()

    def to_dict(self) -> dict:
        return asdict(self)

    def checked(self) -> FitConfig:
        for name in ("epochs", "batch_size", "crops_per_epoch", "tile", "num_threads"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be > 0, got {self.max_minutes}")
        if self.sam_checkpoint and not self.model.startswith("sam"):
            raise ValueError(f"sam_checkpoint is for sam-* models, not {self.model!r}")
        if self.val_ratio_accuracy is not None and not 0 <= self.val_ratio_accuracy <= 1:
            raise ValueError(f"val_ratio_accuracy must be in [0, 1] or null, got {self.val_ratio_accuracy}")
        if self.val_ratio_mode not in RATIO_MODES:
            raise ValueError(f"val_ratio_mode must be one of {', '.join(RATIO_MODES)}, got {self.val_ratio_mode!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.ema is not None and (isinstance(self.ema, bool) or not isinstance(self.ema, (int, float))
                                     or not 0.0 < self.ema < 1.0):
            raise ValueError(f"ema must be a decay in (0, 1) or null, got {self.ema!r}")
        if self.lr_schedule not in ("poly", "constant"):
            raise ValueError(f"lr_schedule must be 'poly' or 'constant', got {self.lr_schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not 0.0 <= wd < 1.0:
            raise ValueError(f"weight_decay must be a number in [0, 1), got {wd!r}")
        ps = self.pixel_size_m
        if ps is not None and ps != "median" and (
            isinstance(ps, bool) or not isinstance(ps, (int, float)) or not 0 < ps < 1e-3
        ):
            raise ValueError(f"pixel_size_m must be metres per pixel, 'median' or null, got {ps!r}")
        return self

    def resolved(self, train_items: list[LabelledImage]) -> FitConfig:
        """Fill the defaults: the paper's for SAM (lr 1e-5, batch 8, 40 epochs), CPU-sized for U-Nets."""
        sam = self.model.startswith("sam")
        c = copy.deepcopy(self)
        c.lr = c.lr if c.lr is not None else (1e-5 if sam else 1e-3)
        c.batch_size = c.batch_size or 8
        c.epochs = c.epochs or (40 if sam else 30)
        if c.crops_per_epoch is None:
            area = sum(it.mask.size for it in train_items)
            c.crops_per_epoch = max(8 * c.batch_size, math.ceil(area / c.tile**2))
        return c


# ----------------------------------------------------------------------------- state
def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and all buffers (BatchNorm statistics change in training too)."""
    out = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    out.update({n: b.detach().cpu().contiguous() for n, b in model.named_buffers()})
    return out


def _load_trainable_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where: Path) -> None:
    expected = set(_trainable_state(model))
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(
            f"{where}: saved state does not fit this model (missing {missing[:5]}, extra {extra[:5]})"
        )
    model.load_state_dict(tensors, strict=False)


def save_state(out: Path, model, opt, scaler, rng: np.random.Generator, progress: dict,
               ema: AveragedModel | None = None) -> None:
    """Write the resume point atomically (a crash mid-write leaves the previous one)."""
    tmp = out / "state.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(_trainable_state(model), str(tmp / "trainable.safetensors"))
    if ema is not None:
        save_file({**_trainable_state(ema.module), EMA_COUNT: ema.n_averaged.cpu()}, str(tmp / "ema.safetensors"))
    opt_sd = opt.state_dict()
    tensors = {"rng.torch": torch.get_rng_state()}
    for idx, st in opt_sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{idx}.{k}"] = (
                (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
            )
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    meta = {
        "state_version": STATE_VERSION,
        "progress": progress,
        "optimizer": type(opt).__name__,
        "param_groups": opt_sd["param_groups"],
        "numpy_rng": rng.bit_generator.state,
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
    }
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    final = out / "state"
    if final.exists():
        old = out / "state.old"
        final.rename(old)
        tmp.rename(final)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        tmp.rename(final)


def load_state(out: Path, model, opt, scaler, rng: np.random.Generator, ema: AveragedModel | None = None) -> dict:
    """Restore what :func:`save_state` wrote; returns the saved progress dict."""
    d = out / "state"
    if not (d / "state.json").is_file():
        raise FileNotFoundError(f"--resume: no saved state in {d}")
    meta = json.loads((d / "state.json").read_text())
    if meta.get("state_version") != STATE_VERSION:
        raise ValueError(f"{d}: state version {meta.get('state_version')} != {STATE_VERSION}")
    _load_trainable_state(model, load_file(str(d / "trainable.safetensors")), d)
    if ema is not None:
        if not (d / "ema.safetensors").is_file():
            raise ValueError(f"{d}: the run was saved without ema; resume it with the config it started with")
        averaged = load_file(str(d / "ema.safetensors"))
        ema.n_averaged.copy_(averaged.pop(EMA_COUNT))
        _load_trainable_state(ema.module, averaged, d)
    saved_opt = meta.get("optimizer", "Adam")  # states from before the optimizer setting were Adam's
    if saved_opt != type(opt).__name__:
        raise ValueError(f"{d}: the run was saved with {saved_opt}, not {type(opt).__name__}; "
                         "resume it with the optimizer it started with")
    tensors = load_file(str(d / "optimizer.safetensors"))
    torch.set_rng_state(tensors.pop("rng.torch"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    rng.bit_generator.state = meta["numpy_rng"]
    if meta["scaler"] is not None and scaler.is_enabled():
        scaler.load_state_dict(meta["scaler"])
    return meta["progress"]


# ------------------------------------------------------------------------ validation
def validate(
    model: torch.nn.Module,
    items: list[LabelledImage],
    class_names: list[str],
    ratio_accuracy: float | None,
    ratio_mode: str = "global",
    select_classes: list[str] | None = None,
    batch: int = 8,
) -> dict:
    """Whole-frame scores through the Segmenter, as `phaseedge-train eval` computes them;
    ``select_dice`` is the mean pooled Dice over ``select_classes`` (all when None)."""
    from phaseedge.train.evaluate import evaluate

    seg = Segmenter(model, backend="torch", ratio_mode=ratio_mode, batch_size=batch,
                    backend_options={"class_names": list(class_names), "max_batch": batch})
    accuracy = "none" if ratio_accuracy is None else ratio_accuracy
    groups = {"select": list(select_classes or class_names)}
    with seg:
        result = evaluate(seg, items, [accuracy], groups=groups)[0]
    result["select_dice"] = result["group_dice"]["select"]
    return result


def ema_update(decay: float):
    """AveragedModel's update with the decay warmed up, min(decay, (1 + n) / (10 + n)) after n
    updates (as TensorFlow's ExponentialMovingAverage does): with a fixed 0.999 the
    initial weights and BatchNorm statistics (running_var 1) still held 13 % of the average
    after 2000 steps and it segmented far worse than the live weights (measured, docs/results.md).
    Integer buffers (BatchNorm's step count) are copied."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        steps = float(n)
        d = min(decay, (1.0 + steps) / (10.0 + steps))
        for a, c in zip(averaged, current, strict=True):
            if a.is_floating_point():
                a.lerp_(c, 1.0 - d)
            else:
                a.copy_(c)

    return update


def poly_lr(base: float, iteration: int, total: int, schedule: str) -> float:
    """nnU-Net's poly decay, ``base * (1 - iteration / total) ** 0.9``, or the constant ``base``."""
    if schedule == "constant":
        return base
    return base * (1.0 - min(iteration, total) / total) ** 0.9


def plm_regulators(model: torch.nn.Module) -> dict[str, float]:
    """The PLM's learnt gamma and delta (paper Table 7), by parameter name."""
    return {
        n: float(p.detach().float().mean())
        for n, p in model.named_parameters()
        if n.rsplit(".", 1)[-1] in ("gamma", "delta")
    }


# ------------------------------------------------------------------------------- fit
def fit(
    cfg: FitConfig,
    train_items: list[LabelledImage],
    val_items: list[LabelledImage],
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train, validate every epoch, keep the best; return a summary (best epoch and metrics)."""
    out = Path(out)
    if not train_items or not val_items:
        raise ValueError("fit needs training and validation images")
    n_classes = (
        len(cfg.class_names)
        if cfg.class_names
        else 1 + max(int(it.mask.max()) for it in train_items + val_items)
    )
    class_names = cfg.class_names or [f"class{i}" for i in range(n_classes)]
    for it in train_items + val_items:
        if int(it.mask.max()) >= n_classes:
            raise ValueError(f"{it.name}: label {int(it.mask.max())} but only {n_classes} class names")
    if cfg.pixel_size_m is not None:
        known = [it.pixel_size_m for it in train_items + val_items]
        if any(k is None for k in known):
            raise ValueError("pixel_size_m is set but some frames have no pixel size (pass --pixel-sizes)")
        if cfg.pixel_size_m == "median":
            cfg.pixel_size_m = float(np.median([it.pixel_size_m for it in train_items]))
        train_items = to_pixel_size(train_items, cfg.pixel_size_m)
    cfg = cfg.resolved(train_items)
    cfg.class_names = class_names
    unknown = sorted(set(cfg.select_classes or []) - set(class_names))
    if unknown:
        raise ValueError(f"select_classes names {unknown}, not among the classes {class_names}")
    if not resume and (out / "state").exists():
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    t0 = time.monotonic()  # the fit's minutes count the teacher's pass
    distilling = cfg.distill.teacher is not None
    # before anything is written: a missing or mismatched teacher leaves no half-made run
    soft = teacher_probabilities(cfg.distill, train_items, class_names, progress) if distilling else None
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))

    torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cast = autocast_dtype(cfg.precision, device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format

    model = build_model(cfg.model, n_classes, plm=cfg.plm, tile=cfg.tile, **cfg.model_kwargs)
    model.config["pixel_size_m"] = cfg.pixel_size_m
    model.config["trained_on"] = cfg.trained_on
    if cfg.sam_checkpoint:  # frozen weights come from here, also on resume (the state holds trainables only)
        load_sam_checkpoint(model, cfg.sam_checkpoint)
    model = model.to(device, memory_format=fmt)
    params = model.trainable_parameters()
    opt = make_optimizer(cfg.optimizer, params, cfg.lr, cfg.weight_decay)
    ema = AveragedModel(model, multi_avg_fn=ema_update(cfg.ema), use_buffers=True) if cfg.ema else None
    scored = ema.module if ema is not None else model  # what validation scores and best/ keeps
    scaler = torch.amp.GradScaler("cuda", enabled=cast == torch.float16)
    weights = torch.from_numpy(resolve_class_weights(cfg.loss, class_frequencies(train_items, n_classes)))
    sampler = CropSampler(train_items, cfg.tile, cfg.augment, soft=soft)
    frame_ratios = np.stack([it.fractions(n_classes) for it in train_items])
    steps_per_epoch = math.ceil(cfg.crops_per_epoch / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs

    start = {"epoch": 0, "step": 0, "best_dice": -1.0, "best_epoch": None}
    if resume:
        start = load_state(out, model, opt, scaler, rng, ema)
    elif cfg.pretrain.steps:  # the state saved after each epoch holds the pretrained weights
        pretrain(model, cfg.pretrain, train_items, tile=cfg.tile, batch_size=cfg.batch_size,
                 augment=cfg.augment, seed=cfg.seed, cast=cast, memory_format=fmt, out=out,
                 progress=progress)
        if ema is not None:  # average from the pretrained weights, not the random ones
            ema = AveragedModel(model, multi_avg_fn=ema_update(cfg.ema), use_buffers=True)
            scored = ema.module
    best = {"dice": start["best_dice"], "epoch": start["best_epoch"]}
    budget = cfg.max_minutes * 60.0 if cfg.max_minutes else math.inf
    val_seconds = 0.0
    stopped = False
    steps_run = 0  # this session's steps: at least one runs, whatever the budget
    log = (out / "log.jsonl").open("a")
    try:
        epoch, step0 = start["epoch"], start["step"]
        while epoch < cfg.epochs and not stopped:
            model.train()
            sums: dict[str, float] = {}
            done = 0
            bar = tqdm(
                range(step0, steps_per_epoch),
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                disable=not progress,
                leave=False,
            )
            for step in bar:
                if steps_run and time.monotonic() - t0 + val_seconds > budget:
                    stopped = True
                    break
                images, masks, frames, *teacher = sampler.sample(cfg.batch_size, rng, return_index=True,
                                                                  return_soft=distilling)
                r_in = (
                    input_ratios(masks, n_classes, rng, cfg.ratio, frame_ratios[frames.numpy()])
                    if model.plm_enabled
                    else torch.zeros(masks.shape[0], n_classes)
                )
                for group in opt.param_groups:
                    group["lr"] = poly_lr(cfg.lr, epoch * steps_per_epoch + step, total_steps, cfg.lr_schedule)
                r_true = true_ratios(masks, n_classes)
                images, masks, r_in, r_true = (t.to(device) for t in (images, masks, r_in, r_true))
                images = images.contiguous(memory_format=fmt)
                with torch.autocast(device.type, dtype=cast or torch.float32, enabled=cast is not None):
                    if getattr(model, "aux_heads", None):
                        logits, aux = model.forward_with_aux(images, r_in)
                    else:
                        logits, aux = model(images, r_in), None
                loss, parts = segmentation_loss(logits, masks, r_true, weights, cfg.loss, aux,
                                                soft=teacher[0] if teacher else None,
                                                soft_weight=cfg.distill.weight if distilling else 0.0)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                if ema is not None:
                    ema.update_parameters(model)
                done += 1
                steps_run += 1
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(loss=f"{parts['loss']:.3f}")
            bar.close()
            if done == 0 and stopped:
                break
            step_end = step0 + done
            epoch_complete = step_end >= steps_per_epoch
            tv = time.monotonic()
            metrics = validate(
                scored, val_items, class_names, cfg.val_ratio_accuracy, cfg.val_ratio_mode,
                cfg.select_classes, cfg.batch_size,
            )
            val_seconds = time.monotonic() - tv
            dice = metrics["select_dice"] if metrics["select_dice"] is not None else -1.0
            record = {
                "epoch": epoch + 1,
                "complete": epoch_complete,
                "steps": done,
                "minutes": round((time.monotonic() - t0) / 60.0, 3),
                "val_minutes": round(val_seconds / 60.0, 3),
                "lr": opt.param_groups[0]["lr"],
                "train": {k: v / done for k, v in sums.items()},
                "val": metrics,
                "plm": plm_regulators(scored),
            }
            if dice > best["dice"]:
                best = {"dice": dice, "epoch": epoch + 1}
                save_best(scored, out / "best", class_names, record)
            record["best_epoch"] = best["epoch"]
            log.write(json.dumps(record) + "\n")
            log.flush()
            if progress:
                tqdm.write(
                    f"epoch {epoch + 1}: loss {record['train'].get('loss', float('nan')):.4f} "
                    f"val Dice {dice:.4f} (best {best['dice']:.4f} @ {best['epoch']})"
                )
            if epoch_complete:
                epoch, step0 = epoch + 1, 0
            else:
                step0 = step_end
            save_state(
                out,
                model,
                opt,
                scaler,
                rng,
                {"epoch": epoch, "step": step0, "best_dice": best["dice"], "best_epoch": best["epoch"]},
                ema,
            )
    finally:
        log.close()
    return {
        "out": str(out),
        "best_epoch": best["epoch"],
        "best_val_dice": best["dice"],
        "stopped_by_time": stopped,
        "minutes": round((time.monotonic() - t0) / 60.0, 2),
    }


def save_best(model: torch.nn.Module, where: Path, class_names: list[str], record: dict) -> None:
    """LoRA-merged checkpoint (checkpoint.save merges a copy) plus the raw trainable state;
    the epoch's validation scores go into the config (and from there into the sidecar)."""
    val = record["val"]
    model.config["val_metrics"] = {
        "epoch": record["epoch"], "ratio_accuracy": val.get("ratio_accuracy"), "images": val.get("images"),
        "macro_dice": val.get("macro_dice"), "select_dice": val.get("select_dice"), "miou": val.get("miou"),
        "per_class_dice": val.get("per_class_dice"), "fraction_mae": val.get("fraction_mae"),
    }
    checkpoint.save(model, where, class_names=class_names)
    save_file(_trainable_state(model), str(where / "trainable.safetensors"))
    (where / "metrics.json").write_text(json.dumps(record, indent=1))
