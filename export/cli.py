"""``phaseedge-export``: checkpoint -> ONNX -> fp16 ONNX -> TensorRT engine, each verified.

    phaseedge-export onnx CKPT_DIR -o model.onnx [--batch 1:4:8] [--opset 18] [--max-tile 2048]
    phaseedge-export dynamic fixed.onnx -o model.onnx [--max-tile 2048] [--coords border|stretch]
    phaseedge-export halo model.onnx
    phaseedge-export int8 model.onnx --calib DIR -o model.int8.onnx [--calib-frames N] [--activations int8|uint8]
    phaseedge-export fp16 model.onnx -o model.fp16.onnx
    phaseedge-export trt model.fp16.onnx -o model.engine --batch 1:4:8 [--target tensorrt|rtx] [--tiles 128:1072:2048]
    phaseedge-export check model.onnx [--fp16 model.fp16.onnx] [--engine model.engine]
    phaseedge-export triton MODEL [MODEL ...] --repo DIR [--name NAME] [--cpu] [--max-batch-size N]

Every output gets a ``NAME.json`` sidecar (phaseedge.sidecar). Exit status: 0 on
success, 1 when a check fails, 2 on bad arguments or unusable input files.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from phaseedge import __version__
from phaseedge.sidecar import TARGETS, SidecarError


def _batch(text: str) -> tuple[int, int, int]:
    from phaseedge.export.trt import parse_batch

    try:
        return parse_batch(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _tiles(text: str) -> tuple[int, int, int]:
    try:
        lo, opt, hi = (int(p) for p in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"tiles must be MIN:OPT:MAX integers, got {text!r}") from None
    return lo, opt, hi


def _positive_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return values


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def cmd_onnx(args: argparse.Namespace) -> int:
    import torch
    from phaseedge.export import onnx_export

    torch.set_num_threads(max(1, min(args.threads, torch.get_num_threads())))
    t0 = time.perf_counter()
    model, info = onnx_export.load_checkpoint(args.checkpoint)
    print(f"loaded {info.architecture} (plm={'on' if info.plm else 'off'}, {len(info.class_names)} classes, "
          f"tile {info.tile}) in {time.perf_counter() - t0:.1f}s; exporting...", flush=True)
    result = onnx_export.export_model(
        model, info, args.output, batch=args.batch, opset=args.opset, verify_batches=args.verify_batch,
        atol=args.atol, source={"checkpoint": str(Path(args.checkpoint).resolve())}, max_tile=args.max_tile,
    )
    ops = result.op_counts
    print(f"wrote {result.path} ({_size(result.path)}, {sum(ops.values())} nodes, "
          f"{ops.get('LayerNormalization', 0)} LayerNormalization) in {result.seconds:.1f}s + sidecar")
    return 0


def cmd_dynamic(args: argparse.Namespace) -> int:
    from phaseedge.export import dynamic, halo

    sc = dynamic.convert(args.model, args.output, coords=args.coords, max_tile=args.max_tile)
    if not args.no_halo:
        halo.record(args.output)
    print(f"wrote {args.output}: tiles {sc.tile}..{sc.max_tile} in steps of {sc.tile_multiple} + sidecar")
    return 0


def cmd_halo(args: argparse.Namespace) -> int:
    from phaseedge.export import halo

    profile = halo.record(args.model, threads=args.threads)
    print("distance px  mean |dprobs|  argmax changed")
    for d in range(0, len(profile.mean_abs), 4 if len(profile.mean_abs) > 32 else 1):
        print(f"{d:>11}  {profile.mean_abs[d]:>13.5f}  {profile.flips[d]:>14.4%}")
    print(f"shift floor: {profile.floor_mean_abs:.5f} / {profile.floor_flips:.4%}; halo {profile.halo} px "
          f"written to {Path(args.model).name}'s sidecar")
    return 0


def cmd_int8(args: argparse.Namespace) -> int:
    from phaseedge.export import int8

    t0 = time.perf_counter()
    sc = int8.quantize_checked(args.model, args.output, args.calib, calib_frames=args.calib_frames,
                               activations=args.activations, min_agreement=args.min_agreement,
                               max_shift_pp=args.max_fraction_shift, threads=args.threads)
    q = sc.quantization
    out = Path(args.output)
    print(f"wrote {out} ({_size(out)}, from {_size(Path(args.model))}, {q['activations']} activations"
          f"{', TensorRT-compatible Q/DQ' if q['tensorrt_compatible'] else ', ONNX Runtime only'}) in "
          f"{time.perf_counter() - t0:.1f}s + sidecar (agreement {q['argmax_agreement']:.4%})")
    return 0


def cmd_fp16(args: argparse.Namespace) -> int:
    from phaseedge.export import fp16

    t0 = time.perf_counter()
    fp16.convert_checked(args.model, args.output, atol=args.atol, min_agreement=args.min_agreement,
                         batches=args.verify_batch)
    out = Path(args.output)
    print(f"wrote {out} ({_size(out)}, from {_size(Path(args.model))}) in {time.perf_counter() - t0:.1f}s + sidecar")
    return 0


def cmd_trt(args: argparse.Namespace) -> int:
    from phaseedge.export import trt

    result = trt.build_engine(
        args.model, args.output, batch=args.batch, target=args.target, workspace_mb=args.workspace,
        timing_cache=args.timing_cache, version_compatible=args.version_compatible,
        hardware_compatible=args.hardware_compatible, verbose=args.verbose, tiles=args.tiles,
    )
    eng = result.sidecar.engine
    where = eng.gpu_name if eng.compute_capability is None else f"{eng.gpu_name} (sm {eng.compute_capability})"
    print(f"wrote {result.path} ({_size(result.path)}, {result.sidecar.precision}, {args.target} "
          f"{eng.tensorrt_version}, {where}) in {result.seconds:.1f}s + sidecar")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from phaseedge.export import check

    if args.fp16 is None and args.engine is None:
        raise ValueError("nothing to compare: give --fp16 and/or --engine")
    report = check.run_check(args.model, fp16=args.fp16, engine=args.engine, atol=args.atol, rtol=args.rtol,
                             batches=args.verify_batch, verbose=args.verbose)
    return 0 if report.passed else 1


def cmd_triton(args: argparse.Namespace) -> int:
    from phaseedge.export import triton

    from phaseedge.segmenter import default_model

    models = [default_model() if m == "default" else Path(m) for m in args.models]
    repo = triton.write_repository(models, args.repo, name=args.name, max_batch_size=args.max_batch_size,
                                   gpu=not args.cpu, instances=args.instances, queue_delay_us=args.queue_delay_us)
    print(f"wrote {repo.model_dir} ({repo.platform}, max_batch_size {repo.max_batch_size}, "
          f"{', '.join(f.name for f in repo.files)} + sidecar); serve with: tritonserver --model-repository "
          f"{repo.model_dir.parent}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="phaseedge-export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"phaseedge-export {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    o = sub.add_parser("onnx", help="export a checkpoint directory to a verified ONNX graph")
    o.add_argument("checkpoint", help="checkpoint directory (model.safetensors + config.json)")
    o.add_argument("-o", "--output", required=True, help="output .onnx path")
    o.add_argument("--batch", type=_batch, default=(1, 4, 8), help="MIN:OPT:MAX batch range (default 1:4:8)")
    o.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17 (default 18)")
    o.add_argument("--verify-batch", type=_batches, default=(1, 3),
                   help="batch sizes compared with PyTorch (default 1,3)")
    o.add_argument("--atol", type=_positive_float, default=2e-3, help="max |dprobs| vs PyTorch (default 2e-3)")
    o.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    o.add_argument("--max-tile", type=_positive_int, default=2048,
                   help="fully convolutional models: largest tile side the graph takes (default 2048)")
    o.set_defaults(func=cmd_onnx)

    d = sub.add_parser("dynamic", help="a fixed-tile U-Net graph whose checkpoint is gone -> any tile size")
    d.add_argument("model", help="fixed-tile .onnx with its sidecar (e.g. an older bundled model)")
    d.add_argument("-o", "--output", required=True, help="output .onnx path")
    d.add_argument("--max-tile", type=_positive_int, default=2048, help="largest tile side (default 2048)")
    d.add_argument("--coords", choices=("border", "stretch"), default="border",
                   help="CoordConv coordinates on other tile sizes: border (tile-size independent, default) or "
                        "stretch (linspace across the tile, the old convention, for comparison)")
    d.add_argument("--no-halo", action="store_true", help="do not measure the halo into the sidecar")
    d.set_defaults(func=cmd_dynamic)

    h = sub.add_parser("halo", help="measure how far from a tile border predictions change; record it in the sidecar")
    h.add_argument("model", help=".onnx that takes any tile size, with its sidecar")
    h.add_argument("--threads", type=int, default=None, help="ONNX Runtime CPU threads (default: all cores)")
    h.set_defaults(func=cmd_halo)

    q = sub.add_parser("int8", help="INT8 Q/DQ graph (ONNX Runtime static quantisation), written only if it "
                                    "keeps the labels on held-out frames")
    q.add_argument("model", help="fp32 .onnx with its sidecar")
    q.add_argument("--calib", required=True, type=Path,
                   help="folder of frames: the first --calib-frames calibrate, the rest are held out for the check")
    q.add_argument("-o", "--output", required=True, help="output .onnx path")
    q.add_argument("--calib-frames", type=_positive_int, default=None, help="frames to calibrate on (default: half)")
    q.add_argument("--activations", choices=("int8", "uint8"), default="int8",
                   help="int8: symmetric, TensorRT accepts it (default); uint8: ONNX Runtime's fastest CPU kernels")
    q.add_argument("--min-agreement", type=float, default=0.995,
                   help="least argmax agreement with fp32 on the held-out frames (default 0.995)")
    q.add_argument("--max-fraction-shift", type=_positive_float, default=0.3, metavar="PP",
                   help="largest phase-fraction change allowed, percentage points (default 0.3)")
    q.add_argument("--threads", type=int, default=None, help="ONNX Runtime CPU threads (default: all cores)")
    q.set_defaults(func=cmd_int8)

    f = sub.add_parser("fp16", help="convert an fp32 graph to fp16 (LayerNorm/Softmax/reductions kept fp32)")
    f.add_argument("model", help="fp32 .onnx from 'phaseedge-export onnx'")
    f.add_argument("-o", "--output", required=True, help="output .onnx path")
    f.add_argument("--atol", type=_positive_float, default=2e-2, help="max |dprobs| vs fp32 (default 2e-2)")
    f.add_argument("--min-agreement", type=float, default=0.98, help="min argmax agreement (default 0.98)")
    f.add_argument("--verify-batch", type=_batches, default=(1, 3), help="batch sizes compared (default 1,3)")
    f.set_defaults(func=cmd_fp16)

    t = sub.add_parser("trt", help="build a strongly typed TensorRT / TensorRT-RTX engine")
    t.add_argument("model", help=".onnx with its sidecar (fp16 graph for an fp16 engine)")
    t.add_argument("-o", "--output", required=True, help="output .engine path")
    t.add_argument("--batch", type=_batch, required=True, help="MIN:OPT:MAX optimisation profile, e.g. 1:4:8")
    t.add_argument("--tiles", type=_tiles, default=None, metavar="MIN:OPT:MAX",
                   help="tile sides the profile covers, for a graph that takes any size (default: training tile, "
                        "training tile, largest)")
    t.add_argument("--target", choices=TARGETS, default="tensorrt",
                   help="tensorrt (needs a GPU to build) or rtx (TensorRT for RTX; builds without a GPU)")
    t.add_argument("--workspace", type=int, default=None, metavar="MB", help="builder workspace limit in MB")
    t.add_argument("--timing-cache", default=None, metavar="FILE", help="timing cache read before, written after")
    t.add_argument("--version-compatible", action="store_true",
                   help="engine runs on later TensorRT versions of the same major (slower)")
    t.add_argument("--hardware-compatible", action="store_true",
                   help="engine runs on any Ampere-or-later GPU (slower)")
    t.add_argument("-v", "--verbose", action="store_true", help="print TensorRT's log")
    t.set_defaults(func=cmd_trt)

    c = sub.add_parser("check", help="Polygraphy comparison: fp32 ONNX vs fp16 ONNX and/or engine")
    c.add_argument("model", help="fp32 .onnx (the reference)")
    c.add_argument("--fp16", default=None, help="fp16 .onnx to compare")
    c.add_argument("--engine", default=None, help=".engine to compare (needs a GPU; skipped otherwise)")
    c.add_argument("--atol", type=_positive_float, default=2e-2, help="absolute tolerance on probs (default 2e-2)")
    c.add_argument("--rtol", type=_positive_float, default=0.0, help="relative tolerance on probs (default 0)")
    c.add_argument("--verify-batch", type=_batches, default=(1, 3), help="batch sizes compared (default 1,3)")
    c.add_argument("-v", "--verbose", action="store_true", help="print Polygraphy's full comparison log")
    c.set_defaults(func=cmd_check)

    r = sub.add_parser("triton", help="a Triton Inference Server model repository entry from an ONNX graph or engines")
    r.add_argument("models", nargs="+", metavar="MODEL",
                   help="one .onnx, or one or more .engine (same model, one per GPU compute capability), each "
                        "with its sidecar; 'default' for the bundled model")
    r.add_argument("--repo", type=Path, required=True, help="model repository folder (created)")
    r.add_argument("--name", default="phaseedge", help="model name on the server (default phaseedge)")
    r.add_argument("--max-batch-size", type=_positive_int, default=None,
                   help="ONNX only: largest batch the server forms (default: the sidecar's batch maximum)")
    r.add_argument("--cpu", action="store_true", help="ONNX only: instance_group KIND_CPU (default KIND_GPU)")
    r.add_argument("--instances", type=_positive_int, default=1, help="model instances per device (default 1)")
    r.add_argument("--queue-delay-us", type=int, default=500,
                   help="dynamic batching: longest wait for more requests, microseconds (default 500)")
    r.set_defaults(func=cmd_triton)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (SidecarError, FileNotFoundError, ValueError) as e:
        print(f"phaseedge-export {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # ExportError, BuildError, CheckFailed: a check or a build failed
        print(f"phaseedge-export {args.command}: failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
