"""``phaseedge-train ensemble``: several checkpoints -> one checkpoint that averages them.

Members are checked to agree on everything the runtime reads from a checkpoint (classes,
tile, PLM, normalisation, pixel size); the result is an ordinary checkpoint directory that
`eval`, the torch backend and `phaseedge-export` take as they take one model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from phaseedge.train import checkpoint
from phaseedge.train.models.ensemble import ENSEMBLE, Ensemble
from phaseedge.train.models.registry import build_model
from phaseedge.train.models.sam import LoRASam

from phaseedge.outputs import atomic_directory

#: config fields every member must share: the runtime reads them once for the whole ensemble
AGREE = ("class_names", "tile", "plm", "normalization", "pixel_size_m", "trained_on")


def make_ensemble(directories: list[str | Path]) -> Ensemble:
    """Load each checkpoint and join them; ValueError names the first field members disagree on."""
    if len(directories) < 2:
        raise ValueError(f"an ensemble needs at least 2 checkpoints, got {len(directories)}")
    configs = [checkpoint.read_config(d) for d in directories]
    for d, cfg in zip(directories[1:], configs[1:]):
        for key in AGREE:
            if cfg.get(key) != configs[0].get(key):
                raise ValueError(f"{d} has {key} {cfg.get(key)!r}, {directories[0]} has "
                                 f"{configs[0].get(key)!r}: ensemble members must agree")
    for d, cfg in zip(directories, configs):
        if cfg["architecture"] == ENSEMBLE:
            raise ValueError(f"{d} is itself an ensemble: give its members instead")
    members = [checkpoint.load(d) for d in directories]
    for m in members:
        if isinstance(m, LoRASam) and not m.config["merged"]:
            m.merge()
    first = configs[0]
    ensemble = build_model(
        ENSEMBLE, first["n_classes"], plm=first["plm"], tile=first["tile"],
        members=[{"architecture": m.config["architecture"], "arch_kwargs": dict(m.config["arch_kwargs"]),
                  "merged": bool(m.config["merged"])} for m in members],
    )
    ensemble.load_state_dict({f"members.{i}.{k}": v for i, m in enumerate(members)
                              for k, v in m.state_dict().items()}, strict=True)
    for key in ("class_names", "normalization", "pixel_size_m", "trained_on"):
        ensemble.config[key] = first.get(key)
    return ensemble.eval()


def write(directories: list[str | Path], out: str | Path) -> Path:
    """`make_ensemble` saved to ``out`` (which must not exist yet), written whole or not at all."""
    out = Path(out)
    if out.exists():
        raise ValueError(f"{out} already exists: give a new directory")
    model = make_ensemble(directories)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(out) as staging:
        checkpoint.save(model, staging)
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ensemble",
        help="join trained checkpoints into one that averages their probabilities",
        description="Join checkpoints (e.g. the same recipe at several seeds) into one checkpoint whose "
                    "output is the mean of the members' class probabilities. It evaluates and exports "
                    "as one model; inference costs the sum of its members.",
    )
    p.add_argument("checkpoints", nargs="+", help="checkpoint directories (at least 2), e.g. runs/a/best")
    p.add_argument("-o", "--out", required=True, help="new checkpoint directory to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = write(args.checkpoints, args.out)
    print(f"wrote {out}: ensemble of {len(args.checkpoints)} members")
    return 0
