"""The phaseedge dock widget: pick a model and an image, set the phase ratio, segment, export.

One slider per phase of the loaded model (named after its classes); the ratio can also be
"unknown" (the model runs ratio-free) or "auto" (the model's own ratio-free estimate, used
as the ratio). Segmenting runs in a napari ``thread_worker``, one job at a time: a newer
request cancels the running one between two tile batches (`phaseedge.napari.watch`) and
starts when it has stopped, so moving a slider (debounced by a single-shot QTimer) never
queues up stale work. The result is a Labels layer "<image> phases" (class index = pixel
value, colours and phase names from the model) and a fractions table with the sub-field
95 % intervals of `Result.fraction_uncertainty`. Corrections painted on that layer are
exported as a training pair for `phaseedge-train fit` (`phaseedge.napari.export`).
Errors (a bad model path, an unusable layer, a refused export) are shown in the widget,
never raised into napari.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import napari
import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSlider,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from phaseedge import io
from phaseedge.backends import BACKENDS, get_backend
from phaseedge.napari.export import SPLITS, write_training_pair
from phaseedge.napari.layers import META, phase_colormap, phase_features
from phaseedge.napari.watch import Job, Superseded, WatchedBackend
from phaseedge.normalize import check_frame
from phaseedge.result import Result, palette
from phaseedge.segmenter import AUTO, RATIO_MODES, Segmenter, default_model

#: the bundled demo model, by the name the Segmenter knows it
BUNDLED = "default"
#: quiet time after the last slider move before re-segmenting
DEBOUNCE_MS = 300
#: how often the progress bar reads the running job's tile count
PROGRESS_MS = 100
#: frames whose tiles hold more pixels than this (16 training tiles of the bundled model) show the
#: progress bar (small ones finish at once)
PROGRESS_PIXELS = 16 * 128 * 128
SLIDER_MAX = 100
LABELS_OPACITY = 0.5
_ERROR_STYLE = "color: #ff6b6b;"


@dataclass(frozen=True)
class Request:
    """What one segmentation needs, read from the controls when it was asked for."""

    layer: Image
    image: np.ndarray | io.Frame  # a Frame when the layer knows its pixel size
    shape: tuple[int, int]
    ratio: list[int] | str | None
    mode: str


def _run(segmenter: Segmenter, image: np.ndarray | io.Frame, ratio: list[int] | str | None,
         job: Job) -> tuple[Result, dict[str, dict[str, float]]]:
    """Worker-thread body: the segmentation and its 95 % intervals (off the UI thread)."""
    try:
        result = segmenter.segment(image, ratio=ratio)
        return result, result.fraction_uncertainty()
    finally:
        job.finished.set()


def stem_of(name: str) -> str:
    """A layer name as a training-pair file stem ("synthetic micrograph" -> "synthetic_micrograph")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "frame"


class PhaseEdgeWidget(QWidget):
    """Dock widget of the phaseedge napari plugin (see the module docstring)."""

    #: emitted with each `Result` shown (scripts and tests wait on it)
    segmented = Signal(object)

    def __init__(self, napari_viewer: napari.viewer.Viewer, model: str = BUNDLED) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.backend: WatchedBackend | None = None
        self.result: Result | None = None  # the last result shown
        self.uncertainty: dict[str, dict[str, float]] = {}
        self.last_error: str | None = None
        self.sliders: dict[str, QSlider] = {}
        self._shares: dict[str, QLabel] = {}
        self._job: Job | None = None
        self._pending: Request | None = None
        self._live: Image | None = None  # image whose phases follow the ratio controls

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self.segment)
        self._poll = QTimer(self)
        self._poll.setInterval(PROGRESS_MS)
        self._poll.timeout.connect(self._show_progress)
        self._build_ui(model)

        self.viewer.layers.events.inserted.connect(self._layer_inserted)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self._refresh_images()
        self.load_model()

    # ------------------------------------------------------------------ UI
    def _build_ui(self, model: str) -> None:
        root = QVBoxLayout(self)

        box = QGroupBox("Model")
        form = QFormLayout(box)
        self.model_edit = QLineEdit(model)
        self.model_edit.setToolTip("'default' (the bundled demo model), a .onnx / .engine file "
                                   "or a checkpoint folder")
        self.model_edit.returnPressed.connect(lambda: self.load_model())
        row = QHBoxLayout()
        row.addWidget(self.model_edit)
        for text, pick in (("File…", self._pick_file), ("Folder…", self._pick_folder)):
            button = QPushButton(text)
            button.clicked.connect(lambda _=False, pick=pick: pick())
            row.addWidget(button)
        form.addRow("model", row)
        self.backend_box = QComboBox()
        self.backend_box.addItems(["auto", *BACKENDS])
        load = QPushButton("Load")
        load.clicked.connect(lambda: self.load_model())  # clicked's bool is no model path
        row = QHBoxLayout()
        row.addWidget(self.backend_box)
        row.addWidget(load)
        form.addRow("backend", row)
        self.model_info = QLabel()
        self.model_info.setWordWrap(True)
        form.addRow(self.model_info)
        root.addWidget(box)

        box = QGroupBox("Image")
        form = QFormLayout(box)
        self.image_box = QComboBox()
        form.addRow("layer", self.image_box)
        root.addWidget(box)

        box = QGroupBox("Phase ratio")
        col = QVBoxLayout(box)
        form = QFormLayout()
        self.mode_box = QComboBox()
        self.mode_box.addItems(RATIO_MODES)
        self.mode_box.setToolTip("global: every tile gets the ratio (PLM); local: per-tile ratios "
                                 "matching the frame total; calibrate: class priors shifted to the ratio; "
                                 "none: ignored")
        self.mode_box.currentTextChanged.connect(self._controls_changed)
        form.addRow("ratio mode", self.mode_box)
        col.addLayout(form)
        row = QHBoxLayout()
        self.unknown_box = QCheckBox("ratio unknown")
        self.auto_box = QCheckBox("auto (model's own estimate)")
        for check, other in ((self.unknown_box, self.auto_box), (self.auto_box, self.unknown_box)):
            check.toggled.connect(lambda on, other=other: on and other.setChecked(False))
            check.toggled.connect(self._controls_changed)
            row.addWidget(check)
        col.addLayout(row)
        self.slider_grid = QGridLayout()
        col.addLayout(self.slider_grid)
        root.addWidget(box)

        self.segment_button = QPushButton("Segment")
        self.segment_button.clicked.connect(lambda: self.segment())
        root.addWidget(self.segment_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setVisible(False)
        root.addWidget(self.progress)
        self.status = QLabel()
        self.status.setWordWrap(True)
        root.addWidget(self.status)

        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["phase", "fraction", "95 % interval", "ratio"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        root.addWidget(self.table)

        box = QGroupBox("Training data (paint corrections on the phases layer first)")
        form = QFormLayout(box)
        self.export_name = QLineEdit()
        self.export_name.setPlaceholderText("file name (default: the image layer's name)")
        form.addRow("name", self.export_name)
        self.split_box = QComboBox()
        self.split_box.addItems(SPLITS)
        form.addRow("split", self.split_box)
        export = QPushButton("Export training pair…")
        export.clicked.connect(lambda: self.export_training_pair())
        form.addRow(export)
        root.addWidget(box)
        root.addStretch(1)

    def _pick_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model file", "",
                                              "Models (*.onnx *.engine);;All files (*)")
        if path:
            self.load_model(path)

    def _pick_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Checkpoint folder")
        if path:
            self.load_model(path)

    def _build_sliders(self, names: tuple[str, ...]) -> None:
        while self.slider_grid.count():
            item = self.slider_grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.sliders, self._shares = {}, {}
        for i, name in enumerate(names):
            slider = QSlider(Qt.Orientation.Horizontal)
            slider.setObjectName(f"ratio_{name}")
            slider.setRange(0, SLIDER_MAX)
            slider.setValue(round(SLIDER_MAX / len(names)))
            slider.valueChanged.connect(self._controls_changed)
            share = QLabel()
            share.setMinimumWidth(40)
            self.slider_grid.addWidget(QLabel(name), i, 0)
            self.slider_grid.addWidget(slider, i, 1)
            self.slider_grid.addWidget(share, i, 2)
            self.sliders[name], self._shares[name] = slider, share
        self._show_shares()

    def _show_shares(self) -> None:
        values = {n: s.value() for n, s in self.sliders.items()}
        total = sum(values.values())
        fixed = self.unknown_box.isChecked() or self.auto_box.isChecked()
        for name, share in self._shares.items():
            share.setText("–" if fixed or total == 0 else f"{100 * values[name] / total:.0f} %")
            self.sliders[name].setEnabled(not fixed)

    # ------------------------------------------------------------------ state
    @property
    def image_layer(self) -> Image | None:
        """The image layer chosen in the widget."""
        return self.image_box.currentData()

    @property
    def ratio(self) -> list[int] | str | None:
        """What the controls ask for: slider values in class order (any scale), "auto", or None."""
        if self.unknown_box.isChecked():
            return None
        if self.auto_box.isChecked():
            return AUTO
        values = [s.value() for s in self.sliders.values()]
        return values if any(values) else None

    @property
    def busy(self) -> bool:
        """A segmentation is running, waiting to start, or due after a slider move."""
        return self._job is not None or self._pending is not None or self._debounce.isActive()

    def labels_layer(self, image: Image | None = None) -> Labels | None:
        """The phases layer of ``image`` (default: the chosen one), or None before segmenting."""
        image = image or self.image_layer
        if image is None:
            return None
        name = f"{image.name} phases"
        return next((lay for lay in self.viewer.layers if lay.name == name and isinstance(lay, Labels)), None)

    def _layer_inserted(self, event: Any) -> None:
        layer = event.value
        if isinstance(layer, Image):
            layer.events.name.connect(self._refresh_images)
        self._refresh_images()
        if isinstance(layer, Image):  # a frame just opened is the one to segment
            self.image_box.setCurrentIndex(self.image_box.findText(layer.name))

    def _refresh_images(self, *_: Any) -> None:
        current = self.image_layer
        self.image_box.blockSignals(True)
        self.image_box.clear()
        for layer in self.viewer.layers:
            if isinstance(layer, Image):
                self.image_box.addItem(layer.name, layer)
        index = next((i for i in range(self.image_box.count()) if self.image_box.itemData(i) is current), 0)
        self.image_box.setCurrentIndex(index)
        self.image_box.blockSignals(False)
        if self._live is not None and self._live not in self.viewer.layers:
            self._live = None

    def _show_error(self, message: str) -> None:
        self.last_error = message
        self.status.setStyleSheet(_ERROR_STYLE)
        self.status.setText(message)

    def _show_status(self, message: str) -> None:
        self.last_error = None
        self.status.setStyleSheet("")
        self.status.setText(message)

    # ------------------------------------------------------------------ model
    def load_model(self, model: str | Path | None = None) -> bool:
        """Load ``model`` (default: the path in the widget) with the chosen backend.

        On failure the error is shown in the widget, False is returned and the previous
        model stays loaded. On success the sliders are rebuilt for the model's classes.
        """
        text = str(model if model is not None else self.model_edit.text()).strip() or BUNDLED
        self.model_edit.setText(text)
        try:
            path = default_model() if text == BUNDLED else Path(text).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"no such file or folder: {path}")
            inner = get_backend(self.backend_box.currentText(), path)
        except Exception as exc:  # noqa: BLE001 - any failure to load is the user's to see, not napari's
            kept = f" (the previous model stays: {', '.join(self.sliders)})" if self.backend else ""
            self._show_error(f"cannot load model {text!r}: {exc}{kept}")
            return False
        self._stop()
        if self.backend is not None:
            self.backend.close()
        self.backend = WatchedBackend(inner)
        names = tuple(inner.class_names)
        self._build_sliders(names)
        note = "; trained on synthetic micrographs only (a demo)" if inner.trained_on == "synthetic" else ""
        self.model_info.setText(f"{len(names)} phases: {', '.join(names)} · {inner.name} on {inner.device}, "
                                f"tile {inner.tile}{note}")
        self._show_status(f"loaded {text}")
        if self._live is not None:
            self._debounce.start()
        return True

    def close_model(self) -> None:
        """Stop any segmentation and release the backend (napari does not when a dock closes)."""
        self._stop()
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    # ------------------------------------------------------------------ segmenting
    def _controls_changed(self, *_: Any) -> None:
        self._show_shares()
        if self._live is not None and self.backend is not None:
            self._debounce.start()  # restarts: only the last of a burst of moves segments

    def segment(self) -> None:
        """Segment the chosen image with the current controls (the Segment button).

        While a segmentation runs, the request waits and the running one is cancelled; a
        later request replaces a waiting one, so only the newest controls are segmented.
        """
        self._debounce.stop()
        request = self._request()
        if request is None:
            return
        self._live = request.layer
        if self._job is not None:
            self._job.cancel()
            self._pending = request
            return
        self._start(request)

    def _request(self) -> Request | None:
        if self.backend is None:
            self._show_error("no model loaded: give a model path and press Load")
            return None
        layer = self.image_layer
        if layer is None:
            self._show_error("no image layer: open an SEM frame or File > Open Sample > phaseedge")
            return None
        try:
            pixels = check_frame(layer.data[0] if layer.multiscale else layer.data)
        except (TypeError, ValueError) as exc:
            self._show_error(f"image layer {layer.name!r} cannot be segmented: {exc}")
            return None
        meta = layer.metadata.get(META, {})
        image: np.ndarray | io.Frame = pixels
        if meta.get("pixel_size_m"):  # the Segmenter resamples to the model's pixel size
            image = io.Frame(pixels=pixels, path=Path(meta.get("path", layer.name)),
                             pixel_size_m=meta["pixel_size_m"], band_rows=int(meta.get("band_rows", 0)),
                             bits=int(meta.get("bits", 8 * pixels.itemsize)))
        return Request(layer, image, pixels.shape, self.ratio, self.mode_box.currentText())

    def _start(self, request: Request) -> None:
        assert self.backend is not None
        segmenter = Segmenter(self.backend, ratio_mode=request.mode)  # the model's tiling
        grid = segmenter.tiling_for(*request.shape)[0]
        tiles = grid.n_tiles
        passes = 1 + (request.ratio == AUTO) + (request.mode == "local" and request.ratio is not None)
        job = Job(tiles * passes)  # an estimate: the calibrate survey and resampling are not counted
        self._job = job
        self.backend.job = job
        worker = create_worker(_run, segmenter, request.image, request.ratio, job,
                               _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda out: self._done(job, request, *out))
        worker.errored.connect(lambda exc: self._failed(job, exc))
        worker.finished.connect(lambda: self._finished(job))
        self.progress.setValue(0)
        self.progress.setVisible(tiles * grid.tile**2 > PROGRESS_PIXELS)
        self._poll.start()
        h, w = request.shape
        self._show_status(f"segmenting {request.layer.name} ({h}×{w}, {tiles} tiles)…")
        worker.start()

    def _show_progress(self) -> None:
        if self._job is not None:
            self.progress.setValue(round(1000 * self._job.progress))

    def _done(self, job: Job, request: Request, result: Result,
              uncertainty: dict[str, dict[str, float]]) -> None:
        if job is not self._job or job.cancelled or request.layer not in self.viewer.layers:
            return  # superseded: a newer request is on its way
        self.result, self.uncertainty = result, uncertainty
        self._show_labels(request.layer, result)
        self._show_table(result, uncertainty)
        source = {"given": "from the sliders", "auto": "auto (model's estimate)", None: "unknown"}
        source = source[result.ratio_source]
        self._show_status(f"{request.layer.name}: {result.timings['total']:.2f} s on {result.backend}, "
                          f"ratio {source}, mode {result.ratio_mode}")
        self.segmented.emit(result)

    def _failed(self, job: Job, exc: BaseException) -> None:
        if job is self._job and not isinstance(exc, Superseded):
            self._show_error(f"segmentation failed: {exc}")

    def _finished(self, job: Job) -> None:
        if job is not self._job:
            return  # a job _stop() already waited for
        self._job = None
        if self.backend is not None:
            self.backend.job = None
        self._poll.stop()
        self.progress.setVisible(False)
        if self._pending is not None:
            request, self._pending = self._pending, None
            self._start(request)

    def _stop(self) -> None:
        """Cancel the running job and wait for its thread (it stops at the next tile batch)."""
        self._debounce.stop()
        self._pending = None
        job, self._job = self._job, None
        if job is not None:
            job.cancel()
            job.finished.wait()
        self._poll.stop()
        self.progress.setVisible(False)

    def _show_labels(self, image: Image, result: Result) -> None:
        n = len(result.class_names)
        meta = {"image": image.name, "class_names": list(result.class_names),
                "fractions": dict(result.fractions),
                "ratio": None if result.ratio is None else [float(r) for r in result.ratio],
                "ratio_mode": result.ratio_mode, "ratio_source": result.ratio_source}
        layer = self.labels_layer(image)
        labels = result.labels.copy()  # painting edits the layer, never the result
        if layer is None:
            self.viewer.add_labels(labels, name=f"{image.name} phases", colormap=phase_colormap(n),
                                   features=phase_features(result.class_names), opacity=LABELS_OPACITY,
                                   scale=image.scale, translate=image.translate, metadata={META: meta})
            return
        if layer.metadata.get(META, {}).get("class_names") != meta["class_names"]:
            layer.colormap = phase_colormap(n)
            layer.features = phase_features(result.class_names)
        layer.metadata[META] = meta
        layer.data = labels

    def _show_table(self, result: Result, uncertainty: dict[str, dict[str, float]]) -> None:
        colours = palette(len(result.class_names))
        self.table.setRowCount(len(result.class_names))
        for i, name in enumerate(result.class_names):
            u = uncertainty[name]
            ratio = "–" if result.ratio is None else f"{100 * float(result.ratio[i]):.1f} %"
            interval = f"{100 * u['low']:.1f} – {100 * u['high']:.1f} %"
            cells = [name, f"{100 * u['fraction']:.1f} %", interval, ratio]
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if j == 0:  # the legend: the phase's colour in the Labels layer
                    item.setBackground(QColor(*(int(c) for c in colours[i])))
                    item.setForeground(QColor("black"))
                self.table.setItem(i, j, item)
        self.table.resizeColumnsToContents()

    # ------------------------------------------------------------------ export
    def export_training_pair(self, folder: str | Path | None = None, name: str | None = None,
                             split: str | None = None) -> dict[str, Path] | None:
        """Write the chosen image and its phases layer (corrections included) as a training pair
        into ``folder`` (asked for when None). Errors are shown; returns the paths written or None."""
        image = self.image_layer
        labels = self.labels_layer(image)
        if image is None or labels is None:
            self._show_error("nothing to export: segment an image first "
                             "(its phases layer, corrections included, is what is exported)")
            return None
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Export training pair into (a labelled folder)")
            if not folder:
                return None
        name = name or self.export_name.text().strip() or stem_of(image.name)
        split = split or self.split_box.currentText()
        class_names = labels.metadata.get(META, {}).get("class_names")
        if class_names is None:
            self._show_error(f"layer {labels.name!r} was not made by phaseedge: its class names are unknown")
            return None
        try:
            pixels = check_frame(image.data[0] if image.multiscale else image.data)
            paths = write_training_pair(folder, name, pixels, np.asarray(labels.data), class_names, split)
        except (OSError, TypeError, ValueError) as exc:
            self._show_error(f"export refused: {exc}")
            return None
        self._show_status(f"exported {name} to {folder} ({split}): images/{name}.tif, labels/{name}.png")
        return paths
