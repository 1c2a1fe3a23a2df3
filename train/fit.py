"""``phaseedge-train fit``: train a model on a labelled folder or on synthetic micrographs.

Command-line flags override the ``--config`` JSON (a :class:`~phaseedge.train.loop.FitConfig`
dict, e.g. a previous run's ``OUT/config.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from phaseedge.train.data import LabelledImage, load_folder, read_pixel_sizes, read_split, synthetic
from phaseedge.train.loop import FitConfig, fit

#: synthetic training frames use seeds from here on; validation from SYNTH_VAL_SEED. Both are
#: far from the demo's frame (seed 2026) and from the seeds tests hold out.
SYNTH_TRAIN_SEED = 10_000
SYNTH_VAL_SEED = 20_000


def parse_override(text: str) -> tuple[list[str], object]:
    """``a.b=JSON`` -> (["a", "b"], value); a value that is not JSON is taken as a string."""
    key, sep, raw = text.partition("=")
    path = [k for k in key.strip().split(".") if k]
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"--set takes KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return path, value


def apply_override(config: dict, path: list[str], value: object) -> None:
    """Set ``config[path[0]]...[path[-1]] = value``, creating nested dicts on the way."""
    node = config
    for k in path[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ValueError(f"--set {'.'.join(path)}: {k} is not a group of settings")  # noqa: TRY004 - a user error
        node = child
    node[path[-1]] = value


def synth_split(
    n_train: int, n_val: int, size: int, n_classes: int
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    train = synthetic(list(range(SYNTH_TRAIN_SEED, SYNTH_TRAIN_SEED + n_train)), (size, size), n_classes)
    val = synthetic(list(range(SYNTH_VAL_SEED, SYNTH_VAL_SEED + n_val)), (size, size), n_classes)
    return train, val


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fit",
        help="train a model (best checkpoint in OUT/best/)",
        description="Train a segmentation model; the best epoch by validation macro Dice lands in OUT/best/.",
    )
    p.add_argument("--model", help="architecture name (see `phaseedge-train info`); default unet")
    p.add_argument("--data", required=True, help="labelled folder (images/, labels/) or 'synth'")
    p.add_argument("--train-split", type=Path, help="list of training image names (labelled folder)")
    p.add_argument("--val-split", type=Path, help="list of validation image names (labelled folder)")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument(
        "--pixel-sizes",
        type=Path,
        help="CSV image,pixel_size_m for a labelled folder (needed when the config sets pixel_size_m)",
    )
    p.add_argument("--config", type=Path, help="JSON training config; flags below override it")
    p.add_argument("--class-names", help="comma-separated class names (their count is n_classes)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        type=parse_override,
        metavar="KEY=JSON",
        help="override one config setting, dotted for nested ones: --set pixel_size_m=null "
        "--set model_kwargs.plm_at='\"decoder\"' --set augment.noise=0 (repeatable; applied after --config)",
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-minutes", type=float, help="stop cleanly after this long, keeping the best epoch")
    p.add_argument("--no-plm", action="store_true", help="baseline without the Phase Learning Module")
    p.add_argument("--tile", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--sam-checkpoint",
        help="official SAM weights to start from (sam-* models), e.g. sam_vit_b_01ec64.pth",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default 1: fastest on a shared machine)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in OUT/state/")
    p.add_argument("--synth-train", type=int, default=24, help="synthetic training frames (--data synth)")
    p.add_argument("--synth-val", type=int, default=4, help="synthetic validation frames (--data synth)")
    p.add_argument("--synth-size", type=int, default=512, help="side of synthetic frames (--data synth)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> FitConfig:
    base: dict = {}
    if args.config:
        if not args.config.is_file():
            raise FileNotFoundError(f"--config {args.config} not found")
        base = json.loads(args.config.read_text())
    if args.resume and (args.out / "config.json").is_file() and not args.config:
        base = json.loads((args.out / "config.json").read_text())
    flags = {
        "model": args.model,
        "epochs": args.epochs,
        "max_minutes": args.max_minutes,
        "tile": args.tile,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "num_threads": args.threads,
        "sam_checkpoint": args.sam_checkpoint,
    }
    for path, value in getattr(args, "overrides", []):
        apply_override(base, path, value)
    base.update({k: v for k, v in flags.items() if v is not None})
    if args.no_plm:
        base["plm"] = False
    data = getattr(args, "data", None)
    if data and not base.get("trained_on"):  # also on --resume with --config, whose file has none
        base["trained_on"] = "synthetic" if data == "synth" else Path(data).resolve().name
    if args.class_names:
        base["class_names"] = [s.strip() for s in args.class_names.split(",") if s.strip()]
    return FitConfig.from_dict(base)


def load_data(
    args: argparse.Namespace, n_classes: int | None
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    if args.data == "synth":
        return synth_split(args.synth_train, args.synth_val, args.synth_size, n_classes or 3)
    if args.train_split is None or args.val_split is None:
        raise ValueError("a labelled folder needs --train-split and --val-split")
    if n_classes is None:
        raise ValueError(
            "a labelled folder needs the classes: pass --class-names (or class_names in --config)"
        )
    root = Path(args.data)
    sizes = read_pixel_sizes(args.pixel_sizes) if args.pixel_sizes else None
    return (
        load_folder(root, n_classes, read_split(args.train_split), sizes),
        load_folder(root, n_classes, read_split(args.val_split), sizes),
    )


def run(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    if args.data == "synth" and cfg.class_names is None:
        from phaseedge import synth

        cfg.class_names = synth.class_names(3)
    train_items, val_items = load_data(args, len(cfg.class_names) if cfg.class_names else None)
    summary = fit(cfg, train_items, val_items, args.out, resume=args.resume, progress=not args.no_progress)
    print(json.dumps(summary, indent=1))
    return 0
