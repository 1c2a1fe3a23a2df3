"""Tiny ONNX graphs with the exported-graph contract, for runtime tests.

"affine": probs = [x, 1 - x] (class 0 = the normalised pixel): what MONAI-style
stitching tests need, the stitched probabilities must reproduce the frame.
"ratio": probs = softmax([x, 1 - x, 0.5, ...] + gain * ratio): the output depends on
the ratio input, so ratio modes are visible.
Both are pointwise, so ``multiple`` (with ``max_tile`` and ``halo``) can declare them to take any
tile side tile, tile + multiple, ..., max_tile, as a fully convolutional model's graph does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from phaseedge import names, sidecar
from phaseedge.normalize import METHOD


def _io(tile: int | str, n: int):
    h, w = (tile, tile) if isinstance(tile, int) else ("H", "W")
    image = helper.make_tensor_value_info(names.IMAGE, TensorProto.FLOAT16, ["B", 1, h, w])
    ratio = helper.make_tensor_value_info(names.RATIO, TensorProto.FLOAT, ["B", n])
    probs = helper.make_tensor_value_info(names.PROBS, TensorProto.FLOAT16, ["B", n, h, w])
    return image, ratio, probs


def _const(name: str, value) -> onnx.NodeProto:
    arr = np.asarray(value, dtype=np.float32)
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(
        name + "_t", TensorProto.FLOAT, arr.shape, arr.ravel().tolist()))


def write_graph(path: Path, kind: str = "affine", tile: int = 32, n: int = 2, gain: float = 4.0,
                max_batch: int = 4, class_names: list[str] | None = None, multiple: int | None = None,
                max_tile: int | None = None, halo: int | None = None) -> Path:
    """Write ``path`` (.onnx) and its sidecar; returns the path."""
    image, ratio, probs = _io(tile if multiple is None else "dynamic", n)
    nodes = [
        helper.make_node("Cast", [names.IMAGE], ["x"], to=TensorProto.FLOAT),
        _const("one", 1.0),
        helper.make_node("Sub", ["one", "x"], ["inv"]),
    ]
    chans = ["x", "inv"]
    for c in range(2, n):
        nodes += [_const(f"h{c}", 0.5), helper.make_node("Mul", ["one", f"h{c}"], [f"k{c}"]),
                  helper.make_node("Expand", [f"k{c}", "xshape"], [f"c{c}"])]
        chans.append(f"c{c}")
    nodes.insert(1, helper.make_node("Shape", ["x"], ["xshape"]))
    nodes.append(helper.make_node("Concat", chans, ["stack"], axis=1))
    if kind == "affine":
        if n != 2:
            raise ValueError("the affine graph has 2 classes")
        # ratio must still be consumed: add 0 * sum(ratio) so the input is live
        nodes += [
            helper.make_node("ReduceSum", [names.RATIO], ["rs"], keepdims=1),
            _const("zero", 0.0),
            helper.make_node("Mul", ["rs", "zero"], ["rz"]),
            helper.make_node("Unsqueeze", ["rz", "axes23"], ["rz4"]),
            helper.make_node("Add", ["stack", "rz4"], ["pf"]),
        ]
    elif kind == "ratio":
        nodes += [
            _const("gain", gain),
            helper.make_node("Mul", [names.RATIO, "gain"], ["rg"]),
            helper.make_node("Unsqueeze", ["rg", "axes23"], ["rg4"]),
            helper.make_node("Add", ["stack", "rg4"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["pf"], axis=1),
        ]
    else:
        raise ValueError(kind)
    nodes.insert(0, helper.make_node("Constant", [], ["axes23"], value=helper.make_tensor(
        "axes23_t", TensorProto.INT64, [2], [2, 3])))
    nodes.append(helper.make_node("Cast", ["pf"], [names.PROBS], to=TensorProto.FLOAT16))
    graph = helper.make_graph(nodes, f"test_{kind}", [image, ratio], [probs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    inputs, outputs = sidecar.io_specs(tile, n, dynamic=multiple is not None)
    sc = sidecar.Sidecar(kind="onnx", architecture=f"test-{kind}", plm=kind == "ratio",
                         class_names=tuple(class_names or [f"phase{i}" for i in range(n)]), n_classes=n,
                         tile=tile, normalization=dict(METHOD), inputs=inputs, outputs=outputs,
                         batch=(1, min(2, max_batch), max_batch), precision="fp16", tile_multiple=multiple,
                         max_tile=max_tile, halo=halo)
    sidecar.write(sc, path)
    return path
