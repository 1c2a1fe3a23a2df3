"""fp32 ONNX graph -> INT8 Q/DQ graph (ONNX Runtime static quantisation), written only if it keeps the labels.

    phaseedge-export int8 model.onnx --calib DIR -o model.int8.onnx [--calib-frames N] [--activations int8|uint8]

The frames in DIR (TIFF/PNG/JPEG, read as `phaseedge segment` reads them) are split in file
order: the first N (default: half) calibrate, the rest are held out. Calibration runs ONNX
Runtime's `quantize_static` (QDQ format, MinMax ranges) on tiles cut from the calibration frames
exactly as the runtime cuts and normalises them. The gate then segments every held-out frame
with the fp32 and the INT8 graph through `phaseedge.Segmenter` (same tiling, the default) and
refuses to write the INT8 graph when their labels agree on fewer than MIN_AGREEMENT of the pixels,
or when any phase fraction of any frame moves by more than MAX_FRACTION_SHIFT_PP percentage points.
The sidecar records the measured agreement (``quantization``).

Quantised: Conv, ConvTranspose, MaxPool, Concat (the U-Net's arithmetic and the tensors between
it), weights int8 per output channel, symmetric; biases stay float. ``--activations int8``
(default): symmetric int8 activations, zero point 0, the only Q/DQ form TensorRT accepts, so one
graph serves ONNX Runtime and TensorRT / TensorRT-RTX. ``uint8``: asymmetric uint8 activations,
ONNX Runtime's fastest CPU kernels (u8 x s8), refused by TensorRT.
"""

from __future__ import annotations

import dataclasses
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from phaseedge import hostops, names
from phaseedge import sidecar as sidecar_mod

MIN_AGREEMENT = 0.995
MAX_FRACTION_SHIFT_PP = 0.3
ACTIVATIONS = ("int8", "uint8")
QUANTIZED_OPS = ("Conv", "ConvTranspose", "MaxPool", "Concat")
#: calibration tiles per frame (evenly spread), of side 2 x the training tile for graphs that take any size
TILES_PER_FRAME = 8
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


class GateFailed(RuntimeError):
    """The INT8 graph changes the labels or the phase fractions too much: not written."""


def frames_in(folder: str | Path) -> list[Path]:
    """The image files in ``folder``, in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"calibration folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def split(paths: Sequence[Path], calib_frames: int | None) -> tuple[list[Path], list[Path]]:
    """(calibration frames, held-out frames): the first ``calib_frames`` (default half) and the rest."""
    if len(paths) < 2:
        raise ValueError(f"need at least 2 frames (some to calibrate on, some held out to check), got {len(paths)}")
    k = len(paths) // 2 if calib_frames is None else calib_frames
    if not 1 <= k < len(paths):
        raise ValueError(f"--calib-frames must leave at least one of the {len(paths)} frames held out, got {k}")
    return list(paths[:k]), list(paths[k:])


def calibration_tiles(paths: Sequence[Path], sc: sidecar_mod.Sidecar) -> list[np.ndarray]:
    """float16 [1, 1, T, T] tiles, cut and normalised as the runtime does (per-frame range, mirrored edges)."""
    from phaseedge.prepare import prepare
    from phaseedge.tiling import TileGrid

    t = 2 * sc.tile if sc.tile_multiple is not None else sc.tile
    tiles = []
    for path in paths:
        p = prepare(path, sc.normalization, sc.pixel_size_m)
        origins = TileGrid.for_frame(*p.frame.shape, t, 0.0).origins
        pick = np.unique(np.round(np.linspace(0, len(origins) - 1, min(TILES_PER_FRAME, len(origins)))).astype(int))
        for o in origins[pick]:
            out = np.empty((1, 1, t, t), np.float16)
            hostops.gather_tiles(p.frame, np.ascontiguousarray(o[None]), t, p.lo, p.hi, out)
            tiles.append(out)
    return tiles


def quantize(src: Path, out: Path, tiles: Sequence[np.ndarray], n_classes: int, activations: str) -> None:
    """Write the QDQ graph of ``src`` to ``out``, ranges calibrated on ``tiles``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(tiles)

        def get_next(self) -> dict[str, np.ndarray] | None:
            tile = next(self._it, None)
            return None if tile is None else {names.IMAGE: tile, names.RATIO: np.zeros((1, n_classes), np.float32)}

    symmetric = activations == "int8"
    with tempfile.TemporaryDirectory(prefix="phaseedge-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        # ONNX Runtime's symbolic shape inference stops at the dynamic-size coordinate chain; ONNX's own is enough
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS),
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                                           "QuantizeBias": False})


def gate(fp32: Path, int8: Path, held_out: Sequence[Path], threads: int | None = None) -> dict[str, Any]:
    """Labels of both graphs on every held-out frame, through the Segmenter: pixel agreement (pooled) and
    the largest phase-fraction change (percentage points, any class of any frame)."""
    from phaseedge.segmenter import Segmenter

    options = {"providers": ["CPUExecutionProvider"], **({"threads": threads} if threads else {})}
    agree = total = 0
    worst_pp = 0.0
    frames = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the synthetic-model note, once per Segmenter
        with Segmenter(fp32, backend_options=options) as a, Segmenter(int8, backend_options=options) as b:
            for path in held_out:
                ra, rb = a.segment(path), b.segment(path)
                same = int(np.count_nonzero(ra.labels == rb.labels))
                shift = max(abs(ra.fractions[c] - rb.fractions[c]) for c in ra.class_names) * 100
                frames.append({"frame": path.name, "argmax_agreement": same / ra.labels.size,
                               "max_fraction_shift_pp": shift})
                agree, total, worst_pp = agree + same, total + ra.labels.size, max(worst_pp, shift)
    return {"argmax_agreement": agree / total, "max_fraction_shift_pp": worst_pp, "frames": frames}


def quantize_checked(src: str | Path, out: str | Path, calib: str | Path, calib_frames: int | None = None,
                     activations: str = "int8", min_agreement: float = MIN_AGREEMENT,
                     max_shift_pp: float = MAX_FRACTION_SHIFT_PP, threads: int | None = None,
                     log=print) -> sidecar_mod.Sidecar:
    """Quantise, gate on the held-out frames, then write the sidecar; nothing stays at ``out`` on failure."""
    src, out = Path(src), Path(out)
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {', '.join(ACTIVATIONS)}, got {activations!r}")
    if out.suffix != ".onnx" or out.resolve() == src.resolve():
        raise ValueError(f"output must be a new .onnx file, got {out}")
    sc = sidecar_mod.load(src)
    if sc.precision != "fp32":
        raise ValueError(f"{src.name} is {sc.precision}; quantise the fp32 graph")
    calib_paths, held_out = split(frames_in(calib), calib_frames)
    tiles = calibration_tiles(calib_paths, sc)
    log(f"calibrating on {len(tiles)} tiles from {len(calib_paths)} frames; {len(held_out)} held out")
    out.parent.mkdir(parents=True, exist_ok=True)
    quantize(src, out, tiles, sc.n_classes, activations)
    record = {"method": "onnxruntime quantize_static, QDQ, MinMax", "activations": activations,
              "weights": "int8 per channel, symmetric", "ops": list(QUANTIZED_OPS),
              "tensorrt_compatible": activations == "int8", "calibration_frames": [p.name for p in calib_paths],
              "calibration_tiles": len(tiles), "held_out_frames": [p.name for p in held_out],
              "min_agreement": min_agreement, "max_fraction_shift_pp": max_shift_pp}
    int8_sc = dataclasses.replace(sc, precision="int8", quantization=record, sha256="", created_at="",
                                  source={**sc.source, "fp32": src.name, "fp32_sha256": sc.sha256})
    try:
        sidecar_mod.write(int8_sc, out)
        result = gate(src, out, held_out, threads)
        log(f"INT8 vs fp32 on {len(held_out)} held-out frames: argmax agreement {result['argmax_agreement']:.4%}, "
            f"largest phase-fraction change {result['max_fraction_shift_pp']:.3f} pp")
        if result["argmax_agreement"] < min_agreement or result["max_fraction_shift_pp"] > max_shift_pp:
            raise GateFailed(f"INT8 graph refused: argmax agreement {result['argmax_agreement']:.4%} (needs >= "
                             f"{min_agreement:.2%}), phase fractions move up to {result['max_fraction_shift_pp']:.3f} "
                             f"pp (allowed {max_shift_pp} pp); calibrate on more or more typical frames")
    except BaseException:
        out.unlink(missing_ok=True)
        sidecar_mod.sidecar_path(out).unlink(missing_ok=True)
        raise
    return sidecar_mod.write(dataclasses.replace(int8_sc, quantization={
        **record, "argmax_agreement": round(result["argmax_agreement"], 6),
        "max_fraction_shift_pp_measured": round(result["max_fraction_shift_pp"], 4), "frames": result["frames"]}),
        out)
