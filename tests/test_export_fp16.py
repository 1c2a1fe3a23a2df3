"""fp16 conversion: precision plan, one type per node, I/O kept, parity with fp32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from phaseedge.export import fp16
from phaseedge.export.check import ort_session, random_inputs

from phaseedge import names
from phaseedge import sidecar as sc_mod
from tests.export_models import KINDS, exported

FP32, FP16 = TensorProto.FLOAT, TensorProto.FLOAT16


def _types(model: onnx.ModelProto) -> dict[str, int]:
    m = onnx.shape_inference.infer_shapes(model)
    t = {i.name: i.data_type for i in m.graph.initializer}
    t.update({v.name: v.type.tensor_type.elem_type for v in (*m.graph.input, *m.graph.value_info, *m.graph.output)})
    return t


@pytest.mark.parametrize("kind", list(KINDS))
def test_exported_graphs_convert(kind):
    e = exported(kind)
    model = onnx.load(str(e.fp16))
    types = _types(model)
    io = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)}
    assert io == {names.IMAGE: FP16, names.RATIO: FP32, names.PROBS: FP16}
    kept = 0
    for n in model.graph.node:
        float_types = {types[x] for x in (*n.input, *n.output) if x and types.get(x) in (FP32, FP16)}
        if n.op_type in ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Erf"):
            assert float_types == {FP32}, f"{n.op_type} {n.name} is not fp32"
            kept += 1
        elif n.op_type in ("Conv", "MatMul", "Gemm", "Einsum", "ConvTranspose"):
            assert float_types == {FP16}, f"{n.op_type} {n.name} is not fp16"
    assert kept >= 1  # every kind ends in a Softmax
    sc = sc_mod.load(e.fp16)
    assert sc.precision == "fp16" and sc.source["fp32_sha256"] == sc_mod.read(e.onnx).sha256
    assert sc.source["fp16_nodes"] / sc.source["float_nodes"] > 0.6
    # weights are stored once, in fp16 (file size is a poor proxy on tiny graphs: node protos dominate)
    assert _float_weight_bytes(e.fp16) < 0.55 * _float_weight_bytes(e.onnx)


def _float_weight_bytes(path) -> int:
    inits = onnx.load(str(path)).graph.initializer
    return sum(numpy_helper.to_array(i).nbytes for i in inits if i.data_type in (FP32, FP16))


def test_fp16_matches_fp32_in_ort():
    e = exported("sam-plm")
    sc = sc_mod.read(e.onnx)
    image, ratio = random_inputs(4, sc.tile, sc.n_classes, seed=7)
    feed = {names.IMAGE: image, names.RATIO: ratio}
    a = ort_session(e.onnx).run(None, feed)[0].astype(np.float32)
    b = ort_session(e.fp16).run(None, feed)[0].astype(np.float32)
    assert np.abs(a - b).max() < 2e-2 and (a.argmax(1) == b.argmax(1)).mean() > 0.98
    assert np.abs(a - b).max() > 0  # it really computes in fp16


def test_convert_refuses_fp16_input(tmp_path):
    e = exported("unet-plm")
    with pytest.raises(ValueError, match="fp16"):
        fp16.convert_checked(e.fp16, tmp_path / "again.onnx")
    assert not (tmp_path / "again.onnx").exists()


def _toy_graph() -> onnx.ModelProto:
    """x[1,2,4,4] f32 -> Conv -> LayerNorm(last axis) -> Resize(scales) -> Softmax -> y f32, plus a Constant."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((2, 2, 1, 1)).astype(np.float32), "w"),
        numpy_helper.from_array(np.ones(4, np.float32), "ln_s"),
        numpy_helper.from_array(np.zeros(4, np.float32), "ln_b"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array(1e6, np.float32))),
        helper.make_node("Min", ["c", "k"], ["cm"]),
        helper.make_node("LayerNormalization", ["cm", "ln_s", "ln_b"], ["ln"], axis=-1),
        helper.make_node("Resize", ["ln", "", "scales"], ["r"], mode="linear"),
        helper.make_node("Softmax", ["r"], ["y"], axis=1),
    ]
    g = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", FP32, [1, 2, 4, 4])],
                          [helper.make_tensor_value_info("y", FP32, [1, 2, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_toy_graph_types_and_values():
    model = _toy_graph()
    new, report = fp16.convert(model)
    onnx.checker.check_model(new, full_check=True)
    types = _types(new)
    by_op = {n.op_type: n for n in new.graph.node}
    assert types[by_op["Conv"].output[0]] == FP16
    assert types[by_op["Conv"].input[1]] == FP16  # weight converted (an fp16 copy, not a Cast)
    assert all(types[x] == FP32 for x in by_op["LayerNormalization"].input)
    assert types[by_op["Resize"].input[2]] == FP32  # scales stay float32 as the spec requires
    assert types["y"] == FP32 and types["x"] == FP32  # graph I/O unchanged
    assert "Constant" not in by_op  # folded into an initialiser, clipped to the fp16 range
    k16 = next(i for i in new.graph.initializer if i.name.startswith("k") and i.data_type == FP16)
    assert float(numpy_helper.to_array(k16)) == 65504.0
    assert report.fp16_nodes >= 2 and report.fp32_ops["LayerNormalization"] == 1

    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(new.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ref, atol=5e-3)
