"""Screenshots of the phaseedge napari plugin: a synthetic frame segmented, then the martensite
slider raised, in a real napari window (run it under a display: ``xvfb-run -a``).

    xvfb-run -a .venv/bin/python scripts/napari_screenshot.py --out docs

Writes OUT/napari_before.png and OUT/napari_after.png and prints the fractions of each. The
bundled demo model was trained on synthetic frames where the ratio adds little, so the
script uses ratio mode "calibrate" (class priors shifted to the ratio), where the slider
visibly moves martensite.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from phaseedge.napari.widget import PhaseEdgeWidget

BEFORE = {"ferrite": 60, "martensite": 10, "bainite": 30}
AFTER_MARTENSITE = 50
WINDOW = (1500, 950)


def wait_idle(widget: PhaseEdgeWidget, timeout: float = 600.0) -> None:
    """Run Qt's event loop until the widget has no segmentation running, waiting or due."""
    end = time.monotonic() + timeout
    while widget.busy:
        if time.monotonic() > end:
            raise TimeoutError(f"segmentation still running after {timeout} s")
        QApplication.processEvents()
        time.sleep(0.02)
    for _ in range(20):  # let the canvas draw the new labels
        QApplication.processEvents()
        time.sleep(0.02)


def shot(viewer: napari.Viewer, widget: PhaseEdgeWidget, path: Path) -> None:
    wait_idle(widget)
    if widget.last_error:
        raise RuntimeError(widget.last_error)
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    fractions = ", ".join(f"{k} {100 * v:.1f}%" for k, v in widget.result.fractions.items())
    print(f"{path}: {fractions}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("docs"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")  # "trained on synthetic micrographs only": the widget says so too

    viewer = napari.Viewer(title="phaseedge", show=True)
    viewer.window.resize(*WINDOW)
    viewer.open_sample("phaseedge", "synthetic")  # the micrograph and its (hidden) truth
    _, widget = viewer.window.add_plugin_dock_widget("phaseedge", "Phase segmentation")
    widget.image_box.setCurrentText("synthetic micrograph")
    QApplication.processEvents()
    viewer.reset_view()  # fit the frame to the canvas the dock left
    widget.mode_box.setCurrentText("calibrate")
    for name, value in BEFORE.items():
        widget.sliders[name].setValue(value)
    widget.segment()
    shot(viewer, widget, args.out / "napari_before.png")
    widget.sliders["martensite"].setValue(AFTER_MARTENSITE)  # re-segments by itself (debounced)
    shot(viewer, widget, args.out / "napari_after.png")
    widget.close_model()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
