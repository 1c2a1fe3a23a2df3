"""``phaseedge-train eval``: score a checkpoint on whole frames, the way users run it.

Frames go through :class:`phaseedge.Segmenter` (torch backend: tiles with overlap,
windowed blending, per-frame normalisation), never through a second stitcher, so the
numbers are those of the runtime. The expert's ratio is simulated from each frame's
truth: ``none`` (zeros, "unknown"), a number α (the guess of Eq. 4-5 at accuracy α) or
``exact``. ``--calibrate`` runs the frames in the Segmenter's ``calibrate`` ratio mode
(`phaseedge.strategies`): the PLM, if the model has one, still receives the ratio, and the
class priors are shifted so the predicted fractions match it — "PLM + calibrate" is both
together, exactly as deployed.

Dataset scores pool all pixels in one confusion matrix (:class:`phaseedge.metrics.ConfusionMatrix`):
per-class Dice and IoU are dataset-level (pooled), ``macro_dice`` / ``miou`` their mean over
all classes, and each ``--group NAME=a,b,c`` adds ``group_dice[NAME]``, the mean pooled Dice
over those classes (e.g. MetalDAM's three main phases). ``fraction_mae`` is the mean over
frames of each frame's mean absolute fraction error. Frames with a known pixel size
(``--pixel-sizes``) reach the Segmenter as `phaseedge.io.Frame`, so a model trained at one
pixel size sees them resampled exactly as in deployment.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from phaseedge.train.data import LabelledImage, load_folder, read_pixel_sizes, read_split
from tqdm import tqdm

from phaseedge import ratio as ratio_ops
from phaseedge import tta as tta_mod
from phaseedge.io import Frame
from phaseedge.metrics import ConfusionMatrix, fractions_from_counts
from phaseedge.segmenter import Segmenter
from phaseedge.strategies import RATIO_MODES

#: expert-free ratios eval can measure: the runtime's "auto"; "em", Saerens EM prior re-estimation
#: on the ratio-free posteriors (needs --train-prior-split); "iterN", the PLM fed its own fractions
#: N times, starting from auto
ESTIMATES = ("auto", "em")


def parse_accuracy(text: str) -> float | str:
    """``none``, ``exact``, an expert-free estimate (``auto``, ``em``, ``iterN``) or a number in [0, 1]."""
    if text in ("none", "exact", *ESTIMATES) or (text.startswith("iter") and text[4:].isdigit() and int(text[4:]) > 0):
        return text
    try:
        a = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"ratio accuracy must be none, exact, auto, em, iterN or a number, got {text!r}"
        ) from None
    if not 0.0 <= a <= 1.0:
        raise argparse.ArgumentTypeError(f"ratio accuracy must be in [0, 1], got {a}")
    return a


def parse_accuracies(text: str) -> list[float | str]:
    return [parse_accuracy(t.strip()) for t in text.split(",") if t.strip()]


def simulated_ratio(truth: np.ndarray, accuracy: float | str) -> np.ndarray | str | None:
    """The expert's ratio for one frame from its true fractions."""
    if accuracy == "none":
        return None
    if accuracy == "auto":
        return "auto"
    if accuracy == "exact":
        return truth.astype(np.float32)
    return ratio_ops.guess(truth, float(accuracy))


def estimated_ratio(seg: Segmenter, it: LabelledImage, how: str, train_prior: np.ndarray | None) -> np.ndarray:
    """An expert-free ratio for one frame: ``em`` (Saerens EM on the ratio-free posteriors) or
    ``iterN`` (start from the runtime's auto estimate, then feed the PLM its own soft
    fractions N times)."""
    if how == "em":
        probs = seg.segment(as_frame(it), return_probabilities=True).probabilities
        return ratio_ops.em_prior(probs, train_prior)
    r = seg.segment(as_frame(it), ratio="auto").ratio
    for _ in range(int(how[4:])):
        probs = seg.segment(as_frame(it), ratio=r, return_probabilities=True).probabilities
        r = ratio_ops.validate(probs.mean(axis=(1, 2), dtype=np.float64), seg.n_classes)
    return r


def parse_overlap(text: str) -> float | None:
    """``--overlap``: a fraction, or ``auto`` (None: the Segmenter's default tiling)."""
    if text == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"overlap must be a number in [0, 1) or 'auto', got {text!r}") from None


def open_segmenter(
    model: Any,
    overlap: float | None = 0.25,
    batch_size: int | None = None,
    ratio_mode: str = "global",
    tta: bool | str | None = False,
    scales: tuple[float, ...] | None = None,
) -> Segmenter:
    """A Segmenter on ``model``: torch for a checkpoint directory or an nn.Module, else by file type."""
    torch_model = not isinstance(model, (str, Path)) or Path(model).is_dir()
    return Segmenter(
        model,
        backend="torch" if torch_model else "auto",
        overlap=overlap,
        ratio_mode=ratio_mode,
        batch_size=batch_size,
        tta=tta,
        scales=scales,
    )


def as_frame(item: LabelledImage) -> Any:
    """What a user hands the Segmenter: the raw frame, with its pixel size when known."""
    if item.pixel_size_m is None:
        return item.image
    bits = 32 if item.image.dtype == np.float32 else 8 * item.image.dtype.itemsize
    return Frame(pixels=item.image, path=Path(item.name), pixel_size_m=item.pixel_size_m, band_rows=0, bits=bits)


def add_sweep_arguments(ap: argparse.ArgumentParser) -> None:
    """The checkpoint and the named split a sweep script (scripts/*_sweep.py) scores."""
    ap.add_argument("checkpoint", type=Path, help="a checkpoint directory (an ensemble's works too)")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/metaldam"))
    ap.add_argument("--split", default="val", help="split name in DATA/splits (train, val)")
    ap.add_argument("--pixel-sizes", type=Path, default=Path("runs/metaldam_pixel_sizes.csv"))


def load_named_split(data: Path, split: str, n_classes: int, pixel_sizes: dict) -> list[LabelledImage]:
    """The labelled frames listed in DATA/splits/SPLIT.txt, with their pixel sizes."""
    return load_folder(data, n_classes, read_split(data / "splits" / f"{split}.txt"), pixel_sizes)


def split_probabilities(seg: Segmenter, items: list[LabelledImage], accuracy: float | str) -> list[np.ndarray]:
    """Each frame's class probabilities [n, H, W] at the simulated expert ratio eval scores with;
    the sweep scripts (scripts/*_sweep.py) compute them once and then try their settings on them."""
    n = seg.n_classes
    return [seg.segment(as_frame(it), return_probabilities=True,
                        ratio=simulated_ratio(ratio_ops.from_mask(it.mask, n), accuracy)).probabilities
            for it in items]


#: MetalDAM's class groups the results report (scripts/*_sweep.py, scripts/screen_table.py): the three
#: main phases the accuracy target is set on, and those plus defect (precipitate is left out: most
#: precipitates were not annotated, says MetalDAM's README). On the command line: --group main3=….
METALDAM_GROUPS: dict[str, tuple[str, ...]] = {
    "main3": ("matrix", "austenite", "martensite_austenite"),
    "macro4": ("matrix", "austenite", "martensite_austenite", "defect"),
}


def group_dice(dice: dict[str, float | None], groups: dict[str, Any]) -> dict[str, float | None]:
    """Mean pooled Dice of each group's classes, by the macro convention: classes in neither truth
    nor prediction (None in ``ConfusionMatrix.summary``) are left out; None if all are."""
    defined = {g: [dice[m] for m in members if dice[m] is not None] for g, members in groups.items()}
    return {g: float(np.mean(v)) if v else None for g, v in defined.items()}


def parse_group(text: str) -> tuple[str, list[str]]:
    """``NAME=class,class,...`` -> (NAME, [classes])."""
    name, sep, classes = text.partition("=")
    members = [c.strip() for c in classes.split(",") if c.strip()]
    if not sep or not name.strip() or not members:
        raise argparse.ArgumentTypeError(f"a group looks like main3=matrix,austenite,ma; got {text!r}")
    return name.strip(), members


def _ignores_ratio(seg: Segmenter) -> bool:
    """True when the model has no PLM and the ratio mode only feeds the ratio to the model
    ("global", "none"): then one forward pass serves every ratio. The local and calibrate
    modes use the ratio outside the model, so they run per ratio for any model."""
    module = getattr(seg.backend, "module", None)
    plm_free = module is not None and not getattr(module, "plm_enabled", True)
    return plm_free and seg.ratio_mode in ("global", "none")


def evaluate(
    seg: Segmenter,
    items: list[LabelledImage],
    accuracies: list[float | str] | tuple[float | str, ...] = ("none",),
    calibrations: tuple[bool, ...] = (False,),
    progress: bool = False,
    groups: dict[str, list[str]] | None = None,
    train_prior: np.ndarray | None = None,
) -> list[dict]:
    """Scores of the Segmenter's model on ``items``, one dict per (accuracy, calibrate) pair.

    Each frame is run once per accuracy (once in all for a model without PLM in a mode that
    only feeds the ratio to the model); calibrated entries run it again in the Segmenter's
    ``calibrate`` mode on the same backend.
    """
    if not items:
        raise ValueError("evaluate needs at least one image")
    n = seg.n_classes
    names = list(seg.class_names)
    groups = dict(groups or {})
    for gname, members in groups.items():
        unknown = sorted(set(members) - set(names))
        if unknown:
            raise ValueError(f"group {gname!r} names {unknown}, not among the model's classes {names}")
    if "em" in accuracies and train_prior is None:
        raise ValueError("ratio accuracy 'em' needs the model's training class prior (--train-prior-split)")
    keys = [(a, c) for a in accuracies for c in calibrations]
    cms = {k: ConfusionMatrix(n, list(seg.class_names)) for k in keys}
    errors: dict[tuple, list[float]] = {k: [] for k in keys}
    shared = _ignores_ratio(seg)
    calibrating = Segmenter(seg.backend, overlap=seg.overlap, blend=seg.blend, batch_size=seg.batch_size,
                            ratio_mode="calibrate", model_pixel_size_m=seg.model_pixel_size_m, tta=seg.tta,
                            scales=seg.scales)
    bar = tqdm(total=len(items) * (1 if shared else len(accuracies)), desc="eval", disable=not progress)
    for it in items:
        truth = ratio_ops.from_mask(it.mask, n)
        raw = None
        for a in accuracies:
            r = estimated_ratio(seg, it, a, train_prior) if a == "em" or str(a).startswith("iter") else (
                simulated_ratio(truth, a))
            if raw is None or not shared:
                raw = seg.segment(as_frame(it), ratio=None if shared else r).labels
                bar.update()
            for c in calibrations:
                given = c and r is not None  # calibration to no ratio changes nothing
                labels = calibrating.segment(as_frame(it), ratio=r).labels if given else raw
                cms[(a, c)].update(labels, it.mask)
                pred = fractions_from_counts(np.bincount(labels.ravel(), minlength=n)[:n])
                errors[(a, c)].append(float(np.mean(np.abs(pred - truth))))
    bar.close()
    calibrating.close()
    out = []
    for a, c in keys:
        summary = cms[(a, c)].summary()
        summary["pooled_fraction_mae"] = summary["fraction_mae"]
        summary["fraction_mae"] = float(np.mean(errors[(a, c)]))
        summary["group_dice"] = group_dice(summary["per_class_dice"], groups)
        summary.update(ratio_accuracy=a, calibrate=c, overlap="auto" if seg.overlap is None else seg.overlap,
                       images=len(items),
                       ratio_mode=seg.ratio_mode, tta=seg.tta, scales=list(seg.scales))
        out.append(summary)
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score a checkpoint on whole frames (tiled, blended) and print JSON",
        description="Macro Dice, per-class Dice, mIoU and phase-fraction error of a checkpoint on a labelled "
        "folder (or synthetic frames), tiled over whole frames as phaseedge.Segmenter runs them.",
    )
    p.add_argument("checkpoint", help="checkpoint directory (e.g. OUT/best) or exported .onnx")
    p.add_argument("--data", required=True, help="labelled folder (images/, labels/) or 'synth'")
    p.add_argument("--split", type=Path, help="list of image names to score (default: all)")
    p.add_argument(
        "--ratio-accuracy",
        type=parse_accuracies,
        default=["none"],
        help="simulated expert ratio: none (zeros), exact, or accuracy alpha in [0,1] (Eq. 4-5); "
        "a comma list (e.g. none,0.5,0.9,exact) prints a JSON list, one entry per setting",
    )
    p.add_argument(
        "--calibrate",
        nargs="?",
        const="on",
        default="off",
        choices=("on", "off", "both"),
        help="prior-shift the probabilities to match the ratio ('both': with and without)",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: best on a shared machine)"
    )
    p.add_argument("--overlap", type=parse_overlap, default=0.25,
                   help="tile overlap in [0, 1), or 'auto': the runtime's own default tiling (big tiles "
                        "with the model's measured halo where its sidecar has one, as `phaseedge segment` "
                        "runs it; else 0.25)")
    p.add_argument("--ratio-mode", default="global", choices=RATIO_MODES, help="how the ratio is fed (Segmenter)")
    tta_mod.add_arguments(p)
    p.add_argument("--pixel-sizes", type=Path, help="CSV image,pixel_size_m: frames are resampled to the model's")
    p.add_argument(
        "--group",
        type=parse_group,
        action="append",
        default=[],
        help="NAME=class,class,...: also report the mean pooled Dice over these classes (repeatable)",
    )
    p.add_argument("--train-prior-split", type=Path,
                   help="training split (names in --data): its class frequencies are the prior for --ratio-accuracy em")
    p.add_argument("--batch-size", type=int, help="tiles per forward pass")
    p.add_argument("--synth-seeds", default="30000-30003", help="frames for --data synth (e.g. 1,2,5-9)")
    p.add_argument("--synth-size", type=int, default=1024, help="side of synthetic frames (--data synth)")
    p.add_argument("--json", action="store_true", help="print only the JSON (no progress bar)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from phaseedge.train.cliargs import parse_seeds
    from phaseedge.train.data import synthetic

    torch.set_num_threads(args.threads)
    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    calibrations = {"on": (True,), "off": (False,), "both": (False, True)}[args.calibrate]
    pixel_sizes = read_pixel_sizes(args.pixel_sizes) if args.pixel_sizes else None
    with open_segmenter(ckpt, args.overlap, args.batch_size, args.ratio_mode, args.tta, args.scales) as seg:
        n_classes = seg.n_classes
        if args.data == "synth":
            items = synthetic(parse_seeds(args.synth_seeds), (args.synth_size, args.synth_size), n_classes)
        else:
            split = read_split(args.split) if args.split else None
            items = load_folder(args.data, n_classes, split, pixel_sizes)
        prior = None
        if args.train_prior_split:
            from phaseedge.train.data import class_frequencies

            prior = class_frequencies(load_folder(args.data, n_classes, read_split(args.train_prior_split)), n_classes)
        results = evaluate(
            seg, items, args.ratio_accuracy, calibrations, progress=not args.json, groups=dict(args.group),
            train_prior=prior,
        )
    for r in results:
        r.update(checkpoint=str(ckpt), data=str(args.data), split=str(args.split) if args.split else None)
    out = results[0] if len(results) == 1 else results
    print(json.dumps(out, indent=None if args.json else 1))
    return 0
