"""The bundled demo model: `default.onnx` and its sidecar, trained on `phaseedge.synth`
micrographs only (scripts/make_default_model.sh). It makes `phaseedge segment`, the demo and
the napari plugin work out of the box; for real steel, train on your own frames."""

from __future__ import annotations

from pathlib import Path

DIR = Path(__file__).resolve().parent
SYNTHETIC_WARNING = ("this model was trained on synthetic micrographs only (the bundled demo model is): its phases "
                     "and fractions mean little on a real steel; train on your own labelled frames: see "
                     "docs/training.md")


def default_model() -> Path:
    """Path of the bundled demo model (``phaseedge/bundled/default.onnx`` with its sidecar)."""
    path = DIR / "default.onnx"
    if not path.is_file():
        raise FileNotFoundError(
            f"the bundled model {path} is not there: this phaseedge build ships without it "
            "(it is made by `phaseedge-train` and `phaseedge-export`); use a model file instead"
        )
    return path
