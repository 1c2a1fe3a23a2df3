"""ONNX export: graph contract, dynamic batch, the ratio input, parity with PyTorch."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from phaseedge.export.check import ort_session, random_inputs

from phaseedge import names
from phaseedge import sidecar as sc_mod
from tests.export_models import CLASSES, KINDS, exported

pytest.importorskip("torch")


def _io(path):
    g = onnx.load(str(path))
    return {v.name: (v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in (*g.graph.input, *g.graph.output)}


@pytest.mark.parametrize("kind", list(KINDS))
def test_contract_io_and_sidecar(kind):
    e = exported(kind)
    sc = sc_mod.load(e.onnx)
    t, n = sc.tile, len(CLASSES)
    h, w = (t, t) if sc.tile_multiple is None else ("4*h", "4*w")  # U-Nets take any multiple of 2**depth
    assert _io(e.onnx) == {
        names.IMAGE: (onnx.TensorProto.FLOAT16, ["B", 1, h, w]),
        names.RATIO: (onnx.TensorProto.FLOAT, ["B", n]),
        names.PROBS: (onnx.TensorProto.FLOAT16, ["B", n, h, w]),
    }
    assert (sc.tile_multiple, sc.max_tile) == ((None, None) if kind.startswith("sam") else (4, 2048))
    assert (sc.halo is None) == kind.startswith("sam")
    assert sc.precision == "fp32" and sc.plm == KINDS[kind][1] and sc.architecture == KINDS[kind][0]
    assert sc.class_names == tuple(CLASSES) and sc.batch == (1, 4, 8)
    assert {o.version for o in onnx.load(str(e.onnx)).opset_import if o.domain in ("", "ai.onnx")} == {18}


@pytest.mark.parametrize("kind", list(KINDS))
def test_batches_run_and_probs_are_distributions(kind):
    e = exported(kind)
    sc = sc_mod.read(e.onnx)
    sess = ort_session(e.onnx)
    for b in (1, 3, 8):
        image, ratio = random_inputs(b, sc.tile, sc.n_classes, seed=b)
        (probs,) = sess.run([names.PROBS], {names.IMAGE: image, names.RATIO: ratio})
        assert probs.shape == (b, sc.n_classes, sc.tile, sc.tile) and probs.dtype == np.float16
        np.testing.assert_allclose(probs.astype(np.float32).sum(1), 1.0, atol=3e-3)


@pytest.mark.parametrize("kind", ["sam-plm", "unet-plm"])
def test_ratio_changes_probs_with_plm(kind):
    e = exported(kind)
    sc = sc_mod.read(e.onnx)
    sess = ort_session(e.onnx)
    image, _ = random_inputs(2, sc.tile, sc.n_classes)
    feed = {names.IMAGE: image}
    a = sess.run(None, {**feed, names.RATIO: np.array([[1, 0, 0], [0, 1, 0]], np.float32)})[0]
    b = sess.run(None, {**feed, names.RATIO: np.array([[0, 0, 1], [0, 0, 0]], np.float32)})[0]
    assert np.abs(a.astype(np.float32) - b).max() > 1e-3


def test_plm_off_keeps_ratio_input_and_ignores_it():
    e = exported("unet-noplm")
    sess = ort_session(e.onnx)
    assert [i.name for i in sess.get_inputs()] == [names.IMAGE, names.RATIO]
    sc = sc_mod.read(e.onnx)
    image, ratio = random_inputs(3, sc.tile, sc.n_classes)
    a = sess.run(None, {names.IMAGE: image, names.RATIO: ratio})[0]
    b = sess.run(None, {names.IMAGE: image, names.RATIO: np.zeros_like(ratio)})[0]
    np.testing.assert_array_equal(a, b)
    # ratio is consumed by a node (not a dangling input TensorRT would drop)
    assert any(names.RATIO in n.input for n in onnx.load(str(e.onnx)).graph.node)


def test_one_layernormalization_node_per_layernorm():
    import torch
    from phaseedge.train import checkpoint

    e = exported("sam-plm")
    model = checkpoint.load(e.checkpoint)
    n_ln = sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    ops = collections.Counter(n.op_type for n in onnx.load(str(e.onnx)).graph.node)
    assert n_ln > 0 and ops["LayerNormalization"] == n_ln
    assert not [i.name for i in onnx.load(str(e.onnx)).graph.initializer if "lora" in i.name.lower()]


def test_unmerged_checkpoint_is_merged_for_export(tmp_path):
    import torch
    from phaseedge.export.onnx_export import load_checkpoint
    from phaseedge.train import checkpoint
    from phaseedge.train.models import build_model

    torch.manual_seed(1)
    model = build_model("sam-tiny", 3, plm=True).eval()
    adapters = [m.lora for m in model.modules() if getattr(m, "lora", None) is not None]
    assert adapters
    for a in adapters:  # trained adapters are non-zero
        torch.nn.init.normal_(a.q_b.weight, std=0.05)
        torch.nn.init.normal_(a.v_b.weight, std=0.05)
    checkpoint.save(model, tmp_path, class_names=CLASSES, merged=False)
    loaded, info = load_checkpoint(tmp_path)
    assert not [m for m in loaded.modules() if getattr(m, "lora", None) is not None]
    image, ratio = torch.rand(2, 1, info.tile, info.tile), torch.rand(2, 3)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(image, ratio), model(image, ratio), atol=1e-4, rtol=1e-4)


def test_onnx_matches_torch_on_new_inputs():
    import torch
    from phaseedge.export.onnx_export import ExportWrapper
    from phaseedge.train import checkpoint

    e = exported("sam-plm")
    model = checkpoint.load(e.checkpoint)
    sc = sc_mod.read(e.onnx)
    image, ratio = random_inputs(5, sc.tile, sc.n_classes, seed=42)
    with torch.inference_mode():
        ref = ExportWrapper(model, True).eval()(torch.from_numpy(image), torch.from_numpy(ratio)).numpy()
    got = ort_session(e.onnx).run(None, {names.IMAGE: image, names.RATIO: ratio})[0]
    assert np.abs(ref.astype(np.float32) - got).max() < 2e-3
    assert (ref.argmax(1) == got.argmax(1)).mean() > 0.99


def test_a_unet_graph_matches_torch_at_tile_sizes_it_was_not_trained_at():
    import torch
    from phaseedge.export.onnx_export import ExportWrapper
    from phaseedge.train import checkpoint

    e = exported("unet-plm")
    model = checkpoint.load(e.checkpoint)
    sc = sc_mod.read(e.onnx)
    sess = ort_session(e.onnx)
    for tile in (sc.tile + 4, 3 * sc.tile):
        image, ratio = random_inputs(2, tile, sc.n_classes, seed=tile)
        with torch.inference_mode():
            ref = ExportWrapper(model, True).eval()(torch.from_numpy(image), torch.from_numpy(ratio)).numpy()
        got = sess.run(None, {names.IMAGE: image, names.RATIO: ratio})[0]
        assert got.shape == (2, sc.n_classes, tile, tile)
        assert np.abs(ref.astype(np.float32) - got).max() < 2e-3


def test_bad_arguments(tmp_path):
    from phaseedge.export.cli import main

    e = exported("unet-plm")
    assert main(["onnx", str(e.checkpoint), "-o", str(tmp_path / "m.onnx"), "--opset", "16"]) == 2
    assert main(["onnx", str(e.checkpoint), "-o", str(tmp_path / "m.pt")]) == 2
    assert main(["onnx", str(tmp_path / "nowhere"), "-o", str(tmp_path / "m.onnx")]) == 2
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(SystemExit):
        main(["onnx", str(e.checkpoint), "-o", str(tmp_path / "m.onnx"), "--batch", "4:2:8"])
    assert main(["onnx", str(e.checkpoint), "-o", str(tmp_path / "m.onnx"), "--max-tile", "30"]) == 2
