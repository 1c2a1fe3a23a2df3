"""Seconds per training step of the MetalDAM U-Net + PLM (width 16, depth 4, tile 256, batch 4,
one thread) in fp32, bf16 autocast and bf16 + channels-last: why the recipe sets
``"precision": "bf16", "channels_last": true`` (docs/results.md).

usage: python scripts/train_step_speed.py [--steps 6] [--norm instance]   (the first 2 steps are warm-up;
--norm: the U-Net's normalisation layer, docs/results.md's InstanceNorm row)
"""

from __future__ import annotations

import argparse
import time

import torch
from phaseedge.train.loop import autocast_dtype
from phaseedge.train.losses import LossConfig, segmentation_loss
from phaseedge.train.models import build_model
from phaseedge.train.models.unet import DEFAULT_NORM, NORMS


def step_seconds(precision: str, channels_last: bool, steps: int, tile: int = 256, batch: int = 4,
                 norm: str = DEFAULT_NORM) -> float:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model("unet", 5, plm=True, tile=tile, width=16, depth=4, plm_at="bottleneck",
                        norm=norm).to(memory_format=fmt)
    opt = torch.optim.Adam(model.trainable_parameters(), 1e-3)
    x = torch.rand(batch, 1, tile, tile).contiguous(memory_format=fmt)
    y = torch.randint(0, 5, (batch, tile, tile))
    r = torch.softmax(torch.rand(batch, 5), 1)
    cast = autocast_dtype(precision, torch.device("cpu"))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=cast or torch.float32, enabled=cast is not None):
            logits = model(x, r)
        loss, _ = segmentation_loss(logits, y, r, torch.ones(5), LossConfig(class_weights=None, ratio_weight=10.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return sum(times[2:]) / len(times[2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--norm", default=DEFAULT_NORM, choices=tuple(NORMS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    for precision, cl in (("fp32", False), ("bf16", False), ("bf16", True)):
        seconds = step_seconds(precision, cl, args.steps, norm=args.norm)
        print(f"{precision}{' + channels_last' if cl else ''}: {seconds:.3f} s/step")


if __name__ == "__main__":
    main()
