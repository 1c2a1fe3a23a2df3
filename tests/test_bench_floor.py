"""Compute-floor counters: the ONNX graph count, FlopCounterMode and the hand count agree."""

from __future__ import annotations

import json

import numpy as np
import pytest
from phaseedge.bench import cli, floor
from phaseedge.bench.models import parse_frame

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
nn = torch.nn


class _Net(nn.Module):
    """Conv, grouped strided conv, transposed conv and a ratio Linear: every counted layer kind."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(1, 8, 3, padding=1)
        self.d = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2)
        self.u = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.r = nn.Linear(4, 4)

    def forward(self, image, ratio):
        return torch.softmax(self.u(self.d(self.c(image))) + self.r(ratio)[:, :, None, None], dim=1)


def _hand(tile: int) -> int:
    """Written out by hand for _Net: 2 * MACs per layer."""
    c = 2 * 1 * 9 * 8 * tile * tile
    d = 2 * (8 // 2) * 9 * 8 * (tile // 2) ** 2
    u = 2 * 8 * (tile // 2) ** 2 * 4 * 4  # every input pixel x Cin scatters into Cout * 2 * 2
    r = 2 * 4 * 4
    return c + d + u + r


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from phaseedge import sidecar

    tile = 32
    net = _Net().eval()
    path = tmp_path_factory.mktemp("floor") / "net.onnx"
    torch.onnx.export(net, (torch.rand(1, 1, tile, tile), torch.rand(1, 4)), str(path), dynamo=False,
                      input_names=["image", "ratio"], output_names=["probs"],
                      dynamic_axes={"image": {0: "B"}, "ratio": {0: "B"}, "probs": {0: "B"}})
    inputs, outputs = sidecar.io_specs(tile, 4)
    sidecar.write(sidecar.Sidecar(kind="onnx", architecture="test-net", plm=True, class_names=tuple("abcd"),
                                  n_classes=4, tile=tile, normalization={"method": "percentile", "low": 0.5,
                                                                          "high": 99.5},
                                  inputs=inputs, outputs=outputs, batch=(1, 2, 4), precision="fp32"), path)
    return net, path, tile


def test_three_counts_agree_with_the_hand_count(exported):
    net, path, tile = exported
    expected = _hand(tile)
    assert floor.layer_flops(net, tile, 4)["flops"] == expected
    assert floor.torch_flops(net, tile, 4)["flops"] == expected
    counted = floor.onnx_flops(path)
    assert counted["flops"] == expected
    assert counted["unresolved_nodes"] == []
    assert "Softmax" in counted["uncounted_ops"]


def test_floor_report_scales_with_tiles_and_peak():
    r = floor.floor_report(10**9, 12, (3000, 4000), 1e11)
    assert r["gflops_per_frame"] == pytest.approx(12.0)
    assert r["gflops_per_megapixel"] == pytest.approx(1.0)
    assert r["floor_ms"] == pytest.approx(120.0)
    assert floor.floor_report(10**9, 12, (3000, 4000), None)["floor_ms"] is None
    with pytest.raises(ValueError, match="n_tiles"):
        floor.floor_report(10**9, 0, (8, 8), 1.0)


def test_matmul_probe_reports_a_positive_peak():
    peak = floor.matmul_peak("cpu", n=128, repeats=1)
    assert peak["flops_per_s"]["fp32"] > 0
    with pytest.raises(ValueError, match="device"):
        floor.matmul_peak("tpu")


def test_frame_argument_is_width_by_height():
    assert parse_frame("4096x3072") == (3072, 4096)
    for bad in ("4096", "ax3", "4x4"):
        with pytest.raises(Exception, match="frame"):
            parse_frame(bad)


def test_floor_command_prints_json(exported, capsys):
    _, path, tile = exported
    assert cli.main(["floor", "--model", str(path), "--frame", "100x70", "--overlap", "0.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    from phaseedge.tiling import TileGrid

    n = TileGrid.for_frame(70, 100, tile, 0.5).n_tiles
    assert out["tiles_per_frame"] == n
    assert out["flops_per_tile"] == _hand(tile)
    assert out["gflops_per_megapixel"] == pytest.approx(_hand(tile) * n / 1e9 / (70 * 100 / 1e6))
    assert np.isfinite(out["floor_ms"]) and out["floor_ms"] > 0


def test_floor_command_missing_model_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["floor", "--model", str(tmp_path / "nope.onnx")]) == 2
    assert "not found" in capsys.readouterr().err


class TinyNet(nn.Module):
    """A contract-shaped segmentation model (fp16 image in, fp16 softmax out), fast to export.

    The PLM-like ratio path makes the output depend on the ratio, as a PLM model's does.
    """

    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, n_classes, 3, padding=1)
        self.r = nn.Linear(n_classes, n_classes)

    def forward(self, image, ratio):
        x = torch.relu(self.c1(image.float()))
        logits = self.c2(x) + self.r(ratio)[:, :, None, None]
        return torch.softmax(logits, dim=1).half()


def export_tiny(path, tile: int = 32, n_classes: int = 3, seed: int = 0):
    """TinyNet exported with the (fast) TorchScript exporter, plus its sidecar."""
    from phaseedge import sidecar

    torch.manual_seed(seed)
    net = TinyNet(n_classes).eval()
    torch.onnx.export(net, (torch.rand(2, 1, tile, tile).half(), torch.rand(2, n_classes)), str(path),
                      dynamo=False, input_names=["image", "ratio"], output_names=["probs"],
                      dynamic_axes={"image": {0: "B"}, "ratio": {0: "B"}, "probs": {0: "B"}})
    inputs, outputs = sidecar.io_specs(tile, n_classes)
    sidecar.write(sidecar.Sidecar(kind="onnx", architecture="tiny-test", plm=True,
                                  class_names=tuple(f"c{i}" for i in range(n_classes)), n_classes=n_classes,
                                  tile=tile, normalization={"method": "percentile", "low": 0.5, "high": 99.5},
                                  inputs=inputs, outputs=outputs, batch=(1, 4, 8), precision="fp32"), path)
    return net, path


@pytest.mark.parametrize("arch", ["unet-tiny", "sam-tiny"])
def test_graph_count_matches_flop_counter_on_project_models(arch, tmp_path, capsys):
    """The real architectures (attention reshapes, Einsum, LoRA, PLM) exported and counted both ways."""
    import warnings

    from phaseedge.export.onnx_export import ExportWrapper
    from phaseedge.train.models import build_model

    from phaseedge import sidecar

    model = build_model(arch, 3, plm=True).eval()
    t = model.tile
    path = tmp_path / f"{arch}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ExportWrapper(model, True).eval(), (torch.rand(2, 1, t, t).half(), torch.rand(2, 3)),
                          str(path), dynamo=False, input_names=["image", "ratio"], output_names=["probs"],
                          dynamic_axes={"image": {0: "B"}, "ratio": {0: "B"}, "probs": {0: "B"}})
    inputs, outputs = sidecar.io_specs(t, 3)
    sidecar.write(sidecar.Sidecar(kind="onnx", architecture=arch, plm=True, class_names=("a", "b", "c"), n_classes=3,
                                  tile=t, normalization={"method": "percentile", "low": 0.5, "high": 99.5},
                                  inputs=inputs, outputs=outputs, batch=(1, 4, 8), precision="fp32",
                                  source={"arch_kwargs": model.config.get("arch_kwargs", {})}), path)
    assert cli.main(["floor", "--model", str(path), "--cross-check", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["count"]["unresolved_nodes"] == []
    assert out["flops_per_tile"] == out["cross_check"]["flop_counter"]
    if arch.startswith("unet"):  # all convolution: the hand count is the whole model
        assert out["cross_check"]["hand_count"] == out["flops_per_tile"]


def test_floor_counts_the_tiles_the_segmenter_uses(tmp_path, capsys):
    """A graph that takes any tile size: the floor's tiles, overlap factor and FLOPs per tile are the
    ones `phaseedge.tiling.plan` gives the Segmenter (big tiles, 2 x halo overlap), not the training tile's."""
    from phaseedge import sidecar
    from phaseedge.tiling import plan

    path = tmp_path / "dyn.onnx"
    axes = {"image": {0: "B", 2: "H", 3: "W"}, "ratio": {0: "B"}, "probs": {0: "B", 2: "H", 3: "W"}}
    torch.onnx.export(_Net().eval(), (torch.rand(1, 1, 32, 32), torch.rand(1, 4)), str(path), dynamo=False,
                      input_names=["image", "ratio"], output_names=["probs"], dynamic_axes=axes)
    inputs, outputs = sidecar.io_specs(32, 4, dynamic=True)
    sidecar.write(sidecar.Sidecar(kind="onnx", architecture="test-net", plm=True, class_names=tuple("abcd"),
                                  n_classes=4, tile=32, normalization={"method": "percentile", "low": 0.5,
                                                                        "high": 99.5},
                                  inputs=inputs, outputs=outputs, batch=(1, 2, 4), precision="fp32",
                                  tile_multiple=2, max_tile=512, halo=3), path)
    grid, _ = plan(300, 700, range(32, 513, 2), 3)
    assert cli.main(["floor", "--model", str(path), "--frame", "700x300", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["tile"], out["tiles_per_frame"], out["blend"]) == (grid.tile, grid.n_tiles, "center")
    assert out["overlap_factor"] == pytest.approx(grid.n_tiles * grid.tile**2 / (300 * 700)) and out["overlap_factor"] < 1.2
    assert out["flops_per_tile"] == _hand(grid.tile)
    assert cli.main(["floor", "--model", str(path), "--frame", "700x300", "--overlap", "0.25", "--json"]) == 0
    old = json.loads(capsys.readouterr().out)  # a fractional overlap: the training tile, as before
    assert old["tile"] == 32 and old["overlap_factor"] > 1.5 and old["flops_per_tile"] == _hand(32)
    with pytest.raises(ValueError, match="tile side"):
        floor.onnx_flops(path)
