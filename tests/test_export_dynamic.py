"""Fixed-tile graphs made to take any tile size (export/dynamic.py) and the halo measurement (export/halo.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from runtime_graphs import write_graph

from phaseedge import names, sidecar
from phaseedge.normalize import METHOD

pytest.importorskip("onnxruntime")
from phaseedge.export import dynamic, halo
from phaseedge.export.check import ort_session, random_inputs

T = 16  # training tile of the old-style graph


def _init(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def old_style_unet(path, seed=0):
    """What the dynamo exporter made of a PLM U-Net before graphs took any tile size: a pooling level,
    CoordConv coordinates frozen as [1,1,T,1] / [1,1,1,T] linspace constants, and target shapes that
    spell T out (an Expand shape concatenated from constants, a Reshape shape constant)."""
    rng = np.random.default_rng(seed)
    inits = [_init(k, rng.normal(0, 0.5, shape)) for k, shape in
             (("w_in", (4, 1, 3, 3)), ("w_down", (4, 4, 3, 3)), ("w_up", (4, 4, 2, 2)), ("w_out", (2, 6, 1, 1)))]
    inits += [
             _init("view", np.linspace(-1, 1, T).reshape(1, 1, T, 1)),
             _init("view_1", np.linspace(-1, 1, T).reshape(1, 1, 1, T)),
             _init("one", [1], np.int64), _init("size", [T], np.int64),
             _init("flat", [-1, 6, T, T], np.int64), _init("axes", [2, 3], np.int64), _init("zero", 0.0)]
    n = helper.make_node
    nodes = [
        n("Cast", [names.IMAGE], ["x"], to=TensorProto.FLOAT),
        n("Conv", ["x", "w_in"], ["a"], pads=[1, 1, 1, 1]),
        n("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        n("Conv", ["p", "w_down"], ["q"], pads=[1, 1, 1, 1]),
        n("ConvTranspose", ["q", "w_up"], ["u"], strides=[2, 2]),
        n("Shape", [names.IMAGE], ["b"], start=0, end=1),
        n("Concat", ["b", "one", "size", "size"], ["shp"], axis=0),
        n("Expand", ["view", "shp"], ["yy"]),
        n("Expand", ["view_1", "shp"], ["xx"]),
        n("Concat", ["u", "xx", "yy"], ["c"], axis=1),
        n("Reshape", ["c", "flat"], ["r"]),
        n("Conv", ["r", "w_out"], ["l0"]),
        n("ReduceSum", [names.RATIO], ["rs"], keepdims=1),
        n("Mul", ["rs", "zero"], ["rz"]),
        n("Unsqueeze", ["rz", "axes"], ["rz4"]),
        n("Add", ["l0", "rz4"], ["logits"]),
        n("Softmax", ["logits"], ["sm"], axis=1),
        n("Cast", ["sm"], [names.PROBS], to=TensorProto.FLOAT16),
    ]
    io = [helper.make_tensor_value_info(names.IMAGE, TensorProto.FLOAT16, ["B", 1, T, T]),
          helper.make_tensor_value_info(names.RATIO, TensorProto.FLOAT, ["B", 2]),
          helper.make_tensor_value_info(names.PROBS, TensorProto.FLOAT16, ["B", 2, T, T])]
    model = helper.make_model(helper.make_graph(nodes, "old", io[:2], io[2:], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    inputs, outputs = sidecar.io_specs(T, 2)
    sidecar.write(sidecar.Sidecar(kind="onnx", architecture="unet", plm=True, class_names=("a", "b"), n_classes=2,
                                  tile=T, normalization=dict(METHOD), inputs=inputs, outputs=outputs,
                                  batch=(1, 2, 4), precision="fp32", trained_on="synthetic"), path)
    return path


def test_a_fixed_graph_takes_every_multiple_of_its_pooling_and_is_unchanged_at_its_tile(tmp_path):
    src = old_style_unet(tmp_path / "old.onnx")
    out = tmp_path / "new.onnx"
    sc = dynamic.convert(src, out, max_tile=64, log=lambda _: None)
    assert (sc.tile, sc.tile_multiple, sc.max_tile, sc.trained_on) == (T, 2, 64, "synthetic")
    assert sc.inputs[0].shape == ("B", 1, "H", "W") and sidecar.load(out).source["dynamic_from"] == "old.onnx"
    a, b = ort_session(src), ort_session(out)
    image, ratio = random_inputs(3, T, 2)
    feed = {names.IMAGE: image, names.RATIO: ratio}
    assert np.array_equal(a.run(None, feed)[0], b.run(None, feed)[0])  # bit for bit at the training tile
    for t in (18, 40):
        image, ratio = random_inputs(2, t, 2)
        assert b.run(None, {names.IMAGE: image, names.RATIO: ratio})[0].shape == (2, 2, t, t)
    with pytest.raises(ValueError, match="already takes"):
        dynamic.convert(out, tmp_path / "again.onnx")


@pytest.mark.parametrize("tile", [T, 24, 50])
def test_border_coordinates_equal_the_pytorch_convention(tmp_path, tile):
    torch = pytest.importorskip("torch")
    import onnxruntime as ort
    from phaseedge.train.models.plm import coordinates

    model = dynamic.make_dynamic(onnx.load(str(old_style_unet(tmp_path / "old.onnx"))), T, 2, "border")
    model.graph.output.extend([helper.make_tensor_value_info("xx", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("yy", TensorProto.FLOAT, None)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    image, ratio = random_inputs(1, tile, 2)
    _, xx, yy = sess.run([names.PROBS, "xx", "yy"], {names.IMAGE: image, names.RATIO: ratio})
    want_x, want_y = coordinates(tile, tile, torch.zeros(1), span=(T, T))
    # the graph's constants are numpy's linspace, torch's differs in the last bit
    np.testing.assert_allclose(xx[0, 0], want_x.numpy(), rtol=0, atol=1e-7)
    np.testing.assert_allclose(yy[0, 0], want_y.numpy(), rtol=0, atol=1e-7)


def _box_filter_graph(path, k=9):
    """probs = [y, 1 - y] with y a k x k mean of the pixel (zero padding): border effect up to k // 2."""
    pad = k // 2
    n = helper.make_node
    nodes = [n("Cast", [names.IMAGE], ["x"], to=TensorProto.FLOAT),
             n("Conv", ["x", "box"], ["y"], pads=[pad] * 4),
             n("Sub", ["one", "y"], ["inv"]),
             n("Concat", ["y", "inv"], ["pf0"], axis=1),
             n("ReduceSum", [names.RATIO], ["rs"], keepdims=1),
             n("Mul", ["rs", "zero"], ["rz"]),
             n("Unsqueeze", ["rz", "axes"], ["rz4"]),
             n("Add", ["pf0", "rz4"], ["pf"]),
             n("Cast", ["pf"], [names.PROBS], to=TensorProto.FLOAT16)]
    inits = [_init("box", np.full((1, 1, k, k), 1 / k**2)), _init("one", 1.0), _init("zero", 0.0),
             _init("axes", [2, 3], np.int64)]
    io = [helper.make_tensor_value_info(names.IMAGE, TensorProto.FLOAT16, ["B", 1, "H", "W"]),
          helper.make_tensor_value_info(names.RATIO, TensorProto.FLOAT, ["B", 2]),
          helper.make_tensor_value_info(names.PROBS, TensorProto.FLOAT16, ["B", 2, "H", "W"])]
    model = helper.make_model(helper.make_graph(nodes, "box", io[:2], io[2:], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    inputs, outputs = sidecar.io_specs(16, 2, dynamic=True)
    sidecar.write(sidecar.Sidecar(kind="onnx", architecture="box", plm=False, class_names=("a", "b"), n_classes=2,
                                  tile=16, normalization=dict(METHOD), inputs=inputs, outputs=outputs,
                                  batch=(1, 1, 1), precision="fp32", tile_multiple=1, max_tile=256), path)
    return path


def test_halo_is_where_the_border_stops_mattering(tmp_path):
    box = _box_filter_graph(tmp_path / "box.onnx")
    profile = halo.record(box, seeds=(41,), log=lambda _: None)
    assert profile.halo == 4  # a 9 x 9 window reaches the border from 4 pixels in, not from 5
    assert profile.mean_abs[:4].min() > 0 and profile.mean_abs[4:].max() < halo.EPS
    sc = sidecar.load(box)
    assert sc.halo == 4 and sc.source["halo"]["halo"] == 4
    point = write_graph(tmp_path / "point.onnx", "affine", tile=16, n=2, multiple=4, max_tile=128)
    assert halo.record(point, seeds=(41,), log=lambda _: None).halo == 0  # a pointwise model has none
    fixed = write_graph(tmp_path / "fixed.onnx", "affine", tile=16, n=2)
    with pytest.raises(ValueError, match="only 16-pixel tiles"):
        halo.record(fixed)
