"""``phaseedge`` command line: segment SEM images from disk.

Exit status: 0 when every image was segmented, 1 when some failed (each with a
one-line reason, after the others were finished), 2 when nothing could run (bad
arguments, a model that does not load, a ratio the model refuses).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from phaseedge import __version__
from phaseedge import tta as tta_mod

EXIT_OK, EXIT_SOME_FAILED, EXIT_UNUSABLE = 0, 1, 2


def _ratio_arg(text: str) -> list[float] | dict[str, float | str] | str:
    """``0.6,0.3,0.1`` (the model's class order), ``ferrite=0.6,martensite=0.3,...``, ``auto``,
    or a partial ratio ``martensite=0.10,rest=auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    parts = [v.strip() for v in text.replace(";", ",").split(",") if v.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("ratio is empty")
    named = ["=" in p for p in parts]
    if any(named) and not all(named):
        raise argparse.ArgumentTypeError(f"give every phase by name or none: {text!r}")
    try:
        if all(named):
            out: dict[str, float | str] = {}
            for p in parts:
                name, _, value = p.partition("=")
                if name.strip().lower() in (k.lower() for k in out):
                    raise argparse.ArgumentTypeError(f"ratio names {name.strip()!r} twice")
                rest = name.strip().lower() == "rest" and value.strip().lower() == "auto"
                out[name.strip()] = "auto" if rest else float(value)
            return out
        return [float(v) for v in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"ratio must be numbers (0.6,0.3,0.1), name=number pairs (ferrite=0.6,...), 'auto' or a partial "
            f"ratio (martensite=0.10,rest=auto), got {text!r}"
        ) from None


def read_ratio_file(path: Path) -> dict[str, dict[str, float]]:
    """``image,<class>,<class>,...`` CSV -> {image stem: {class: value}}; one row per image."""
    if not path.is_file():
        raise FileNotFoundError(f"--ratio-file {path} not found")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or reader.fieldnames[0].strip().lower() != "image":
            raise ValueError(f"{path}: the first column must be 'image', then one column per phase")
        out: dict[str, dict[str, float]] = {}
        for line, row in enumerate(reader, start=2):
            stem = Path(row["image"].strip()).stem
            if stem in out:
                raise ValueError(f"{path}:{line}: {stem} has two rows")
            try:
                out[stem] = {k.strip(): float(v) for k, v in row.items() if k != "image" and v not in (None, "")}
            except ValueError:
                raise ValueError(f"{path}:{line}: every phase column must hold a number") from None
    return out


def _tiling_args(p: argparse.ArgumentParser) -> None:
    """--tile/--overlap/--halo/--blend; left out, the model decides (phaseedge.tiling.plan)."""
    p.add_argument("--tile", type=int, default=None,
                   help="tile side (default: a fully convolutional model picks the size that computes the fewest "
                        "pixels for each frame; others use their own)")
    p.add_argument("--overlap", type=float, default=None,
                   help="tile overlap as a fraction in [0, 1) of the training tile (default: 2 x the model's "
                        "measured halo, or 0.25 for models without one)")
    p.add_argument("--halo", type=int, default=None,
                   help="pixels every kept pixel lies inside its tile (overlap 2 x halo; default: the model's)")
    p.add_argument("--blend", default=None, choices=("gaussian", "center"),
                   help="default: center with a halo, gaussian with a fractional overlap")


def _crop_arg(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"crop must be ROWS,COLS, got {text!r}") from None
    return rows, cols


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phaseedge", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"phaseedge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="segment images; writes labels, overlays and phase fractions",
                         description="Segment SEM images. Per image: NAME_labels.png (indexed colour: pixel "
                                     "value = class index, palette = overlay colours), NAME_labels.tif (16-bit "
                                     "class index, for Fiji/ImageJ), NAME_overlay.png (colours and legend), "
                                     "NAME.json (fractions, pixel counts, model, ratio, timings), optionally "
                                     "NAME_uncertainty.tif; plus fractions.csv with one row per image.")
    seg.add_argument("images", nargs="+", type=Path, help="TIFF/PNG/JPEG files")
    seg.add_argument("--model", default="default",
                     help="model .onnx/.engine (with sidecar), checkpoint dir, or 'default' (bundled)")
    seg.add_argument("--out", type=Path, required=True, help="output directory (created)")
    seg.add_argument("--ratio", type=_ratio_arg, default=None,
                     help="expert phase ratio by name, e.g. ferrite=0.6,martensite=0.3,bainite=0.1 (case-"
                          "insensitive; phases left out count 0), in the model's class order, e.g. 0.6,0.3,0.1, "
                          "'auto' (the model's own ratio-free estimate, then used as the ratio), or a partial "
                          "ratio such as martensite=0.10,rest=auto (named fractions fixed, the rest estimated) (default: "
                          "unknown; an unknown name lists the model's classes)")
    seg.add_argument("--ratio-file", type=Path, default=None,
                     help="CSV with one row per image: image,<phase>,<phase>,... (overrides --ratio for "
                          "the images it lists)")
    tta_mod.add_arguments(seg)
    seg.add_argument("--ratio-mode", default="global", choices=("global", "local", "calibrate", "none"))
    _tiling_args(seg)
    seg.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt", "torch"))
    seg.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    seg.add_argument("--batch-size", type=int, default=None, help="tiles per inference call (default: model max)")
    seg.add_argument("--crop", type=_crop_arg, default=None,
                     help="keep the top-left ROWS,COLS pixels (instead of detecting the information band)")
    seg.add_argument("--model-pixel-size", type=float, default=None, metavar="NM",
                     help="the model's training pixel size in nm: frames whose SEM metadata gives their pixel "
                          "size are resampled to it (default: segment at the frame's own scale)")
    seg.add_argument("--keep-band", action="store_true", help="do not detect/remove the information band")
    seg.add_argument("--no-overlay", action="store_true", help="skip the colour overlay PNG")
    seg.add_argument("--uncertainty", action="store_true",
                     help="also write NAME_uncertainty.tif: per-pixel entropy of the class probabilities (bits)")
    seg.add_argument("--mask", type=Path, default=None,
                     help="region of interest: an image of the frame's size (after band removal) whose "
                          "non-zero pixels are counted; zero pixels (scale bar, crack, edge) count for no "
                          "phase and are labelled 255")
    bat = sub.add_parser("batch", help="an archive folder: per-frame files + one fractions table, resumable, "
                                       "optionally on Ray",
                         description="Segment every image under INPUT_DIR (recursively) into OUT (same subfolders): "
                                     "per frame the files `phaseedge segment` writes plus NAME_fractions.csv; then "
                                     "fractions.csv (every complete frame) and errors.csv (files that failed). "
                                     "Frames already complete for the same model are skipped, so a stopped run is "
                                     "resumed by starting it again.")
    bat.add_argument("input_dir", type=Path, help="folder of TIFF/PNG/JPEG frames (searched recursively)")
    bat.add_argument("--model", default="default",
                     help="model .onnx/.engine, checkpoint dir, triton://host:port/NAME, or 'default' (bundled)")
    bat.add_argument("--out", type=Path, required=True, help="output directory (created)")
    bat.add_argument("--ratio", type=_ratio_arg, default=None, help="expert phase ratio for every frame (as segment)")
    bat.add_argument("--ratio-mode", default="global", choices=("global", "local", "calibrate", "none"))
    _tiling_args(bat)
    bat.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt", "torch", "triton"))
    bat.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    bat.add_argument("--batch-size", type=int, default=None, help="tiles per inference call (default: model max)")
    tta_mod.add_arguments(bat)
    bat.add_argument("--crop", type=_crop_arg, default=None, help="keep the top-left ROWS,COLS pixels")
    bat.add_argument("--keep-band", action="store_true", help="do not detect/remove the information band")
    bat.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png per frame")
    bat.add_argument("--uncertainty", action="store_true", help="also write NAME_uncertainty.tif per frame")
    bat.add_argument("--ray", action="store_true", help="run as a Ray Data pipeline (pip install 'phaseedge[ray]')")
    bat.add_argument("--ray-address", default=None,
                     help="an existing Ray cluster (e.g. ray://head:10001 or auto); default: a local instance")
    bat.add_argument("--workers", type=int, default=1, help="--ray: actors, one Segmenter each (default 1)")
    bat.add_argument("--gpus-per-worker", type=float, default=0.0, help="--ray: GPUs per actor (default 0)")
    info = sub.add_parser("info", help="what a model is: classes, tile, pixel size, training data, metrics",
                          description="Print what a model file says about itself (its sidecar, or a checkpoint's "
                                      "config.json) and, for an engine, whether it can run on this machine.")
    info.add_argument("model", help="model .onnx/.engine, checkpoint dir, or 'default' (bundled)")
    info.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "segment":
        return segment_command(args)
    if args.command == "info":
        return info_command(args)
    if args.command == "batch":
        return batch_command(args)
    return EXIT_UNUSABLE  # argparse's required=True makes this unreachable


def model_info(model: str) -> dict[str, Any]:
    """What ``phaseedge info`` prints, read without loading the model."""
    from phaseedge import sidecar as sidecar_mod
    from phaseedge.segmenter import default_model

    path = default_model() if model == "default" else Path(model)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    if path.is_dir():
        from phaseedge.checkpoint_config import read_config

        cfg = read_config(path)
        return {"model": str(path), "kind": "checkpoint", "architecture": cfg.get("architecture"),
                "plm": cfg.get("plm"), "class_names": cfg.get("class_names"), "tile": cfg.get("tile"),
                "pixel_size_m": cfg.get("pixel_size_m"), "normalization": cfg.get("normalization"),
                "trained_on": cfg.get("trained_on"), "metrics": cfg.get("val_metrics") or {}}
    sc = sidecar_mod.load(path)
    out = {"model": str(path), "kind": sc.kind, "architecture": sc.architecture, "plm": sc.plm,
           "class_names": list(sc.class_names), "tile": sc.tile, "pixel_size_m": sc.pixel_size_m,
           "normalization": sc.normalization, "precision": sc.precision, "batch": list(sc.batch),
           "trained_on": sc.trained_on, "metrics": sc.metrics, "created": sc.created_at}
    if sc.tile_multiple is not None:
        out["tile_sizes"] = f"{sc.tile}..{sc.max_tile} in steps of {sc.tile_multiple}"
        out["halo"] = sc.halo
    if sc.quantization:
        out["quantization"] = {k: sc.quantization.get(k) for k in ("activations", "argmax_agreement",
                                                                    "max_fraction_shift_pp_measured")}
    if sc.engine is not None:
        out["engine"] = {"target": sc.engine.target, "tensorrt_version": sc.engine.tensorrt_version,
                         "gpu_name": sc.engine.gpu_name, "compute_capability": sc.engine.compute_capability}
        out["runs_here"] = _engine_runs_here(sc)
    return out


def _engine_runs_here(sc: Any) -> str:
    """'yes', or why not: the sidecar rules against this machine's TensorRT and GPU, no engine loaded."""
    from phaseedge import sidecar as sidecar_mod
    from phaseedge.backends import tensorrt as trt_backend
    from phaseedge.gpu import has_cuda_gpu

    try:
        version = trt_backend.installed_version(trt_backend.TARGET_MODULES[sc.engine.target])
    except (ImportError, ValueError) as exc:
        return f"no: {exc}"
    if version is None:
        return f"no: the {sc.engine.target} Python package is not installed"
    if not has_cuda_gpu():
        return "no: no NVIDIA GPU / CUDA driver on this machine"
    try:
        from phaseedge import cuda_mem

        gpu = cuda_mem.device_info(0)
        sidecar_mod.check_engine_compatible(sc, version, gpu.name, gpu.compute_capability, target=sc.engine.target)
    except Exception as exc:  # noqa: BLE001 - reported, not raised: info must always print
        return f"no: {exc}"
    return "yes"


def info_command(args: argparse.Namespace) -> int:
    try:
        info = model_info(args.model)
    except (OSError, ValueError) as exc:
        return _fail(f"{exc}")
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    for key, value in info.items():
        if key == "metrics" and value:
            print("metrics:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")
    if info.get("trained_on") == "synthetic":
        print("note: trained on synthetic micrographs only; train on your own frames (docs/training.md)")
    return EXIT_OK


def _fail(message: str) -> int:
    print(f"phaseedge: error: {message}", file=sys.stderr)
    return EXIT_UNUSABLE


def segment_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from phaseedge import ratio as ratio_mod
    from phaseedge.io import read_image
    from phaseedge.segmenter import Segmenter

    try:
        seg = Segmenter(args.model, backend=args.backend, device=args.device, overlap=args.overlap,
                        blend=args.blend, tile=args.tile, halo=args.halo, batch_size=args.batch_size,
                        ratio_mode=args.ratio_mode,
                        model_pixel_size_m=None if args.model_pixel_size is None else args.model_pixel_size * 1e-9,
                        tta=args.tta, scales=args.scales)
        seg.__enter__()  # load now: a model that does not load is one message, not N
        ratio = ratio_mod.check(args.ratio, seg.n_classes, seg.class_names)
        per_image = {}
        if args.ratio_file is not None:  # every row is checked before the first image runs
            per_image = {stem: ratio_mod.validate(r, seg.n_classes, seg.class_names)
                         for stem, r in read_ratio_file(args.ratio_file).items()}
    except (OSError, ImportError, ValueError, TypeError, RuntimeError) as exc:
        return _fail(f"{exc}")
    roi = None
    if args.mask is not None:
        try:
            roi = read_image(args.mask, detect_band=False).pixels != 0
        except (OSError, ValueError) as exc:
            return _fail(f"--mask {args.mask}: {exc}")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _fail(f"cannot create output directory {args.out}: {exc}")

    names = seg.class_names
    paths = list(args.images)
    stems = _unique_stems(paths)
    rows: list[dict[str, Any]] = []
    failed = 0
    with seg, ThreadPoolExecutor(max_workers=1, thread_name_prefix="phaseedge-read") as pool:
        to_read = iter(paths)
        pending: deque = deque()

        def read_next() -> None:  # the next file is read while the current one is segmented
            for p in to_read:
                pending.append(pool.submit(read_image, p, args.crop, not args.keep_band))
                return

        read_next()
        for path, stem in zip(tqdm(paths, desc="segment", unit="image", disable=None), stems):
            fut = pending.popleft()
            read_next()
            row: dict[str, Any] = {"image": str(path), "error": ""}
            try:
                row.update(segment_frame(seg, fut.result(), args.out, stem, per_image.get(path.stem, ratio),
                                         roi=roi, mask=args.mask, uncertainty=args.uncertainty,
                                         overlay=not args.no_overlay))
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
                failed += 1
                row["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                tqdm.write(f"phaseedge: {path}: {row['error']}", file=sys.stderr)
            rows.append(row)

    csv_path = args.out / "fractions.csv"
    write_fractions_csv(csv_path, rows, names, str(seg.model), args.ratio_mode)
    done = len(rows) - failed
    print(f"phaseedge: {done}/{len(rows)} images segmented -> {args.out} ({csv_path.name})", file=sys.stderr)
    return EXIT_OK if failed == 0 else EXIT_SOME_FAILED


def batch_command(args: argparse.Namespace) -> int:
    from phaseedge.batch import Settings, run_batch

    settings = Settings(model=args.model, backend=args.backend, device=args.device, overlap=args.overlap,
                        blend=args.blend, tile=args.tile, halo=args.halo, batch_size=args.batch_size,
                        ratio_mode=args.ratio_mode, ratio=args.ratio, tta=args.tta, scales=args.scales,
                        crop=args.crop,
                        keep_band=args.keep_band, overlay=args.overlay, uncertainty=args.uncertainty)
    try:
        report = run_batch(args.input_dir, args.out, settings, ray=args.ray, ray_address=args.ray_address,
                           workers=args.workers, gpus_per_worker=args.gpus_per_worker)
    except (OSError, ImportError, ValueError, TypeError, RuntimeError) as exc:
        return _fail(f"{exc}")
    print(f"phaseedge: {report.frames} frames: {report.segmented} segmented, {report.skipped} already complete, "
          f"{report.failed} failed -> {args.out} ({report.fractions_csv.name}, {report.errors_csv.name})",
          file=sys.stderr)
    return EXIT_OK if report.failed == 0 else EXIT_SOME_FAILED


def segment_frame(seg: Any, frame: Any, out: Path, stem: str, ratio: Any = None, roi: np.ndarray | None = None,
                  mask: Path | None = None, uncertainty: bool = False, overlay: bool = True) -> dict[str, Any]:
    """Segment one read `phaseedge.io.Frame` and write its files as ``phaseedge segment`` names
    them (NAME_labels.png, NAME_labels.tif, NAME.json, optionally NAME_overlay.png and
    NAME_uncertainty.tif); returns its fractions.csv row. Shared with ``phaseedge batch``."""
    import cv2

    from phaseedge.outputs import EXCLUDED, atomic_write, write_frame_outputs
    from phaseedge.result import palette

    names = seg.class_names
    result = seg.segment(frame, ratio=ratio, return_probabilities=uncertainty)
    if roi is not None:
        result = result.within(roi)
    outputs = write_frame_outputs(out, stem, result.labels, palette(len(names)), names, result.probabilities)
    if overlay:
        overlay_png = out / f"{stem}_overlay.png"
        _write_png(cv2, overlay_png, cv2.cvtColor(result.overlay(frame.pixels), cv2.COLOR_RGB2BGR))
        outputs["overlay"] = overlay_png.name
    info = {"image": str(frame.path), **result.to_dict(), "pixel_size_m": frame.pixel_size_m,
            "band_rows_removed": frame.band_rows, "model": str(seg.model), "outputs": outputs,
            "roi": None if mask is None else str(mask),
            "labels_png": f"pixel value = class index into class_names; {EXCLUDED} = outside the ROI"}
    atomic_write(out / f"{stem}.json", (json.dumps(info, indent=2) + "\n").encode())
    row: dict[str, Any] = {c: f"{result.fractions[c]:.6f}" for c in names}
    row.update({f"{c}_pixels": int(k) for c, k in zip(names, result.counts)})
    row.update({f"{c}_se": f"{u['se']:.6f}" for c, u in info["fraction_uncertainty"].items()})
    used = result.ratio
    row["ratio"] = "" if used is None else " ".join(f"{v:.4f}" for v in used)
    row["ratio_source"] = result.ratio_source or ""
    row["seconds"] = f"{result.timings['total']:.3f}"
    return row


def fraction_fields(names: tuple[str, ...]) -> list[str]:
    """The columns of fractions.csv."""
    return ["image", *names, *(f"{c}_se" for c in names), *(f"{c}_pixels" for c in names), "model", "ratio",
            "ratio_source", "ratio_mode", "seconds", "error"]


def write_fractions_csv(path: Path, rows: list[dict[str, Any]], names: tuple[str, ...], model: str,
                        ratio_mode: str) -> None:
    """fractions.csv, one row per image (written atomically)."""
    from phaseedge.outputs import atomic_write

    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=fraction_fields(names), restval="")
    writer.writeheader()
    writer.writerows({**r, "model": model, "ratio_mode": ratio_mode} for r in rows)
    atomic_write(path, buf.getvalue().encode("utf-8"))


def _unique_stems(paths: list[Path]) -> list[str]:
    """Output name per input; repeated names (other folders, same file twice) get _2, _3, ..."""
    seen: dict[str, int] = {}
    out: list[str] = []
    for p in paths:
        seen[p.stem] = seen.get(p.stem, 0) + 1
        out.append(p.stem if seen[p.stem] == 1 else f"{p.stem}_{seen[p.stem]}")
    return out


def _write_png(cv2: Any, path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")


if __name__ == "__main__":
    sys.exit(main())
