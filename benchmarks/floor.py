"""The compute floor: the time a frame would take if the device only did the model's arithmetic.

floor = (FLOPs per tile x tiles per frame) / (peak FLOP/s measured by a matmul probe).
Printed beside every latency, it says how far a measured number is from what the
hardware could do at best, and therefore whether to optimise the pipeline or pick
a cheaper model. FLOPs count one multiply-add as 2, as torch's FlopCounterMode does.

Three counters, so each can check the others:
- :func:`onnx_flops` walks an exported graph (Conv, ConvTranspose, MatMul, Gemm,
  Einsum) after ONNX shape inference: what the runtime actually executes;
- :func:`torch_flops` runs a PyTorch model under ``torch.utils.flop_counter.FlopCounterMode``;
- :func:`layer_flops` is the hand count: 2·k·k·Cin/g·Cout·H·W per convolution (and
  2·in·out per Linear row), from the layers' own shapes via forward hooks.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

_PROBE_N = 2048
_PROBE_REPEATS = 5


# ------------------------------------------------------------------ peak probe
def matmul_peak(device: str = "cpu", n: int = _PROBE_N, repeats: int = _PROBE_REPEATS) -> dict[str, Any]:
    """Measure the device's attainable FLOP/s with a square matrix multiply.

    CPU: numpy float32 (the BLAS numpy links, on all cores it may use). GPU: torch
    on CUDA in float16 and float32 (the fp16 figure is the floor for fp16 engines).
    Best of ``repeats`` after one warm-up: the probe asks what the device *can* do,
    so the fastest repeat is the estimate (a busy machine only slows it down).
    Returns ``{"device", "method", "flops_per_s": {dtype: value}}``, or with
    ``"unavailable"`` giving the reason.
    """
    if n < 64 or repeats < 1:
        raise ValueError(f"need n >= 64 and repeats >= 1, got n={n}, repeats={repeats}")
    if device == "cpu":
        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        out = np.empty_like(a)
        np.matmul(a, b, out=out)
        best = min(_timed(lambda: np.matmul(a, b, out=out)) for _ in range(repeats))
        return {"device": "cpu", "method": f"numpy float32 matmul {n}x{n}",
                "flops_per_s": {"fp32": 2.0 * n**3 / best}}
    if device == "cuda":
        return _cuda_peak(n, repeats)
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _cuda_peak(n: int, repeats: int) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"device": "cuda", "unavailable": "the GPU probe needs torch with CUDA (not installed)"}
    if not torch.cuda.is_available():
        return {"device": "cuda", "unavailable": "torch reports no CUDA device"}
    flops = {}
    for label, dtype in (("fp16", torch.float16), ("fp32", torch.float32)):
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        torch.matmul(a, b)
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(10):
                torch.matmul(a, b)
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3 / 10)
        flops[label] = 2.0 * n**3 / best
    return {"device": "cuda", "method": f"torch matmul {n}x{n} on {torch.cuda.get_device_name()}",
            "flops_per_s": flops}


# ------------------------------------------------------------------ ONNX count
def onnx_flops(path: str | Path, tile: int | None = None) -> dict[str, Any]:
    """FLOPs of one tile (batch 1) of an exported graph, from its node shapes.

    The batch dimension is fixed to 1, a graph that takes any tile size gets ``tile`` x ``tile``
    (required for one), and ONNX shape inference fills in every intermediate shape; weights are
    not loaded (external data stays on disk).
    Counted: Conv, ConvTranspose, MatMul, Gemm, Einsum — the multiply-adds.
    Element-wise ops, norms and softmax are left out (as FlopCounterMode does) and
    listed under ``uncounted_ops`` so the reader sees what was skipped.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
        for d in list(dims)[2:]:
            if not d.HasField("dim_value"):
                if tile is None:
                    raise ValueError(f"{Path(path).name} takes any tile size: give the tile side to count")
                d.dim_value = tile
    model = _infer_shapes(model)
    shapes: dict[str, tuple[int, ...] | None] = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)

    by_op: Counter[str] = Counter()
    unknown: list[str] = []
    other: Counter[str] = Counter()
    for node in model.graph.node:
        count = _NODE_FLOPS.get(node.op_type)
        if count is None:
            other[node.op_type] += 1
            continue
        ins = [shapes.get(name) for name in node.input]
        outs = [shapes.get(name) for name in node.output]
        value = count(node, ins, outs)
        if value is None:
            unknown.append(f"{node.op_type} {node.name}")
        else:
            by_op[node.op_type] += value
    return {
        "flops": int(sum(by_op.values())),
        "by_op": dict(by_op),
        "unresolved_nodes": unknown,
        "uncounted_ops": dict(other),
        "method": "onnx graph (Conv/ConvTranspose/MatMul/Gemm/Einsum after shape inference)",
    }


def _infer_shapes(model):
    """Every intermediate shape at batch 1.

    ONNX Runtime's symbolic shape inference follows Shape -> Gather -> Concat -> Reshape
    chains (attention reshapes) that plain ONNX inference leaves unknown; it is used
    when onnxruntime is installed, else ONNX's own (unresolved nodes are then listed).
    """
    from onnx import shape_inference

    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:
        return shape_inference.infer_shapes(model, data_prop=True)
    try:
        return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # noqa: BLE001 - an op it does not know: fall back, unresolved nodes are reported
        return shape_inference.infer_shapes(model, data_prop=True)


def _known(*shapes) -> bool:
    return all(s is not None and len(s) > 0 and all(d > 0 for d in s) for s in shapes)


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return a.i if a.type == a.INT else (list(a.ints) if a.ints else a.s.decode())
    return default


def _conv(node, ins, outs):
    w, y = ins[1], outs[0]
    if not _known(w, y):
        return None
    # W: [Cout, Cin/group, k...]; each output element is Cin/group * prod(k) MACs.
    return 2 * int(np.prod(y)) * int(np.prod(w[1:]))


def _conv_transpose(node, ins, outs):
    x, w = ins[0], ins[1]
    if not _known(x, w):
        return None
    # W: [Cin, Cout/group, k...]; every input element scatters into Cout/group * prod(k) outputs.
    return 2 * int(np.prod(x)) * int(np.prod(w[1:]))


def _matmul(node, ins, outs):
    a, y = ins[0], outs[0]
    if not _known(a, y):
        return None
    k = a[-1]
    return 2 * int(np.prod(y)) * int(k)


def _gemm(node, ins, outs):
    a, y = ins[0], outs[0]
    if not _known(a, y):
        return None
    k = a[0] if _attr(node, "transA", 0) else a[-1]
    return 2 * int(np.prod(y)) * int(k)


def _einsum(node, ins, outs):
    """2 x the product of every index's size: exact for one product-and-sum contraction."""
    eq = _attr(node, "equation", "").replace(" ", "")
    lhs = eq.split("->")[0].split(",")
    if len(lhs) != len(ins) or not _known(*ins) or "." in eq:
        return None
    sizes: dict[str, int] = {}
    for term, shape in zip(lhs, ins):
        if len(term) != len(shape):
            return None
        for ch, d in zip(term, shape):
            sizes[ch] = max(sizes.get(ch, 1), d)
    return 2 * int(np.prod(list(sizes.values())))


_NODE_FLOPS = {"Conv": _conv, "ConvTranspose": _conv_transpose, "MatMul": _matmul, "Gemm": _gemm,
               "Einsum": _einsum}


# ------------------------------------------------------------------ torch counts
def _example_inputs(model, tile: int, n_classes: int):
    import torch

    image = torch.rand(1, 1, tile, tile)
    ratio = torch.full((1, n_classes), 1.0 / n_classes)  # FLOPs do not depend on the values
    return image, ratio


@contextlib.contextmanager
def _frozen(model):
    """No parameter requires grad while counting: FlopCounterMode's module tracker otherwise
    trips over parameters that reach an output unchanged under no_grad (SAM's tokens)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def torch_flops(model, tile: int, n_classes: int) -> dict[str, Any]:
    """FLOPs of one tile (batch 1) of a PyTorch model, counted by FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    image, ratio = _example_inputs(model, tile, n_classes)
    counter = FlopCounterMode(display=False)
    with _frozen(model), torch.no_grad(), counter:
        model(image, ratio)
    by_op = {str(op).split(".", 1)[-1]: int(v)
             for op, v in counter.get_flop_counts().get("Global", {}).items()}
    return {"flops": int(counter.get_total_flops()), "by_op": by_op,
            "method": "torch.utils.flop_counter.FlopCounterMode"}


def layer_flops(model, tile: int, n_classes: int) -> dict[str, Any]:
    """Hand count of the conv and linear layers' multiply-adds, from their shapes.

    For a U-Net nearly all arithmetic is convolution, so this should match
    :func:`torch_flops` to within the few matmuls it does not see (PLM MLP layers are
    Linear and are counted; attention matmuls in ViTs are not — compare on U-Nets).
    """
    import torch
    from torch import nn

    total = Counter()

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total["conv"] += 2 * output.numel() * k * module.in_channels // module.groups
        elif isinstance(module, nn.ConvTranspose2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total["conv_transpose"] += 2 * inputs[0].numel() * k * module.out_channels // module.groups
        elif isinstance(module, nn.Linear):
            total["linear"] += 2 * output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    image, ratio = _example_inputs(model, tile, n_classes)
    try:
        with _frozen(model), torch.no_grad():
            model(image, ratio)
    finally:
        for h in handles:
            h.remove()
    return {"flops": int(sum(total.values())), "by_op": dict(total),
            "method": "hand count: 2*k*k*Cin/g*Cout*H*W per conv, 2*in*out per linear row"}


# ------------------------------------------------------------------ floor
def floor_report(flops_per_tile: int, n_tiles: int, frame_hw: tuple[int, int],
                 peak_flops_per_s: float | None) -> dict[str, Any]:
    """FLOPs per frame and megapixel at the tiling used, and the floor time per frame."""
    if flops_per_tile < 0 or n_tiles < 1:
        raise ValueError(f"need flops_per_tile >= 0 and n_tiles >= 1, got {flops_per_tile}, {n_tiles}")
    mp = frame_hw[0] * frame_hw[1] / 1e6
    per_frame = flops_per_tile * n_tiles
    out: dict[str, Any] = {
        "flops_per_tile": int(flops_per_tile),
        "tiles_per_frame": int(n_tiles),
        "gflops_per_frame": per_frame / 1e9,
        "gflops_per_megapixel": per_frame / 1e9 / mp,
        "floor_ms": None,
    }
    if peak_flops_per_s:
        out["floor_ms"] = per_frame / peak_flops_per_s * 1e3
    return out


def measure(spec, frame_hw: tuple[int, int], overlap: float | None, device: str, torch_module=None,
            tile: int | None = None, halo: int | None = None) -> dict[str, Any]:
    """Everything the floor needs for one model and frame: FLOP count, tile count, peak, floor.

    The tiles are the ones the Segmenter would use (`phaseedge.tiling.plan` with the same
    ``tile`` / ``overlap`` / ``halo``; None: the model's default), counted at their own size."""
    from phaseedge.bench.models import flops_per_tile

    from phaseedge.tiling import plan

    grid, blend = plan(frame_hw[0], frame_hw[1], spec.allowed_tiles(), spec.halo, tile, overlap, halo)
    count = flops_per_tile(spec, torch_module, grid.tile)
    peak = matmul_peak(device)
    precision = "fp16" if spec.precision == "fp16" and "fp16" in peak.get("flops_per_s", {}) else "fp32"
    peak_value = peak.get("flops_per_s", {}).get(precision)
    out = floor_report(count["flops"], grid.n_tiles, frame_hw, peak_value)
    out.update({"tile": grid.tile, "overlap": grid.overlap, "blend": blend,
                "overlap_factor": grid.n_tiles * grid.tile**2 / (frame_hw[0] * frame_hw[1]),
                "count": count, "peak": peak, "peak_precision": precision})
    return out


def si(flops: float) -> str:
    """FLOPs with an SI prefix: 1.23 GFLOP."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if flops >= scale:
            return f"{flops / scale:.3g} {prefix}FLOP"
    return f"{flops:.3g} FLOP"


# ------------------------------------------------------------------ subcommand
def add_parser(subparsers) -> None:
    from phaseedge.bench.models import parse_frame

    p = subparsers.add_parser(
        "floor", help="FLOPs per tile and megapixel, and the floor time on this device",
        description="Count the model's FLOPs per tile (ONNX graph or FlopCounterMode), multiply by the tiles "
                    "a frame needs at the given overlap, and divide by the device's peak measured with a "
                    "matrix-multiply probe. The result is the time no pipeline can beat on this device.")
    p.add_argument("--model", default="default", help="'default', a .onnx/.engine (with sidecar) or a checkpoint dir")
    p.add_argument("--frame", type=parse_frame, default=(3072, 4096), metavar="WxH", help="frame size (default 4096x3072)")
    p.add_argument("--overlap", type=float, default=None,
                   help="tile overlap in [0, 1) (default: the Segmenter's, 2 x halo or 0.25)")
    p.add_argument("--tile", type=int, default=None, help="tile side (default: the one the Segmenter picks)")
    p.add_argument("--halo", type=int, default=None, help="halo in pixels (default: the model's measured one)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device to probe (default cpu)")
    p.add_argument("--cross-check", action="store_true",
                   help="also count with FlopCounterMode and the per-layer hand count on the PyTorch architecture "
                        "(checkpoint, or random weights: FLOPs do not depend on them)")
    p.add_argument("--torch-model", metavar="CKPT_DIR", help="checkpoint for --cross-check (default: random weights)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from phaseedge.bench.models import resolve
    from phaseedge.bench.stats import format_table

    spec = resolve(args.model)
    result = measure(spec, args.frame, args.overlap, args.device, tile=args.tile, halo=args.halo)
    result["model"] = spec.describe()
    if args.cross_check:
        from phaseedge.bench.models import torch_model

        module, origin = torch_model(spec, args.torch_model)
        result["cross_check"] = {"torch_model": origin,
                                 "flop_counter": torch_flops(module, result["tile"], spec.n_classes)["flops"],
                                 "hand_count": layer_flops(module, result["tile"], spec.n_classes)["flops"]}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    peak = result["peak"]
    peak_text = (f"{peak['flops_per_s'][result['peak_precision']] / 1e9:.1f} GFLOP/s ({peak['method']})"
                 if "flops_per_s" in peak else f"unavailable: {peak['unavailable']}")
    h, w = args.frame
    rows = [
        ["FLOPs per tile", f"{si(result['flops_per_tile'])} ({result['count']['method']})"],
        ["tiles per frame", (f"{result['tiles_per_frame']} ({w}x{h}, tile {result['tile']}, overlap "
                            f"{result['overlap']:.4g}, {result['blend']} blend: {result['overlap_factor']:.3f}x the "
                            "frame's pixels)")],
        ["GFLOP per frame", f"{result['gflops_per_frame']:.2f}"],
        ["GFLOP per megapixel", f"{result['gflops_per_megapixel']:.2f}"],
        ["peak", peak_text],
        ["floor per frame", "—" if result["floor_ms"] is None else f"{result['floor_ms']:.1f} ms"],
    ]
    if "cross_check" in result:
        cc = result["cross_check"]
        rows += [["FlopCounterMode per tile", f"{si(cc['flop_counter'])} ({cc['torch_model']})"],
                 ["hand count (conv + linear)", si(cc["hand_count"])]]
    print(f"compute floor of {spec.path} ({spec.architecture}, {spec.precision})")
    print(format_table(rows, ["quantity", "value"]))
    return 0
