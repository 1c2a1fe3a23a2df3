"""Exported tiny models shared by the tests/test_export_*.py modules.

Exporting is the slow part (the dynamo exporter takes tens of seconds per model on
a busy 2-core machine), so each kind is exported once per test session, through
the real CLI, into one temporary folder removed at exit.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

CLASSES = ["ferrite", "martensite", "austenite"]
KINDS = {  # name -> (architecture, plm)
    "sam-plm": ("sam-tiny", True),
    "unet-plm": ("unet-tiny", True),
    "unet-noplm": ("unet-tiny", False),
}


@dataclass(frozen=True)
class Exported:
    checkpoint: Path
    onnx: Path
    fp16: Path


@functools.cache
def _root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="phaseedge-export-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


@functools.cache
def exported(kind: str) -> Exported:
    import torch
    from phaseedge.export.cli import main
    from phaseedge.train import checkpoint
    from phaseedge.train.models import build_model

    arch, plm = KINDS[kind]
    torch.manual_seed(0)
    d = _root() / kind
    model = build_model(arch, len(CLASSES), plm=plm)
    if plm:  # at random init the ratio's effect on the output is faint; make it that of a trained PLM
        with torch.no_grad():
            for p in model.plm.re.parameters():
                p.mul_(10.0)
            model.plm.delta.fill_(3.0)
    ckpt = checkpoint.save(model, d / "ckpt", class_names=CLASSES)
    onnx_path, fp16_path = d / "model.onnx", d / "model.fp16.onnx"
    if main(["onnx", str(ckpt), "-o", str(onnx_path), "--batch", "1:4:8"]) != 0:
        raise RuntimeError(f"export of {kind} failed")
    if main(["fp16", str(onnx_path), "-o", str(fp16_path)]) != 0:
        raise RuntimeError(f"fp16 conversion of {kind} failed")
    return Exported(ckpt, onnx_path, fp16_path)
