"""A fixed-tile U-Net ONNX graph -> the same graph taking any tile size (multiples of 2**depth).

`phaseedge-export onnx` exports U-Nets with dynamic height and width from their checkpoint.
This pass is for graphs whose checkpoint is gone, such as the bundled demo model (its
checkpoint and its pre-79110be PLM code no longer exist): it rewrites, in the ONNX graph,
the few places where the dynamo exporter froze the tile size:

* the image / probs spatial dimensions become ``H`` and ``W``;
* CoordConv coordinate constants (``[1,1,s,1]`` / ``[1,1,1,s]`` initialisers holding
  ``linspace(-1, 1, s)``) are computed from the input's shape instead, in the convention
  ``coords`` names (`phaseedge.train.models.plm.coordinates`: "border" is the tile-size
  independent one and equals the old constants at the training tile);
* Reshape / Expand target shapes whose last two entries are a level's spatial size
  (constants, or single-entry constants concatenated) take that level's size from the input.

The result is checked: at the training tile it must give the original graph's outputs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from phaseedge import names
from phaseedge import sidecar as sidecar_mod

#: coordinate conventions this pass can write (see phaseedge.train.models.plm.coordinates)
COORDS = ("border", "stretch")
#: the largest tile the sidecar allows by default (and a TensorRT profile covers)
DEFAULT_MAX_TILE = 2048
_PREFIX = "pe_dyn_"


class DynamicError(RuntimeError):
    """The graph has a tile-size dependence this pass does not know how to lift."""


def _const(g: onnx.GraphProto, name: str, value: np.ndarray) -> str:
    g.initializer.append(numpy_helper.from_array(np.asarray(value), _PREFIX + name))
    return _PREFIX + name


def _node(g: onnx.GraphProto, op: str, inputs: list[str], out: str, **attrs) -> str:
    g.node.append(helper.make_node(op, inputs, [_PREFIX + out], name=_PREFIX + out, **attrs))
    return _PREFIX + out


def _levels(tile: int, multiple: int) -> dict[int, int]:
    """Spatial size at the training tile -> downsampling factor, for each U-Net level."""
    out, f = {}, 1
    while f <= multiple:
        out.setdefault(tile // f, f)
        f *= 2
    return out


def _coordinate(values: np.ndarray, levels: dict[int, int]) -> tuple[int, int] | None:
    """(axis, factor) when ``values`` is a CoordConv constant of some level, else None."""
    if values.dtype != np.float32 or values.ndim != 4 or values.shape[:2] != (1, 1):
        return None
    if min(values.shape[2:]) != 1 or max(values.shape[2:]) not in levels:
        return None
    s = max(values.shape[2:])
    if s < 2 or not np.allclose(values.ravel(), np.linspace(-1.0, 1.0, s), atol=1e-6):
        return None
    return (2 if values.shape[2] == s else 3), levels[s]


def make_dynamic(model: onnx.ModelProto, tile: int, multiple: int, coords: str = "border") -> onnx.ModelProto:
    """A copy of ``model`` (trained and exported at ``tile``) that takes any multiple of ``multiple``."""
    if coords not in COORDS:
        raise ValueError(f"coords must be one of {', '.join(COORDS)}, got {coords!r}")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    levels = _levels(tile, multiple)
    sizes: dict[tuple[int, int], str] = {}  # (axis, factor) -> 1-D int64 [1] tensor with that level's size

    def size(axis: int, factor: int) -> str:
        if (axis, factor) not in sizes:
            full = _node(g, "Shape", [names.IMAGE], f"dim{axis}", start=axis, end=axis + 1)
            sizes[(axis, factor)] = full if factor == 1 else _node(
                g, "Div", [full, _const(g, f"f{factor}", np.array([factor], np.int64))], f"dim{axis}_{factor}")
        return sizes[(axis, factor)]

    replaced: dict[str, str] = {}
    for name, init in list(inits.items()):
        hit = _coordinate(numpy_helper.to_array(init), levels)
        if hit is None:
            continue
        axis, factor = hit
        span = tile // factor
        n = size(axis, factor)
        tag = f"{name}_c"
        count = _node(g, "Squeeze", [n], f"{tag}_n")
        i = _node(g, "Range", [_const(g, f"{tag}_0", np.array(0, np.int64)), count,
                               _const(g, f"{tag}_1", np.array(1, np.int64))], f"{tag}_i")
        if coords == "border":  # plm.coordinates: the training linspace's halves at each border, 0 between
            ramp = np.append(numpy_helper.to_array(init).ravel(), np.float32(0.0)).astype(np.float32)
            back = _node(g, "Sub", [count, _const(g, f"{tag}_span", np.array(span, np.int64))], f"{tag}_back")
            right = _node(g, "GreaterOrEqual", [i, _node(g, "Sub", [count, _const(
                g, f"{tag}_rh", np.array(span // 2, np.int64))], f"{tag}_rstart")], f"{tag}_isright")
            inner = _node(g, "Where", [right, _node(g, "Sub", [i, back], f"{tag}_ri"),
                                       _const(g, f"{tag}_mid", np.array(span, np.int64))], f"{tag}_inner")
            left = _node(g, "Less", [i, _const(g, f"{tag}_lh", np.array((span + 1) // 2, np.int64))], f"{tag}_isleft")
            j = _node(g, "Where", [left, i, inner], f"{tag}_j")
            line = _node(g, "Gather", [_const(g, f"{tag}_ramp", ramp), j], f"{tag}_line", axis=0)
        else:  # "stretch": linspace(-1, 1) across whatever tile comes (the old convention)
            fi = _node(g, "Cast", [i], f"{tag}_fi", to=TensorProto.FLOAT)
            last = _node(g, "Cast", [_node(g, "Sub", [count, _const(g, f"{tag}_one", np.array(1, np.int64))],
                                           f"{tag}_lasti")], f"{tag}_last", to=TensorProto.FLOAT)
            step = _node(g, "Div", [_const(g, f"{tag}_two", np.array(2.0, np.float32)), last], f"{tag}_step")
            line = _node(g, "Sub", [_node(g, "Mul", [fi, step], f"{tag}_li"),
                                    _const(g, f"{tag}_f1", np.array(1.0, np.float32))], f"{tag}_line")
        shape = np.array([1, 1, -1, 1] if axis == 2 else [1, 1, 1, -1], np.int64)
        replaced[name] = _node(g, "Reshape", [line, _const(g, f"{tag}_shape", shape)], tag)

    spatial = set(levels)
    for node in list(g.node):
        if node.op_type not in ("Reshape", "Expand") or node.name.startswith(_PREFIX):
            continue
        target = node.input[1]
        if target in inits:
            v = numpy_helper.to_array(inits[target])
            if v.ndim == 1 and len(v) >= 2 and v[-1] == v[-2] and int(v[-1]) in spatial:
                f = levels[int(v[-1])]
                node.input[1] = _node(g, "Concat", [_const(g, f"{target}_head", v[:-2].astype(np.int64)),
                                                    size(2, f), size(3, f)], f"{target}_{node.name}", axis=0)
            continue
        producer = next((p for p in g.node if target in p.output), None)
        if producer is None or producer.op_type != "Concat" or len(producer.input) < 2:
            continue
        tail = [numpy_helper.to_array(inits[t]) if t in inits else None for t in producer.input[-2:]]
        if all(t is not None and t.shape == (1,) for t in tail) and tail[0][0] == tail[1][0] and int(tail[0][0]) in spatial:
            f = levels[int(tail[0][0])]
            producer.input[-2], producer.input[-1] = size(2, f), size(3, f)

    for node in g.node:
        for k, x in enumerate(node.input):
            if x in replaced:
                node.input[k] = replaced[x]
    used = {x for node in g.node for x in node.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    for v in (*g.input, *g.output):
        if v.name in (names.IMAGE, names.PROBS):
            dims = v.type.tensor_type.shape.dim
            dims[2].Clear()
            dims[2].dim_param = "H"
            dims[3].Clear()
            dims[3].dim_param = "W"
    del g.value_info[:]
    _topological_sort(g)
    onnx.checker.check_model(m, full_check=True)
    return m


def _topological_sort(g: onnx.GraphProto) -> None:
    """Appended nodes feed earlier ones: reorder so every input is produced first."""
    ready = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        rest = [n for n in pending if not all(x in ready for x in n.input)]
        now = [n for n in pending if all(x in ready for x in n.input)]
        if not now:
            raise DynamicError(f"graph has a cycle or a missing input near {rest[0].name}")
        for n in now:
            ordered.append(n)
            ready.update(n.output)
        pending = rest
    del g.node[:]
    g.node.extend(ordered)


def pooling_factor(model: onnx.ModelProto) -> int:
    """2**(number of stride-2 poolings): the tile must be a multiple of this (a U-Net's 2**depth)."""
    k = 0
    for node in model.graph.node:
        if node.op_type == "MaxPool":
            strides = next((list(a.ints) for a in node.attribute if a.name == "strides"), [1])
            k += strides[0] == 2
    return 2**k


def convert(src: str | Path, out: str | Path, coords: str = "border", max_tile: int = DEFAULT_MAX_TILE,
            log=print) -> sidecar_mod.Sidecar:
    """``src`` (.onnx with sidecar, fixed tile) -> ``out`` taking tiles ``tile .. max_tile`` in steps of
    2**depth; checked against ``src`` at the training tile before the sidecar is written."""
    from phaseedge.export.check import ort_session, random_inputs

    src, out = Path(src), Path(out)
    sc = sidecar_mod.load(src)
    if sc.tile_multiple is not None:
        raise ValueError(f"{src} already takes tile sizes {sc.tile}..{sc.max_tile} (multiples of {sc.tile_multiple})")
    model = onnx.load(str(src))
    multiple = pooling_factor(model)
    if sc.tile % multiple or max_tile < sc.tile or max_tile % multiple:
        raise ValueError(f"max_tile {max_tile} must be a multiple of {multiple} and >= the training tile {sc.tile}")
    dyn = make_dynamic(model, sc.tile, multiple, coords)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(dyn, str(out))
    try:
        a, b = ort_session(src), ort_session(out)
        image, ratio = random_inputs(2, sc.tile, sc.n_classes)
        feed = {names.IMAGE: image, names.RATIO: ratio}
        ref, got = a.run([names.PROBS], feed)[0], b.run([names.PROBS], feed)[0]
        worst = float(np.abs(ref.astype(np.float32) - got.astype(np.float32)).max())
        if worst > 1e-3:
            raise DynamicError(f"at the training tile {sc.tile} the converted graph differs from {src.name} "
                               f"by up to {worst:.2e}")
        for t in (sc.tile + multiple, 2 * sc.tile):
            image, ratio = random_inputs(1, t, sc.n_classes)
            shape = b.run([names.PROBS], {names.IMAGE: image, names.RATIO: ratio})[0].shape
            if shape != (1, sc.n_classes, t, t):
                raise DynamicError(f"at tile {t} the converted graph returns {shape}")
        log(f"{out.name}: same as {src.name} at tile {sc.tile} (max |dprobs| {worst:.1e}); runs at any multiple "
            f"of {multiple} (checked {sc.tile + multiple}, {2 * sc.tile}); coordinates: {coords}")
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    inputs, outputs = sidecar_mod.io_specs(sc.tile, sc.n_classes, dynamic=True)
    return sidecar_mod.write(dataclasses.replace(
        sc, inputs=inputs, outputs=outputs, tile_multiple=multiple, max_tile=max_tile, sha256="", created_at="",
        source={**sc.source, "dynamic_from": src.name, "dynamic_from_sha256": sc.sha256, "coordinates": coords}),
        out)
