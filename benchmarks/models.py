"""Which model a benchmark runs: the bundled one, an exported file, or a checkpoint.

Every subcommand takes ``--model`` the same way. This module answers the questions a
benchmark asks before it runs anything: what architecture, tile and classes the model
has, how many FLOPs one tile costs, and which PyTorch module can serve as the fp32
eager baseline (the trained checkpoint, or the same architecture with random
weights when only an exported graph exists: speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phaseedge import sidecar as _sidecar
from phaseedge.checkpoint_config import read_config


@dataclass(frozen=True)
class ModelSpec:
    """What a benchmark needs to know about a model, without loading it."""

    path: Path
    kind: str  # "onnx" | "engine" | "checkpoint"
    architecture: str
    plm: bool
    n_classes: int
    class_names: tuple[str, ...]
    tile: int
    precision: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # the sidecar's provenance (e.g. its checkpoint)
    tile_sizes: range | None = None  # a graph that takes any of these tile sides (None: ``tile`` only)
    halo: int | None = None  # its measured halo (phaseedge.export.halo)

    def allowed_tiles(self) -> range:
        return self.tile_sizes or range(self.tile, self.tile + 1)

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "architecture": self.architecture, "plm": self.plm,
                "n_classes": self.n_classes, "tile": self.tile, "precision": self.precision}


def resolve(model: str | Path) -> ModelSpec:
    """``"default"`` (the bundled model), a ``.onnx`` / ``.engine`` with its sidecar, or a checkpoint dir."""
    if str(model) == "default":
        from phaseedge import default_model

        model = default_model()
    path = Path(model)
    if path.is_dir():
        return _from_checkpoint(path)
    if not path.is_file():
        raise FileNotFoundError(f"model {str(path)!r} not found (expected 'default', a .onnx/.engine file or a checkpoint dir)")
    sc = _sidecar.read(path)
    return ModelSpec(path=path, kind=sc.kind, architecture=sc.architecture, plm=bool(sc.plm),
                     n_classes=int(sc.n_classes), class_names=tuple(sc.class_names), tile=int(sc.tile),
                     precision=sc.precision, arch_kwargs=dict(sc.source.get("arch_kwargs", {})),
                     source=dict(sc.source), tile_sizes=sc.tile_sizes() if sc.tile_multiple else None, halo=sc.halo)


def _from_checkpoint(path: Path) -> ModelSpec:
    cfg = read_config(path)
    try:
        return ModelSpec(path=path, kind="checkpoint", architecture=cfg["architecture"], plm=bool(cfg["plm"]),
                         n_classes=int(cfg["n_classes"]), class_names=tuple(cfg["class_names"]),
                         tile=int(cfg["tile"]), precision="fp32", arch_kwargs=dict(cfg.get("arch_kwargs", {})))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path / 'config.json'} is not a valid checkpoint config: {e}") from e


def torch_model(spec: ModelSpec, checkpoint: str | Path | None = None, expect_flops: int | None = None):
    """``(module, origin)``: the PyTorch fp32 model to time as the eager baseline.

    In order: ``checkpoint``; ``spec`` itself when it is a checkpoint; the checkpoint the
    exported file was made from (its sidecar's ``source.checkpoint``) when it is still on
    disk; else the architecture the sidecar names, built with random weights — fine for
    speed and FLOPs, not for accuracy (``origin`` says which). A random-weight build is
    checked against ``expect_flops`` (the exported graph's count): a sidecar without the
    architecture's size arguments would otherwise time a different network.
    """
    import torch
    from phaseedge.train import checkpoint as ckpt
    from phaseedge.train.models import build_model

    torch.manual_seed(0)
    if checkpoint is not None:
        return ckpt.load(checkpoint, map_location="cpu"), f"checkpoint {checkpoint}"
    if spec.kind == "checkpoint":
        return ckpt.load(spec.path, map_location="cpu"), f"checkpoint {spec.path}"
    origin_ckpt = spec.source.get("checkpoint")
    if origin_ckpt and (Path(origin_ckpt) / "config.json").is_file():
        return ckpt.load(origin_ckpt, map_location="cpu"), f"checkpoint {origin_ckpt} (from the sidecar)"
    model = build_model(spec.architecture, spec.n_classes, plm=spec.plm, tile=spec.tile, **spec.arch_kwargs).eval()
    if expect_flops:
        from phaseedge.bench.floor import torch_flops

        got = torch_flops(model, spec.tile, spec.n_classes)["flops"]
        if abs(got - expect_flops) > 0.01 * expect_flops:
            raise ValueError(f"{spec.architecture} built from the sidecar has {got / 1e9:.3g} GFLOP per tile, the "
                             f"graph {expect_flops / 1e9:.3g}: not the same network (size arguments missing from "
                             "the sidecar); pass the checkpoint with --torch-model")
    return model, f"{spec.architecture} with random weights (speed only)"


def flops_per_tile(spec: ModelSpec, torch_module=None, tile: int | None = None) -> dict[str, Any]:
    """FLOPs of one tile (side ``tile``, default the model's): counted on the ONNX graph when there
    is one, else with FlopCounterMode.

    A TensorRT engine cannot be inspected for FLOPs; its sidecar names the ONNX graph
    it was built from (``source.onnx``) when that file is still beside it.
    """
    from phaseedge.bench import floor

    tile = tile or spec.tile
    if spec.kind == "onnx":
        return floor.onnx_flops(spec.path, tile)
    if spec.kind == "engine":
        sc = _sidecar.read(spec.path)
        onnx_name = sc.source.get("onnx")
        candidate = spec.path.parent / Path(str(onnx_name)).name if onnx_name else None
        if candidate is None or not candidate.is_file():
            raise FileNotFoundError(f"cannot count FLOPs of engine {spec.path}: its ONNX graph is not beside it")
        return floor.onnx_flops(candidate, tile)
    module = torch_module if torch_module is not None else torch_model(spec)[0]
    return floor.torch_flops(module, tile, spec.n_classes)


def parse_frame(text: str) -> tuple[int, int]:
    """``"4096x3072"`` (width x height, as cameras state it) -> (height, width)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"frame must be WIDTHxHEIGHT like 4096x3072, got {text!r}") from None
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"frame sides must be >= 8 pixels, got {text!r}")
    return h, w
