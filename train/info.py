"""``phaseedge-train info``: parameter counts of a registered model (paper Table 6).

The model is built on PyTorch's meta device: shapes without memory or initialisation, so even
ViT-H is counted in a moment.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from phaseedge.train.models.registry import MODEL_NAMES

    p = subparsers.add_parser(
        "info",
        help="parameter counts (total, trainable, PLM, per module) of a model",
        description="Build a registered model (without weights) and print its parameter counts.",
    )
    p.add_argument(
        "--model", default="sam-vit-b", choices=MODEL_NAMES, help="architecture (default sam-vit-b)"
    )
    p.add_argument("--n-classes", type=int, default=3, help="number of phases (default 3)")
    p.add_argument("--tile", type=int, help="tile size (default: the model's, 512 for SAM)")
    p.add_argument("--no-plm", action="store_true", help="without the Phase Learning Module")
    p.add_argument("--lora-rank", type=int, help="SAM only: LoRA rank (0 = none; default 512)")
    p.add_argument("--lora-alpha", type=float, help="SAM only: LoRA alpha (default = rank)")
    p.add_argument("--width", type=int, help="U-Net only: channels of the first level")
    p.add_argument("--depth", type=int, help="U-Net only: number of down-sampling levels")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def parameter_counts(model: Any) -> dict[str, Any]:
    """{"total", "trainable", "plm", "modules": {group: {"total", "trainable"}}}.

    Groups are the model's top-level children, with LoRA adapters counted apart as "lora".
    """
    modules: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters():
        group = "lora" if ".lora." in name else name.split(".", 1)[0]
        entry = modules.setdefault(group, {"total": 0, "trainable": 0})
        entry["total"] += p.numel()
        entry["trainable"] += p.numel() if p.requires_grad else 0
    return {
        "total": sum(m["total"] for m in modules.values()),
        "trainable": sum(m["trainable"] for m in modules.values()),
        "plm": modules.get("plm", {"total": 0})["total"],
        "modules": modules,
    }


def run(args: argparse.Namespace) -> int:
    import torch
    from phaseedge.train.models import build_model

    overrides = {
        k: v
        for k, v in (
            ("lora_rank", args.lora_rank),
            ("lora_alpha", args.lora_alpha),
            ("width", args.width),
            ("depth", args.depth),
        )
        if v is not None
    }
    with torch.device("meta"):
        model = build_model(args.model, args.n_classes, plm=not args.no_plm, tile=args.tile, **overrides)
    counts = parameter_counts(model)
    report = {"model": args.model, "n_classes": args.n_classes, "tile": model.tile, "plm_enabled": model.plm_enabled,
              "lora_rank": model.config["lora_rank"], **counts}  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"{args.model}  n_classes={args.n_classes}  tile={model.tile}  plm={model.plm_enabled}")
    print(f"{'module':<16}{'total':>14}{'trainable':>14}")
    for group, entry in counts["modules"].items():
        print(f"{group:<16}{entry['total']:>14,}{entry['trainable']:>14,}")
    print(f"{'all':<16}{counts['total']:>14,}{counts['trainable']:>14,}")
    print(f"({counts['total'] / 1e6:.1f}M total, {counts['trainable'] / 1e6:.1f}M trainable, "
          f"PLM {counts['plm'] / 1e6:.3f}M)")  # fmt: skip
    return 0
