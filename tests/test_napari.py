"""The napari plugin in a real napari viewer with the real Segmenter and the bundled model.

napari needs an X display with OpenGL: `make test` runs pytest under ``xvfb-run -a`` (and
installs Xvfb + Mesa when it runs as root). Skipped only when napari is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import tifffile

napari = pytest.importorskip("napari")

from phaseedge.train.data import load_folder, read_split

from phaseedge import io, synth
from phaseedge.napari.export import write_training_pair
from phaseedge.napari.layers import get_reader
from phaseedge.napari.widget import PhaseEdgeWidget
from phaseedge.segmenter import Segmenter

MANIFEST = Path(__file__).resolve().parents[1] / "phaseedge" / "napari" / "napari.yaml"
CLASSES = ("ferrite", "martensite", "bainite")  # the bundled model's
SHAPE = (256, 256)
TIMEOUT_S = 120  # 2 busy cores: a 256x256 frame takes well under a second alone


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return synth.micrograph(SHAPE, n_phases=3, seed=3, dtype=np.uint16)[0]


@pytest.fixture(scope="module")
def viewer():
    """One real (hidden) viewer for the module: a viewer costs seconds on 2 cores."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        pytest.fail("napari needs a display with OpenGL: run pytest under `xvfb-run -a` (make test does)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # napari's own deprecation chatter on start-up
        v = napari.Viewer(show=False)
    yield v
    v.close()


@pytest.fixture
def widget(viewer):
    """The plugin's dock widget, added through napari's plugin system (the installed manifest)."""
    _, w = viewer.window.add_plugin_dock_widget("phaseedge", "Phase segmentation")
    assert isinstance(w, PhaseEdgeWidget)
    yield w
    wait_idle(w)
    w.close_model()
    viewer.window.remove_dock_widget("all")
    viewer.layers.clear()


def wait_idle(w: PhaseEdgeWidget, timeout: float = TIMEOUT_S) -> None:
    """Run the Qt event loop until no segmentation is running, waiting or due."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while w.busy:
        if time.monotonic() > end:
            pytest.fail(f"widget still busy after {timeout} s")
        QApplication.processEvents()
        time.sleep(0.01)
    QApplication.processEvents()


def set_ratio(w: PhaseEdgeWidget, values: dict[str, int]) -> None:
    for name, value in values.items():
        w.sliders[name].setValue(value)


def reference(frame: np.ndarray, ratio, mode: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "trained on synthetic micrographs only"
        with Segmenter("default", ratio_mode=mode) as seg:
            return seg.segment(frame, ratio=ratio)


def test_manifest_validates_and_is_installed():
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", str(MANIFEST)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0 and "valid" in out.stdout, out.stdout + out.stderr
    found = [ep for ep in entry_points(group="napari.manifest") if ep.name == "phaseedge"]
    assert [ep.value for ep in found] == ["phaseedge.napari:napari.yaml"]
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", "phaseedge", "--imports"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr  # every python_name imports


def test_runtime_imports_without_qt_or_napari():
    gui = ("napari", "qtpy", "PyQt6", "PySide6", "PyQt5", "phaseedge.napari")
    code = ("import sys, phaseedge, phaseedge.segmenter, phaseedge.cli, phaseedge.io\n"
            "phaseedge.Segmenter\n"
            f"print(','.join(sorted(m for m in {gui!r} if m in sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"the runtime imported {out.stdout.strip()}"


def test_widget_has_one_slider_per_model_class(widget):
    sidecar = json.loads((MANIFEST.parents[1] / "bundled" / "default.onnx.json").read_text())
    assert tuple(widget.sliders) == tuple(sidecar["class_names"]) == CLASSES
    assert [s.objectName() for s in widget.sliders.values()] == [f"ratio_{c}" for c in CLASSES]
    assert widget.last_error is None
    widget.unknown_box.setChecked(True)
    assert widget.ratio is None and not any(s.isEnabled() for s in widget.sliders.values())
    widget.auto_box.setChecked(True)  # exclusive with "unknown"
    assert widget.ratio == "auto" and not widget.unknown_box.isChecked()


def test_segment_adds_labels_equal_to_segmenter(widget, viewer, frame):
    viewer.add_image(frame, name="frame")
    assert widget.image_layer is viewer.layers["frame"]
    set_ratio(widget, {"ferrite": 20, "martensite": 50, "bainite": 30})
    widget.mode_box.setCurrentText("calibrate")
    widget.segment()
    wait_idle(widget)
    assert widget.last_error is None, widget.last_error
    layer = viewer.layers["frame phases"]
    assert isinstance(layer, napari.layers.Labels)
    ref = reference(frame, [20, 50, 30], "calibrate")
    np.testing.assert_array_equal(layer.data, ref.labels)
    assert widget.result.fractions == pytest.approx(ref.fractions)
    # colour per class (class 0 too: not napari's transparent background) and names on the layer
    colours = layer.colormap.map(np.arange(3, dtype=np.uint8))
    assert (colours[:, 3] == 1).all() and len({tuple(c) for c in colours}) == 3
    assert list(layer.features["phase"]) == list(CLASSES)
    # the fractions table: one row per phase with the 95 % interval
    unc = ref.fraction_uncertainty()
    rows = [[widget.table.item(i, j).text() for j in range(4)] for i in range(widget.table.rowCount())]
    assert [r[0] for r in rows] == list(CLASSES)
    for row, name in zip(rows, CLASSES):
        assert row[1] == f"{100 * unc[name]['fraction']:.1f} %"
        assert row[2] == f"{100 * unc[name]['low']:.1f} – {100 * unc[name]['high']:.1f} %"
    assert rows[1][3] == "50.0 %"


def test_moving_a_slider_resegments_and_moves_the_phase(widget, viewer, frame):
    viewer.add_image(frame, name="frame")
    widget.mode_box.setCurrentText("calibrate")
    set_ratio(widget, {"ferrite": 60, "martensite": 10, "bainite": 30})
    widget.segment()
    wait_idle(widget)
    before = widget.result
    shown = []
    widget.segmented.connect(shown.append)
    for value in (30, 50, 70, 80):  # a drag: debounced into one segmentation of the last value
        widget.sliders["martensite"].setValue(value)
    assert widget.busy
    wait_idle(widget)
    assert len(shown) == 1
    after = shown[0]
    assert after.fractions["martensite"] > before.fractions["martensite"] + 0.2
    np.testing.assert_allclose(after.ratio, np.array([60, 80, 30]) / 170, rtol=1e-6)
    np.testing.assert_array_equal(viewer.layers["frame phases"].data, after.labels)
    assert not np.array_equal(before.labels, after.labels)


def test_newer_request_supersedes_a_running_one(widget, viewer, frame):
    viewer.add_image(frame, name="frame")
    widget.mode_box.setCurrentText("calibrate")
    shown = []
    widget.segmented.connect(shown.append)
    set_ratio(widget, {"ferrite": 80, "martensite": 10, "bainite": 10})
    widget.segment()  # starts in its worker thread
    set_ratio(widget, {"ferrite": 10, "martensite": 80, "bainite": 10})
    widget.segment()  # cancels the first; runs when it has stopped
    wait_idle(widget)
    assert len(shown) == 1  # the first result never reached the viewer
    ref = reference(frame, [10, 80, 10], "calibrate")
    np.testing.assert_array_equal(viewer.layers["frame phases"].data, ref.labels)


def test_large_frame_shows_progress(widget, viewer):
    big = synth.micrograph((640, 1500), n_phases=3, seed=4, dtype=np.uint8)[0]  # 3 tiles of 640, in 2 batches
    viewer.add_image(big, name="big")
    seen = []
    widget.progress.valueChanged.connect(lambda v: seen.append((v, widget.progress.isHidden())))
    widget.unknown_box.setChecked(True)
    widget.segment()
    assert not widget.progress.isHidden()
    wait_idle(widget)
    assert widget.last_error is None, widget.last_error
    assert any(v > 0 and not hidden for v, hidden in seen), seen
    assert widget.progress.isHidden()  # gone once done


def test_watched_backend_counts_tiles_and_stops_a_cancelled_job(frame):
    from phaseedge.backends import get_backend
    from phaseedge.napari.watch import Job, Superseded, WatchedBackend
    from phaseedge.segmenter import default_model

    backend = WatchedBackend(get_backend("onnxruntime", default_model()))
    try:
        seg = Segmenter(backend)
        tiles = seg.tiling_for(*SHAPE)[0].n_tiles
        backend.job = Job(tiles)
        result = seg.segment(frame)
        assert backend.job.tiles_done == tiles and backend.job.progress == 1.0
        np.testing.assert_array_equal(result.labels, reference(frame, None, "global").labels)
        backend.job = Job(tiles)
        backend.job.cancel()
        with pytest.raises(Superseded):
            seg.segment(frame)
        assert backend.job.tiles_done == 0
    finally:
        backend.close()


def test_bad_model_shows_an_error_and_keeps_the_model(widget, viewer, frame, tmp_path):
    missing = tmp_path / "nope.onnx"
    assert widget.load_model(missing) is False
    assert "nope.onnx" in widget.last_error and widget.status.text() == widget.last_error
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    assert widget.load_model(junk) is False
    assert "junk.onnx" in widget.last_error and "sidecar" in widget.last_error
    assert tuple(widget.sliders) == CLASSES  # the bundled model is still loaded and segments
    viewer.add_image(frame, name="frame")
    widget.segment()
    wait_idle(widget)
    assert widget.last_error is None and "frame phases" in viewer.layers


def test_unusable_layer_shows_an_error(widget, viewer):
    widget.segment()
    assert "no image layer" in widget.last_error
    viewer.add_image(np.zeros((4, 40, 40), np.uint16), name="stack")
    widget.segment()
    assert "'stack'" in widget.last_error and "frame phases" not in viewer.layers


def test_export_round_trips_through_load_folder(widget, viewer, frame, tmp_path):
    viewer.add_image(frame, name="my frame")
    widget.segment()
    wait_idle(widget)
    layer = viewer.layers["my frame phases"]
    layer.selected_label = 2
    layer.paint((100, 100), 2, refresh=True)  # a correction, with napari's brush
    layer.data[:10, :10] = 1
    corrected = np.array(layer.data)
    paths = widget.export_training_pair(tmp_path / "data", split="val")
    assert widget.last_error is None, widget.last_error
    assert paths["image"] == tmp_path / "data" / "images" / "my_frame.tif"
    items = load_folder(tmp_path / "data", 3, read_split(tmp_path / "data" / "val.txt"))
    assert [it.name for it in items] == ["my_frame"]
    np.testing.assert_array_equal(items[0].image, frame)
    np.testing.assert_array_equal(items[0].mask, corrected)
    assert json.loads((tmp_path / "data" / "classes.json").read_text()) == list(CLASSES)
    # an erased pixel has no class: refused in the widget, nothing raised
    layer.data[5, 5] = 255
    assert widget.export_training_pair(tmp_path / "data", name="erased") is None
    assert "1 pixels have no class" in widget.last_error
    assert not (tmp_path / "data" / "images" / "erased.tif").exists()


def test_export_refuses_a_foreign_class_list_and_a_split_clash(tmp_path, frame):
    labels = np.zeros(SHAPE, np.uint8)
    write_training_pair(tmp_path, "a", frame, labels, CLASSES, "train")
    with pytest.raises(ValueError, match="train.txt"):
        write_training_pair(tmp_path, "a", frame, labels, CLASSES, "val")
    with pytest.raises(ValueError, match="classes"):
        write_training_pair(tmp_path, "b", frame, labels, ("ferrite", "pearlite"), "train")
    with pytest.raises(ValueError, match="plain file stem"):
        write_training_pair(tmp_path, "../x", frame, labels, CLASSES, "train")
    write_training_pair(tmp_path, "a", frame, labels + 1, CLASSES, "train")  # re-export replaces, listed once
    assert read_split(tmp_path / "train.txt") == ["a"]
    assert load_folder(tmp_path, 3)[0].mask.max() == 1


def test_reader_sem_tiff_with_band_and_pixel_size(widget, viewer, tmp_path):
    image, _ = synth.micrograph((160, 128), n_phases=3, seed=5, dtype=np.uint16, band=32)
    fei = ("[Scan]\r\nPixelWidth=2.5e-08\r\nPixelHeight=2.5e-08\r\n"
           "[Image]\r\nResolutionX=128\r\nResolutionY=128\r\n")  # FEI/Thermo: the data bar lies below row 128
    path = tmp_path / "sem.tif"
    tifffile.imwrite(path, image, bigtiff=True, extratags=[(34682, "s", 0, fei, True)])
    assert get_reader(str(path)) is not None and get_reader(str(tmp_path / "x.png")) is None
    [layer] = viewer.open(path, plugin="phaseedge")
    expected = io.read_image(path)
    assert layer.data.shape == (128, 128) and layer.data.dtype == np.uint16  # band removed, 16-bit kept
    np.testing.assert_array_equal(layer.data, expected.pixels)
    np.testing.assert_allclose(layer.scale, [0.025, 0.025])  # micrometres per pixel
    assert layer.metadata["phaseedge"]["pixel_size_m"] == pytest.approx(2.5e-8)
    widget.unknown_box.setChecked(True)
    widget.segment()
    wait_idle(widget)
    phases = viewer.layers["sem phases"]
    np.testing.assert_allclose(phases.scale, layer.scale)
    np.testing.assert_array_equal(phases.data, reference(expected, None, "global").labels)


def test_sample_data_is_a_synthetic_micrograph(viewer):
    layers = viewer.open_sample("phaseedge", "synthetic")
    try:
        image, truth = layers
        assert image.data.dtype == np.uint16 and image.data.shape == truth.data.shape
        assert list(truth.features["phase"]) == list(CLASSES)
        assert set(np.unique(truth.data)) <= {0, 1, 2}
    finally:
        viewer.layers.clear()
