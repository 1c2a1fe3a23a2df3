"""Faults: each gives one clear error naming the file, and the Segmenter stays usable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from runtime_graphs import write_graph

from phaseedge import Segmenter, sidecar
from phaseedge.backends.base import Backend
from phaseedge.cli import main
from phaseedge.io import read_image


class FailsOnce(Backend):
    name = "fails-once"

    def __init__(self) -> None:
        self.tile, self.n_classes, self.max_batch = 16, 2, 2
        self.class_names = ("a", "b")
        self.calls = 0

    def infer(self, images, ratio):
        self.calls += 1
        if self.calls == 2:  # mid-frame: the second batch of the first frame
            raise RuntimeError("device lost")
        return np.full((images.shape[0], 2, 16, 16), 0.5, np.float32)


def test_a_backend_error_mid_frame_leaves_the_segmenter_usable():
    seg = Segmenter(FailsOnce(), batch_size=1)
    frame = np.zeros((40, 40), np.uint8)
    with pytest.raises(RuntimeError, match="device lost"):
        seg.segment(frame)
    assert seg.segment(frame).labels.shape == (40, 40)
    assert seg.submit(frame).result(30).labels.shape == (40, 40)


@pytest.mark.parametrize("content", [b"", b"II*\x00" + b"\x00" * 4, b"not an image at all"])
def test_broken_tiffs_name_the_file(tmp_path, content):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(content)
    with pytest.raises((ValueError, OSError)) as err:
        read_image(bad)
    assert "broken.tif" in str(err.value)


def test_truncated_tiff_names_the_file(tmp_path):
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises((ValueError, OSError)) as err:
        np.asarray(read_image(cut).pixels).sum()
    assert "cut.tif" in str(err.value)


def test_tiff_whose_pages_disagree_is_refused_or_read_as_its_first_page(tmp_path):
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(np.zeros((32, 32), np.uint16))
        tw.write(np.zeros((16, 48), np.uint8))
    try:
        frame = read_image(path)
    except ValueError as exc:
        assert "pages.tif" in str(exc)
    else:
        assert frame.pixels.shape == (32, 32)


@pytest.fixture
def graph(tmp_path):
    return write_graph(tmp_path / "m.onnx", "affine", tile=32, n=2, max_batch=4)


def test_model_changed_after_its_sidecar_was_written(graph):
    graph.write_bytes(graph.read_bytes() + b"\x00")
    with pytest.raises(sidecar.SidecarError, match="m.onnx.*changed after its sidecar"):
        Segmenter(graph).segment(np.zeros((40, 40), np.uint8))


@pytest.mark.parametrize("damage, match", [("hash", "sha256 mismatch"), ("field", "tile")])
def test_damaged_sidecar(graph, damage, match):
    path = sidecar.sidecar_path(graph)
    data = json.loads(path.read_text())
    if damage == "hash":
        data["sha256"] = "0" * 64
    else:
        del data["tile"]
    path.write_text(json.dumps(data))
    with pytest.raises(sidecar.SidecarError, match=match) as err:
        Segmenter(graph).segment(np.zeros((40, 40), np.uint8))
    assert "m.onnx" in str(err.value)


def test_model_deleted_between_construction_and_first_use(graph):
    seg = Segmenter(graph)  # cheap: nothing is read yet
    graph.unlink()
    with pytest.raises((sidecar.SidecarError, FileNotFoundError, OSError)) as err:
        seg.segment(np.zeros((40, 40), np.uint8))
    assert "m.onnx" in str(err.value)


def test_cli_leaves_nothing_half_written(graph, tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((40, 40), np.uint16))
    (tmp_path / "b.tif").write_bytes(b"junk")
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "--model", str(graph),
                 "--out", str(out)]) == 1
    names = {p.name for p in out.iterdir()}
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")]
    assert {"a_labels.png", "a_labels.tif", "a.json", "fractions.csv"} <= names
    assert not [n for n in names if n.startswith("b")]
