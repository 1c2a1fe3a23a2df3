"""Strongly typed TensorRT-RTX builds (CPU, no GPU needed) from every exported graph kind."""

from __future__ import annotations

import dataclasses

import pytest
from phaseedge.export import trt
from phaseedge.export.cli import main

from phaseedge import sidecar as sc_mod
from phaseedge.gpu import has_cuda_gpu
from tests.conftest import requires_gpu
from tests.export_models import exported

pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx not installed (the [export] extra)")


@pytest.mark.parametrize(("kind", "graph"), [("sam-plm", "onnx"), ("sam-plm", "fp16"), ("unet-plm", "onnx"),
                                             ("unet-plm", "fp16"), ("unet-noplm", "fp16")])
def test_rtx_builds_every_graph_kind(tmp_path, kind, graph):
    src = getattr(exported(kind), graph)
    out = tmp_path / f"{kind}.{graph}.engine"
    cache = tmp_path / "timing.cache"
    result = trt.build_engine(src, out, batch=(1, 2, 4), target="rtx", timing_cache=cache, log=lambda _: None)
    assert out.stat().st_size > 0 and not cache.exists()  # TensorRT-RTX has no build-time timing
    sc = sc_mod.load(out)
    assert sc.kind == "engine" and sc.batch == (1, 2, 4) and sc.engine.target == "rtx"
    assert sc.engine.strongly_typed and sc.source["onnx_sha256"] == sc_mod.read(src).sha256
    assert sc.class_names == sc_mod.read(src).class_names
    if not has_cuda_gpu():
        assert sc.engine.gpu_name == sc_mod.NO_GPU and sc.engine.compute_capability is None
    want = "fp16" if graph == "fp16" else "fp32"
    assert sc.precision == want
    assert trt.mostly_fp16(result.report) == (want == "fp16")
    if result.report.source == "parsed network":  # exact on the network; the GPU's engine may fuse
        assert result.report.heavy_by_dtype == {want: sum(result.report.heavy_by_dtype.values())}


def test_rtx_profile_covers_every_tile_size_the_graph_takes(tmp_path):
    """The builder runs here (TensorRT-RTX, no GPU): a dynamic graph's engine keeps its range and halo."""
    import tensorrt_rtx as rtx

    src = exported("unet-plm").fp16
    sc_src = sc_mod.read(src)
    result = trt.build_engine(src, tmp_path / "m.engine", batch=(1, 2, 4), target="rtx", log=lambda _: None)
    sc = result.sidecar
    assert (sc.tile, sc.tile_multiple, sc.max_tile, sc.halo) == (sc_src.tile, 4, sc_src.max_tile, sc_src.halo)
    assert sc.source["profile_tiles"] == [sc_src.tile, sc_src.tile, sc_src.max_tile]
    logger = rtx.Logger(rtx.Logger.ERROR)
    network = rtx.Builder(logger).create_network(1 << int(rtx.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    assert rtx.OnnxParser(network, logger).parse_from_file(str(src))
    assert tuple(network.get_input(0).shape) == (-1, 1, -1, -1)  # height and width left to the profile
    with pytest.raises(ValueError, match="MIN <= OPT <= MAX"):
        trt.build_engine(src, tmp_path / "x.engine", batch=(1, 2, 4), target="rtx", tiles=(64, 32, 128))
    sam = trt.build_engine(exported("sam-plm").fp16, tmp_path / "s.engine", batch=(1, 1, 2), target="rtx",
                           log=lambda _: None).sidecar
    assert sam.tile_multiple is None and sam.tile_sizes() == range(sam.tile, sam.tile + 1)


def test_fp16_label_on_fp32_graph_fails(tmp_path):
    """An 'fp16' build that is not mostly fp16 must fail, not ship."""
    e = exported("unet-plm")
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(e.onnx.read_bytes())
    sc_mod.write(dataclasses.replace(sc_mod.read(e.onnx), precision="fp16"), fake)
    with pytest.raises(trt.BuildError, match="not mostly fp16"):
        trt.build_engine(fake, tmp_path / "fake.engine", batch=(1, 1, 2), target="rtx", log=lambda _: None)
    assert not (tmp_path / "fake.engine").exists()


def test_cli_and_errors(tmp_path, capsys):
    e = exported("unet-noplm")
    out = tmp_path / "m.engine"
    assert main(["trt", str(e.fp16), "-o", str(out), "--batch", "1:2:4", "--target", "rtx", "--workspace", "256",
                 "--tiles", "32:64:256"]) == 0
    assert "fp16" in capsys.readouterr().out
    sc = sc_mod.load(out)
    assert sc.source["workspace_mb"] == 256 and sc.source["profile_tiles"] == [32, 64, 256]
    assert sc.tile_sizes() == range(32, 257, 4)  # the engine takes what its profile covers
    assert main(["trt", str(e.fp16), "-o", str(out), "--batch", "1:2:4", "--target", "rtx", "--tiles", "32:34:64"]) == 2
    assert "each a size the graph takes (32..2048 in steps of 4)" in capsys.readouterr().err
    # no sidecar beside the graph -> clear error, exit 2
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(e.fp16.read_bytes())
    assert main(["trt", str(bare), "-o", str(tmp_path / "x.engine"), "--batch", "1:2:4", "--target", "rtx"]) == 2
    assert "rebuild with phaseedge-export" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["trt", str(e.fp16), "-o", str(out), "--batch", "0:2:4", "--target", "rtx"])


@pytest.mark.skipif(has_cuda_gpu(), reason="checks the no-GPU refusal")
def test_tensorrt_target_needs_gpu(tmp_path):
    e = exported("unet-plm")
    with pytest.raises(trt.BuildError, match="--target rtx"):
        trt.build_engine(e.fp16, tmp_path / "m.engine", batch=(1, 2, 4), target="tensorrt")


def test_parse_batch():
    assert trt.parse_batch("1:4:8") == (1, 4, 8)
    assert trt.parse_batch("8") == (1, 8, 8)
    for bad in ("4:2:8", "0:1:2", "a:b:c", "1:2"):
        with pytest.raises(ValueError):
            trt.parse_batch(bad)


@pytest.mark.gpu
@requires_gpu
def test_engine_on_gpu_matches_onnx(tmp_path):
    """With a GPU: build for whichever TensorRT is installed, run it, compare with ONNX Runtime."""
    import importlib.util

    from phaseedge.export.check import run_check

    target = "tensorrt" if importlib.util.find_spec("tensorrt") else "rtx"
    e = exported("sam-plm")
    out = tmp_path / "m.engine"
    result = trt.build_engine(e.fp16, out, batch=(1, 2, 4), target=target)
    assert result.report.source == "engine inspector" and result.report.heavy_fp16_share >= 0.9
    report = run_check(e.onnx, fp16=e.fp16, engine=out)
    if out.name in report.skipped:
        pytest.skip(report.skipped[out.name])
    assert report.passed, str(report)
