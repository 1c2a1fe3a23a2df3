"""`phaseedge-bench accuracy`: what the PLM and each deployed form cost or gain in accuracy.

Two questions, answered on a labelled folder (e.g. MetalDAM val):

1. Does the PLM model beat its no-PLM baseline, and at which expert accuracy?
   Macro and per-class Dice, mIoU and phase-fraction error across the simulated
   expert's ratio accuracy α (none, 0.5, 0.662, 0.9, exact; paper Eq. 4-5) and the
   Segmenter's ratio modes (global, local, calibrate). 0.662 is where the paper's
   Figure 9 crosses its baseline.
2. Does deployment change the answer? Each deployed form (ONNX fp32, fp16 graph,
   TensorRT engine) against the PyTorch fp32 model on the same frames: share of
   pixels with the same label (argmax agreement) and the macro Dice between the two
   label maps.

Scoring is the training evaluator's own (`phaseedge.train.evaluate.evaluate`: whole
frames through `phaseedge.Segmenter`, pixels pooled in one confusion matrix, fraction
error averaged per frame), so these numbers and `phaseedge-train eval`'s agree.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
from pathlib import Path
from typing import Any

import numpy as np
from phaseedge.bench import system
from phaseedge.bench.models import ModelSpec, resolve
from phaseedge.bench.stats import format_table

from phaseedge.outputs import atomic_write

ALPHAS = ("none", "0.5", "0.662", "0.9", "exact")
MODES = ("global", "local", "calibrate")


def _segmenter(spec: ModelSpec, mode: str, overlap: float):
    from phaseedge import Segmenter

    backend = "torch" if spec.kind == "checkpoint" else "auto"
    return Segmenter(spec.path, backend=backend, overlap=overlap, ratio_mode=mode)


#: what ``phaseedge-train eval`` adds to each score that this report keeps elsewhere (mode, alpha,
#: overlap and images) or has no use for
_EVAL_ONLY = ("ratio_accuracy", "calibrate", "overlap", "images", "ratio_mode", "tta", "group_dice")


def score(seg, items: list, alpha: str, progress: bool = False) -> dict[str, Any]:
    """Scores of the Segmenter's labels (its ratio mode applied) over ``items`` at expert accuracy ``alpha``.

    ``phaseedge-train eval``'s own :func:`phaseedge.train.evaluate.evaluate` (no torch), so the two
    cannot drift apart: the simulated expert of Eq. 4-5, pixels pooled in one confusion matrix,
    ``fraction_mae`` the mean over frames of each frame's mean absolute fraction error. The labels
    are the Segmenter's own, so the calibrate mode's prior shift is in them.
    """
    from phaseedge.train.evaluate import evaluate

    (row,) = evaluate(seg, items, [alpha], progress=progress)
    for key in _EVAL_ONLY:
        del row[key]
    return row


def sweep(spec: ModelSpec, items: list, alphas: tuple[str, ...], modes: tuple[str, ...], overlap: float,
          progress: bool) -> list[dict[str, Any]]:
    """Scores for every (mode, α) of one model; equivalent runs are computed once.

    Without a ratio (α none) every mode is the same single ratio-free pass. A model
    without PLM ignores the ratio input, so its global and local modes equal α none;
    only calibrate (a prior shift outside the model) can use the ratio.
    """
    rows: list[dict[str, Any]] = []
    none_score: dict[str, Any] | None = None
    for mode in modes:
        seg = _segmenter(spec, mode, overlap)  # cheap: the backend loads on first use
        try:
            for alpha in alphas:
                ratio_free = alpha == "none" or (not spec.plm and mode != "calibrate")
                if ratio_free and none_score is not None:
                    row = dict(none_score)
                else:
                    row = score(seg, items, "none" if ratio_free else alpha, progress)
                    if ratio_free:
                        none_score = dict(row)
                row.update(mode=mode, alpha=alpha)
                if ratio_free and alpha != "none":
                    row["same_as"] = "alpha none"
                rows.append(row)
        finally:
            seg.close()
    return rows


def agreement(reference: ModelSpec, deployed: list[Path], items: list, overlap: float) -> list[dict[str, Any]]:
    """Each deployed form against the PyTorch fp32 reference, on the same frames and exact ratios.

    Exact ratios, global mode: the PLM path is active, as in use. Forms that cannot run
    here (an engine without a GPU) are listed with the reason.
    """
    from phaseedge import ratio as ratio_ops
    from phaseedge.gpu import has_cuda_gpu
    from phaseedge.metrics import ConfusionMatrix

    ratios = [ratio_ops.from_mask(it.mask, reference.n_classes) for it in items]
    with _segmenter(reference, "global", overlap) as seg:
        ref = [seg.segment(it.image, ratio=r).labels for it, r in zip(items, ratios)]
    out = []
    for path in deployed:
        row: dict[str, Any] = {"path": str(path)}
        try:
            spec = resolve(path)
        except (FileNotFoundError, ValueError) as e:
            out.append({**row, "skipped": str(e)})
            continue
        row["form"] = f"{'TensorRT engine' if spec.kind == 'engine' else 'ONNX'} {spec.precision}"
        if spec.kind == "engine" and not has_cuda_gpu():
            out.append({**row, "skipped": "TensorRT engine needs an NVIDIA GPU; none on this machine"})
            continue
        if spec.class_names != reference.class_names:
            out.append({**row, "skipped": f"classes {spec.class_names} differ from the reference's"})
            continue
        cm = ConfusionMatrix(reference.n_classes, list(reference.class_names))
        same = total = 0
        try:
            with _segmenter(spec, "global", overlap) as seg:
                for it, r, labels_ref in zip(items, ratios, ref):
                    labels = seg.segment(it.image, ratio=r).labels
                    cm.update(labels, labels_ref)
                    same += int(np.count_nonzero(labels == labels_ref))
                    total += labels.size
        except (ImportError, RuntimeError, OSError) as e:
            out.append({**row, "skipped": f"could not run: {e}"})
            continue
        out.append({**row, "argmax_agreement": same / total, "dice_vs_reference": cm.macro_dice(),
                    "per_class_dice_vs_reference": cm.summary()["per_class_dice"]})
    return out


def run_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    from phaseedge.train.data import load_folder, read_split

    model, baseline = resolve(args.model), resolve(args.baseline)
    if model.class_names != baseline.class_names:
        raise ValueError(f"model classes {model.class_names} differ from the baseline's {baseline.class_names}")
    if not model.plm:
        raise ValueError(f"--model {model.path} has no PLM; it should be the PLM model (the baseline is --baseline)")
    items = load_folder(args.data, model.n_classes, read_split(args.split) if args.split else None)
    if args.max_images:
        items = items[: args.max_images]
    progress = not args.json
    report: dict[str, Any] = {
        "command": "phaseedge-bench accuracy",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": system.machine_info(),
        "versions": system.library_versions(),
        "data": str(args.data), "split": None if args.split is None else str(args.split), "images": len(items),
        "overlap": args.overlap, "model": model.describe(), "baseline": baseline.describe(),
        "results": {"plm": sweep(model, items, args.alphas, args.modes, args.overlap, progress),
                    "baseline": sweep(baseline, items, args.alphas, args.modes, args.overlap, progress)},
    }
    reference = resolve(args.reference) if args.reference else (model if model.kind == "checkpoint" else None)
    if args.deployed:
        if reference is None or reference.kind != "checkpoint":
            raise ValueError("--deployed needs a PyTorch fp32 reference: --model must be a checkpoint dir, "
                             "or give --reference CKPT_DIR")
        report["reference"] = reference.describe()
        report["agreement"] = agreement(reference, list(args.deployed), items, args.overlap)
    return report


def curves(report: dict[str, Any]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Dice-vs-α curves (PLM model per mode, baseline + calibrate) and flat baselines."""
    lines: dict[str, dict[str, float]] = {}
    flat: dict[str, float] = {}
    for row in report["results"]["plm"]:
        lines.setdefault(f"PLM, {row['mode']}", {})[row["alpha"]] = row["macro_dice"]
    for row in report["results"]["baseline"]:
        if row["mode"] == "calibrate":
            lines.setdefault("no PLM + calibrate", {})[row["alpha"]] = row["macro_dice"]
        if row["alpha"] == "none":
            flat["no-PLM baseline (no ratio)"] = row["macro_dice"]
    return lines, flat


def print_report(report: dict[str, Any]) -> None:
    print(f"{report['images']} images from {report['data']} (split {report['split']}); "
          f"PLM model {report['model']['path']} vs baseline {report['baseline']['path']}; {report['date']}")
    rows = []
    for which in ("plm", "baseline"):
        for r in report["results"][which]:
            per_class = " ".join(f"{k}:{'—' if v is None else f'{v:.3f}'}" for k, v in r["per_class_dice"].items())
            rows.append([which, r["mode"], r["alpha"], r["macro_dice"], r["miou"], r["fraction_mae"], per_class,
                         r.get("same_as", "")])
    print(format_table(rows, ["model", "mode", "α", "macro Dice", "mIoU", "fraction MAE", "per-class Dice",
                              "note"]))
    if "agreement" in report:
        print(f"\ndeployed forms vs PyTorch fp32 {report['reference']['path']} (exact ratio, global mode):")
        arows = [[a.get("form", "?"), a["path"], a.get("argmax_agreement"), a.get("dice_vs_reference"),
                  a.get("skipped", "")] for a in report["agreement"]]
        print(format_table(arows, ["form", "file", "argmax agreement", "Dice vs fp32", "skipped"]))


def _alpha_arg(text: str) -> tuple[str, ...]:
    out = []
    for a in text.split(","):
        a = a.strip()
        if a not in ("none", "exact"):
            try:
                value = float(a)
            except ValueError:
                raise argparse.ArgumentTypeError(f"α must be none, exact or a number in [0, 1], got {a!r}") from None
            if not 0.0 <= value <= 1.0:
                raise argparse.ArgumentTypeError(f"α must lie in [0, 1], got {a!r}")
        out.append(a)
    return tuple(out)


def _modes_arg(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(","))
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown ratio mode(s) {bad}; choose from {', '.join(MODES)}")
    return modes


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "accuracy", help="PLM vs no-PLM baseline across ratio accuracy and modes; deployed forms vs fp32",
        description=__doc__.split("\n\n")[1].replace("\n", " ") + " " + __doc__.split("\n\n")[2].replace("\n", " "))
    p.add_argument("--model", required=True, help="the PLM model: checkpoint dir or .onnx (with sidecar)")
    p.add_argument("--baseline", required=True, help="its no-PLM baseline: checkpoint dir or .onnx")
    p.add_argument("--data", required=True, type=Path, help="labelled folder with images/ and labels/")
    p.add_argument("--split", type=Path, help="list of image names to use (default: all)")
    p.add_argument("--alphas", type=_alpha_arg, default=ALPHAS, help=f"comma list (default {','.join(ALPHAS)})")
    p.add_argument("--modes", type=_modes_arg, default=MODES, help=f"comma list (default {','.join(MODES)})")
    p.add_argument("--deployed", type=Path, nargs="+", metavar="FILE",
                   help="exported forms (.onnx fp32/fp16, .engine) to compare with the PyTorch fp32 model")
    p.add_argument("--reference", help="PyTorch fp32 checkpoint dir for --deployed (default: --model if it is one)")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap in [0, 1) (default 0.25)")
    p.add_argument("--max-images", type=int, help="use only the first N images (quick looks)")
    p.add_argument("--out", type=Path, help="write accuracy.json and dice_vs_alpha.png here")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables (no progress bars)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
    report = run_accuracy(args)
    if args.out:
        from phaseedge.bench import plots

        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out / "accuracy.json", (json.dumps(report, indent=2) + "\n").encode())
        lines, flat = curves(report)
        plots.dice_vs_alpha(lines, flat, args.out / "dice_vs_alpha.png",
                            f"{Path(report['data']).name}: macro Dice vs ratio accuracy α")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0
