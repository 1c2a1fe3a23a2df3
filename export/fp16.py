"""float32 ONNX graph -> mixed float16 graph for a strongly typed TensorRT build.

TensorRT 11 dropped weak typing: a layer runs in the type of its tensors, so the
precision plan must be in the graph. This pass writes one:

* heavy and elementwise compute (Conv, MatMul, Gemm, Einsum, Add, Mul, ...) in fp16;
* ``LayerNormalization``, ``Softmax``, reductions and the ops whose fp16 range or
  accuracy hurts (ReduceMean, Pow, Sqrt, Erf, Exp, Log, ...) in fp32, since fp16
  LayerNorm after attention overflows in ViTs;
* elementwise ops whose data inputs are all already fp32 stay fp32 (no cast
  ping-pong inside a decomposed LayerNorm2d), shape-only ops (Reshape, Transpose,
  Slice, ...) run in the type of their input;
* every node sees inputs of one type (a Cast is inserted where a producer and a
  consumer disagree; initialisers get an fp16 copy instead of a Cast), Resize's
  float ``roi``/``scales`` stay fp32 as the spec requires, and the graph I/O types
  are unchanged (image float16, ratio float32, probs float16).

Why not onnxconverter-common: 1.16's ``convert_float_to_float16(keep_io_types=True)``
on our graphs leaves the exporter's ``Cast(to=FLOAT)`` after the float16 ``image``
input untouched while retyping its output as float16 (ONNX Runtime rejects the
graph), and brackets every blocked node with its own Cast pair; fixing that up
afterwards is as much code as this pass and harder to reason about. ModelOpt
AutoCast needs nvidia-modelopt and its GPU-oriented dependencies.
"""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from phaseedge.export.check import DEFAULT_ATOL, Agreement, CheckFailed, agreement, ort_session, random_inputs

from phaseedge import __version__, names
from phaseedge import sidecar as sidecar_mod

FP32, FP16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = 65504.0
DEFAULT_MIN_AGREEMENT = 0.98

# Numerically sensitive: computed in fp32 (inputs cast up, outputs left fp32).
KEEP_FP32 = frozenset({
    "LayerNormalization", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2",
    "ReduceL1", "ReduceLogSum", "ReduceLogSumExp", "ReduceProd", "Pow", "Sqrt", "Erf", "Exp", "Log",
    "InstanceNormalization", "GroupNormalization", "Range", "CumSum", "TopK",
})
# Cheap elementwise ops: fp32 when every non-constant float input is fp32 already.
ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Neg", "Abs", "Reciprocal", "Clip", "Max", "Min",
                         "Sum", "Mean", "Where"})
# Move or pick data without arithmetic: run in the type of their (non-constant) float input.
TRANSPARENT = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Expand",
                         "Gather", "GatherElements", "GatherND", "Identity", "Split", "Concat", "Pad", "Tile",
                         "DepthToSpace", "SpaceToDepth"})
# Ops that accept any input type: never cast their inputs.
ANY_INPUT = frozenset({"Shape", "Size", "Cast", "CastLike"})
# (op, input index) whose float input must stay fp32 whatever the node's type.
FIXED_FP32_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}


@dataclass(frozen=True)
class Fp16Report:
    fp16_nodes: int
    float_nodes: int
    fp32_ops: dict[str, int]
    casts_added: int

    @property
    def fp16_share(self) -> float:
        return self.fp16_nodes / self.float_nodes if self.float_nodes else 0.0

    def __str__(self) -> str:
        kept = ", ".join(f"{k} {v}" for k, v in sorted(self.fp32_ops.items()))
        return (f"fp16 nodes: {self.fp16_nodes}/{self.float_nodes} float-compute nodes ({self.fp16_share:.1%}); "
                f"kept in fp32: {kept or 'none'}; {self.casts_added} Cast nodes added")


def convert(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Fp16Report]:
    """Return a converted copy of ``model`` and what was converted."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in model.graph.node for a in n.attribute):
        raise ValueError("graphs with subgraphs (If/Loop/Scan) are not supported by the fp16 pass")
    model = onnx.shape_inference.infer_shapes(_constants_to_initializers(model), strict_mode=True)
    g = model.graph
    types = _tensor_types(model)
    inits = {t.name: t for t in g.initializer}
    graph_outputs = {o.name for o in g.output}
    # Precision of each originally-float tensor as the new graph will carry it.
    prec: dict[str, int] = {}
    for t in g.input:
        prec[t.name] = types[t.name]

    def is_float(name: str) -> bool:
        return bool(name) and types.get(name) in (FP32, FP16)

    def is_const(name: str) -> bool:
        return name in inits

    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    cast_cache: dict[tuple[str, int], str] = {}
    casts_added = 0
    fp16_nodes = float_nodes = 0
    fp32_ops: collections.Counter[str] = collections.Counter()

    def as_type(name: str, want: int) -> str:
        nonlocal casts_added
        have = prec.get(name, types[name]) if not is_const(name) else types[name]
        if have == want:
            return name
        key = (name, want)
        if key not in cast_cache:
            suffix = "fp16" if want == FP16 else "fp32"
            new = f"{name}__{suffix}"
            if is_const(name):
                arr = numpy_helper.to_array(inits[name])
                arr = np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16) if want == FP16 else arr.astype(np.float32)
                new_inits.append(numpy_helper.from_array(arr, new))
            else:
                new_nodes.append(helper.make_node("Cast", [name], [new], to=want, name=f"cast_{new}"))
                casts_added += 1
            cast_cache[key] = new
        return cast_cache[key]

    for node in g.node:
        op = node.op_type
        float_in = [i for i, x in enumerate(node.input) if is_float(x)]
        float_out = [x for x in node.output if is_float(x)]
        if op in ("Cast", "CastLike") or (not float_in and not float_out) or op in ANY_INPUT:
            if op == "Cast" and _cast_to(node) == FP32 and not (set(node.output) & graph_outputs):
                _set_cast_to(node, FP16)  # fp32 region boundaries are added where consumers need them
            for x in node.output:
                if is_float(x):
                    prec[x] = _cast_to(node) if op == "Cast" else types[x]
            new_nodes.append(node)
            continue

        fixed = FIXED_FP32_INPUTS.get(op, set())
        data = [node.input[i] for i in float_in if i not in fixed]
        dynamic = [x for x in data if not is_const(x)]
        if op in KEEP_FP32:
            mode = FP32
        elif op in ELEMENTWISE or op in TRANSPARENT:
            mode = FP32 if dynamic and all(prec[x] == FP32 for x in dynamic) else FP16
        else:
            mode = FP16
        float_nodes += 1
        if mode == FP16:
            fp16_nodes += 1
        else:
            fp32_ops[op] += 1
        for i in float_in:
            node.input[i] = as_type(node.input[i], FP32 if i in fixed else mode)
        if op == "ConstantOfShape" and mode == FP16:
            _constant_of_shape_to_fp16(node)
        for x in float_out:
            prec[x] = mode
        new_nodes.append(node)

    # Graph outputs keep their declared type.
    for out in g.output:
        if out.name in prec and prec[out.name] != types[out.name]:
            inner = f"{out.name}__inner"
            for n in new_nodes:
                for k, x in enumerate(n.output):
                    if x == out.name:
                        n.output[k] = inner
                for k, x in enumerate(n.input):
                    if x == out.name:
                        n.input[k] = inner
            new_nodes.append(helper.make_node("Cast", [inner], [out.name], to=types[out.name], name=f"cast_{out.name}"))
            casts_added += 1

    new_nodes = _drop_identity_casts(new_nodes, prec, types, graph_outputs)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    used = {x for n in g.node for x in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    return model, Fp16Report(fp16_nodes, float_nodes, dict(fp32_ops), casts_added)


def convert_file(src: str | Path, dst: str | Path) -> Fp16Report:
    """Convert ``src`` to ``dst`` (no sidecar, no numerical check: see :func:`convert_checked`)."""
    src, dst = Path(src), Path(dst)
    model, report = convert(onnx.load(str(src)))
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    onnx.checker.check_model(str(dst))
    return report


def convert_checked(
    src: str | Path,
    dst: str | Path,
    *,
    atol: float = DEFAULT_ATOL,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    batches: tuple[int, ...] = (1, 3),
    log=print,
) -> tuple[Fp16Report, Agreement]:
    """Convert an exported fp32 graph, compare it with the original in ONNX Runtime, write the sidecar.

    ``dst`` is removed again if the comparison fails.
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".onnx":
        raise ValueError(f"output must end in .onnx, got {dst}")
    if dst.resolve() == src.resolve():
        raise ValueError("output must differ from the input graph")
    ref_sc = sidecar_mod.load(src)
    if ref_sc.kind != "onnx" or ref_sc.precision != "fp32":
        raise ValueError(f"{src} is a {ref_sc.precision} {ref_sc.kind} file; convert the fp32 ONNX export")
    report = convert_file(src, dst)
    log(str(report))
    try:
        ref, new = ort_session(src), ort_session(dst)
        worst: list[Agreement] = []
        for i, b in enumerate(batches):
            image, ratio = random_inputs(b, ref_sc.tile, ref_sc.n_classes, seed=100 + i)
            feed = {names.IMAGE: image, names.RATIO: ratio}
            worst.append(agreement(ref.run([names.PROBS], feed)[0], new.run([names.PROBS], feed)[0]))
        result = Agreement(max(w.max_abs_err for w in worst), min(w.argmax_agreement for w in worst))
        log(f"fp16 vs fp32 in ONNX Runtime (CPU) on B={','.join(map(str, batches))}: {result}")
        if not result.max_abs_err <= atol or result.argmax_agreement < min_agreement:
            raise CheckFailed(f"fp16 graph differs from fp32 beyond tolerance (atol {atol}, "
                             f"agreement >= {min_agreement}): {result}")
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    sidecar_mod.write(
        dataclasses.replace(
            ref_sc, precision="fp16", created_at="", created_by=f"phaseedge {__version__}",
            source={**ref_sc.source, "fp32_onnx": src.name, "fp32_sha256": ref_sc.sha256,
                    "fp16_nodes": report.fp16_nodes, "float_nodes": report.float_nodes,
                    "fp32_ops": report.fp32_ops},
        ),
        dst,
    )
    return report, result


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types = {t.name: t.data_type for t in g.initializer}
    for v in (*g.input, *g.value_info, *g.output):
        if v.type.HasField("tensor_type"):
            types[v.name] = v.type.tensor_type.elem_type
    missing = [x for n in g.node for x in (*n.input, *n.output) if x and x not in types]
    if missing:
        raise ValueError(f"shape inference left {len(missing)} tensors untyped (first: {missing[:3]})")
    return types


def _constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant nodes become initialisers, so one rule converts every constant."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    keep = []
    for n in g.node:
        attr = {a.name: a for a in n.attribute}
        if n.op_type == "Constant" and "value" in attr and len(attr) == 1:
            t = onnx.TensorProto()
            t.CopyFrom(attr["value"].t)
            t.name = n.output[0]
            g.initializer.append(t)
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    return model


def _cast_to(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "to")


def _set_cast_to(node: onnx.NodeProto, to: int) -> None:
    for a in node.attribute:
        if a.name == "to":
            a.i = to


def _constant_of_shape_to_fp16(node: onnx.NodeProto) -> None:
    for a in node.attribute:
        if a.name == "value" and a.t.data_type == FP32:
            arr = np.clip(numpy_helper.to_array(a.t), -FP16_MAX, FP16_MAX).astype(np.float16)
            a.t.CopyFrom(numpy_helper.from_array(arr, a.t.name))


def _drop_identity_casts(nodes, prec, types, graph_outputs) -> list[onnx.NodeProto]:
    """A Cast whose input already has the target type is removed (its users read the input)."""
    rename: dict[str, str] = {}
    out = []
    for n in nodes:
        for k, x in enumerate(n.input):
            if x in rename:
                n.input[k] = rename[x]
        if n.op_type == "Cast" and n.output[0] not in graph_outputs:
            src = n.input[0]
            have = prec.get(src, types.get(src))
            if have == _cast_to(n):
                rename[n.output[0]] = src
                continue
        out.append(n)
    return out
