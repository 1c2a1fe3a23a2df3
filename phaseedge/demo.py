"""``make demo``: segment a fresh synthetic 4096x3072 16-bit frame with the bundled model on CPU.

The frame comes from `phaseedge.synth` with a seed no training run uses, so the
printed macro Dice is on an image the model never saw. Writes the frame, the true and
predicted labels, an overlay and the fractions to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

#: never used for training or validation data (training seeds are small integers)
DEMO_SEED = 2026


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phaseedge.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--model", default="default", help="an .onnx with sidecar, or 'default' (the bundled model)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    parser.add_argument("--size", default="4096x3072", help="WIDTHxHEIGHT (default 4096x3072)")
    parser.add_argument("--with-ratio", action="store_true",
                        help="give the model the true phase ratio as the expert's ratio (default: unknown)")
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must be WIDTHxHEIGHT, got {args.size!r}")

    import cv2
    import tifffile

    from phaseedge import metrics, synth
    from phaseedge.segmenter import Segmenter, default_model

    try:
        model = default_model() if args.model == "default" else Path(args.model)
        if not model.is_file():
            raise FileNotFoundError(f"model not found: {model}")
    except FileNotFoundError as exc:
        print(f"phaseedge demo: {exc}", file=sys.stderr)
        return 2
    seg = Segmenter(model, backend="onnxruntime", backend_options={"providers": ["CPUExecutionProvider"]})
    t = time.perf_counter()
    seg.__enter__()
    load_s = time.perf_counter() - t
    n = seg.n_classes
    if list(seg.class_names) != synth.class_names(n):
        print(f"phaseedge demo: the bundled model's classes {list(seg.class_names)} are not the synthetic "
              f"phases {synth.class_names(n)}", file=sys.stderr)
        return 2
    print(f"model {model.name}: {n} classes {list(seg.class_names)}, {seg.backend.device}, "
          f"loaded in {load_s:.2f} s")

    t = time.perf_counter()
    image, truth = synth.micrograph((height, width), n_phases=n, seed=args.seed, dtype=np.uint16)
    print(f"synthetic frame {width}x{height} uint16 (seed {args.seed}) in {time.perf_counter() - t:.1f} s")
    true_ratio = metrics.fractions(truth, n)
    grid, blend = seg.tiling_for(height, width)
    print(f"tiles: {grid.n_tiles} of {grid.tile} px ({grid.n_tiles * grid.tile**2 / image.size:.2f}x the frame's "
          f"pixels), {blend} blending")
    with seg:
        result = seg.segment(image, ratio=true_ratio if args.with_ratio else None)

    dice = metrics.dice(result.labels, truth, n)
    macro = metrics.macro_dice(result.labels, truth, n)
    mpix = image.size / 1e6
    args.out.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(args.out / "image.tif", image)
    cv2.imwrite(str(args.out / "labels.png"), result.labels)
    cv2.imwrite(str(args.out / "truth.png"), truth)
    cv2.imwrite(str(args.out / "overlay.png"), cv2.cvtColor(result.overlay(image), cv2.COLOR_RGB2BGR))
    summary = {
        **result.to_dict(),
        "true_fractions": dict(zip(result.class_names, map(float, true_ratio))),
        "macro_dice": macro,
        "dice": dict(zip(result.class_names, map(float, dice))),
        "seconds_per_megapixel": result.timings["total"] / mpix,
        "seed": args.seed,
        "model": str(model),
    }
    (args.out / "fractions.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    print(f"{'phase':<12}{'predicted':>10}{'true':>8}{'Dice':>8}")
    for c, name in enumerate(result.class_names):
        print(f"{name:<12}{result.fractions[name]:>10.3f}{true_ratio[c]:>8.3f}{dice[c]:>8.3f}")
    print(f"macro Dice {macro:.4f}")
    stages = ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items() if k != "total")
    print(f"time {result.timings['total']:.2f} s for {mpix:.1f} MP = {result.timings['total'] / mpix:.3f} s/MP "
          f"({stages})")
    print(f"outputs in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
