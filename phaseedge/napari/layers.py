"""napari layers of phaseedge: the TIFF reader, the synthetic sample and the phase colours.

The reader goes through `phaseedge.io.read_image`, so napari shows exactly what the
Segmenter segments: the information band removed, 16-bit and BigTIFF read (memory-mapped
where possible), and the SEM pixel size, when the file has one, as the layer's scale in
micrometres. The pixel size also travels in the layer metadata, where the widget finds it
and hands it to the Segmenter (which resamples to the model's pixel size). Contrast limits
are the runtime's own percentile range, so a 16-bit frame does not open black.

Phase label maps use class index = pixel value, as the runtime does, so class 0 must not
be napari's transparent background: `phase_colormap` moves the background to
`phaseedge.outputs.EXCLUDED` (what the eraser paints, and what an export refuses).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from phaseedge import io, synth
from phaseedge.normalize import frame_range
from phaseedge.outputs import EXCLUDED
from phaseedge.result import palette

#: what the reader claims (the manifest's filename_patterns say the same)
SUFFIXES = (".tif", ".tiff")
#: key of the layer metadata this plugin reads and writes
META = "phaseedge"
SAMPLE_SHAPE = (768, 1024)
SAMPLE_SEED = 7

LayerData = tuple[Any, dict[str, Any], str]


def _paths(path: str | Sequence[str]) -> list[str]:
    return [path] if isinstance(path, (str, Path)) else [str(p) for p in path]


def get_reader(path: str | Sequence[str]) -> Callable[[str | Sequence[str]], list[LayerData]] | None:
    """npe2 reader hook: `read_sem` for TIFF paths, None (not ours) for anything else."""
    paths = _paths(path)
    if not paths or any(Path(p).suffix.lower() not in SUFFIXES for p in paths):
        return None
    return read_sem


def read_sem(path: str | Sequence[str]) -> list[LayerData]:
    """One image layer per file; raises what `phaseedge.io.read_image` raises, naming the file."""
    return [frame_layer(io.read_image(p)) for p in _paths(path)]


def frame_layer(frame: io.Frame) -> LayerData:
    """An `io.Frame` as napari layer data: pixels, scale (um) when known, provenance metadata."""
    lo, hi = frame_range(frame.pixels)
    kwargs: dict[str, Any] = {
        "name": frame.path.stem,
        "contrast_limits": (lo, hi if hi > lo else lo + 1),
        "metadata": {META: {"path": str(frame.path), "pixel_size_m": frame.pixel_size_m,
                            "band_rows": frame.band_rows, "bits": frame.bits}},
    }
    if frame.pixel_size_m is not None:
        um = frame.pixel_size_m * 1e6
        kwargs["scale"] = (um, um)
        kwargs["units"] = ("um", "um")
    return frame.pixels, kwargs, "image"


def synthetic_sample() -> list[LayerData]:
    """A synthetic 16-bit steel micrograph (ferrite, martensite, bainite) from `phaseedge.synth`,
    with its true phases as a hidden Labels layer to compare against."""
    image, truth = synth.micrograph(SAMPLE_SHAPE, n_phases=3, seed=SAMPLE_SEED, dtype=np.uint16)
    lo, hi = frame_range(image)
    names = synth.class_names(3)
    return [
        (image, {"name": "synthetic micrograph", "contrast_limits": (lo, hi)}, "image"),
        (truth, {"name": "synthetic truth", "visible": False, "colormap": phase_colormap(len(names)),
                 "features": phase_features(names)}, "labels"),
    ]


def phase_colormap(n: int) -> Any:
    """A napari DirectLabelColormap: class i in the runtime's overlay colour, EXCLUDED transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    colours = {i: (*(c / 255.0), 1.0) for i, c in enumerate(palette(n))}
    return DirectLabelColormap(color_dict={**colours, None: (0.0, 0.0, 0.0, 0.0)}, background_value=EXCLUDED)


def phase_features(class_names: Sequence[str]) -> dict[str, list]:
    """Labels-layer features: napari's status bar names the phase under the cursor."""
    return {"index": list(range(len(class_names))), "phase": list(class_names)}
