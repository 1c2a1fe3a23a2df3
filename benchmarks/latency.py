"""`phaseedge-bench latency`: time whole frames through `phaseedge.Segmenter`, per backend.

What a user choosing a deployment needs, measured in one run on their machine:
p50/p90/p99 per frame, megapixels per second, where the time goes (the Segmenter's
own per-stage timings), peak host and GPU memory, and *pipeline efficiency* = time
in the model / end-to-end time — the share of the frame time that no host-side
optimisation can remove. Each latency is shown next to the compute floor
(`phaseedge.bench.floor`) and, with ``--backend all``, next to the PyTorch eager
fp32 baseline.

Variants (``--backend all`` tries each; a missing one is skipped with the reason):
PyTorch eager fp32 (the baseline), ONNX Runtime on the CPU, CUDA and TensorRT
execution providers, and a TensorRT engine (``--engine`` or ``--model X.engine``).
``--backend tiling`` compares tilings instead, on ONNX Runtime's CPU provider: the
training tile with overlap 0.25 and Gaussian blending (the tiling before big tiles: the
baseline), the Segmenter's default (big tiles, halo overlap), and that with each INT8 graph
given (``--int8``, one variant per graph, named by its activation type). Every variant reports the tiles it actually used and its floor at them;
``--dice`` adds macro Dice on an unseen synthetic frame (DICE_SEED) for each.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from phaseedge.bench import system
from phaseedge.bench.models import ModelSpec, flops_per_tile, parse_frame, resolve
from phaseedge.bench.stats import format_table, median_stages_ms, summarize_ms

from phaseedge.outputs import atomic_write

log = logging.getLogger(__name__)

BACKEND_CHOICES = ("auto", "onnxruntime", "torch", "tensorrt", "all", "tiling")
#: keys of the variants ``--backend all`` tries, baseline first
ALL_VARIANTS = ("torch", "ort-cpu", "ort-cuda", "ort-tensorrt", "tensorrt")
#: keys of ``--backend tiling``, baseline first
TILING_VARIANTS = ("ort-train-tile", "ort-big", "ort-big-int8")  # one ort-big-<activations> per --int8 graph
#: the frame ``--dice`` scores each variant on: the bundled model's held-out seed (docs/results.md)
DICE_SEED = 31337
#: Segmenter stages that are model work (everything else is the pipeline around it)
MODEL_STAGES = ("infer",)
_SYNTH_FRAMES = 2  # distinct synthetic frames, cycled (generating one 4096x3072 frame takes seconds)


@dataclass
class Variant:
    """One way to run the model: how to build its backend, or why it cannot run here."""

    key: str
    label: str
    make: Callable[[], Any] | None = None
    skip: str | None = None
    gpu: bool = False
    note: str = ""
    tiling: dict[str, Any] | None = None  # Segmenter tile/overlap/halo/blend (None: the command's)


# ------------------------------------------------------------------ variants
def plan_variants(which: str, spec: ModelSpec, engine: Path | None, torch_ckpt: Path | None,
                  device: int = 0, threads: int | None = None, graph_flops: int | None = None,
                  int8: list[Path] | None = None) -> list[Variant]:
    """The variants ``--backend which`` asks for, each buildable or carrying its skip reason."""
    if which == "tiling":
        return _tiling_variants(spec, int8, threads)
    if which == "all":
        keys = ALL_VARIANTS
    elif which == "auto":
        keys = (_auto_key(spec, engine),)
    else:
        keys = {"onnxruntime": ("ort-auto",), "torch": ("torch",), "tensorrt": ("tensorrt",)}[which]
    return [_variant(k, spec, engine, torch_ckpt, device, threads, graph_flops) for k in keys]


def _auto_key(spec: ModelSpec, engine: Path | None) -> str:
    if spec.kind == "engine" or engine is not None:
        return "tensorrt"
    return "ort-auto" if spec.kind == "onnx" else "torch"


def _variant(key: str, spec: ModelSpec, engine: Path | None, torch_ckpt: Path | None, device: int,
             threads: int | None = None, graph_flops: int | None = None) -> Variant:
    from phaseedge.gpu import has_cuda_gpu

    if key == "torch":
        return _torch_variant(spec, torch_ckpt, device, threads, graph_flops)
    if key.startswith("ort-"):
        label = {"ort-auto": "ONNX Runtime (auto provider)", "ort-cpu": "ONNX Runtime CPU EP",
                 "ort-cuda": "ONNX Runtime CUDA EP", "ort-tensorrt": "ONNX Runtime TensorRT EP"}[key]
        v = Variant(key, label, gpu=key in ("ort-cuda", "ort-tensorrt"))
        if spec.kind != "onnx":
            v.skip = f"--model is a {spec.kind}, not an ONNX graph (export one with phaseedge-export onnx)"
            return v
        try:
            import onnxruntime as ort
        except ImportError:
            v.skip = "onnxruntime is not installed (pip install 'phaseedge[cpu]' or '[gpu]')"
            return v
        providers = {"ort-auto": None, "ort-cpu": ["CPUExecutionProvider"],
                     "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                     "ort-tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}[key]
        if v.gpu:
            wanted = providers[0]
            if not has_cuda_gpu():
                v.skip = "no NVIDIA GPU / CUDA driver on this machine"
                return v
            if wanted not in ort.get_available_providers():
                v.skip = f"this onnxruntime build has no {wanted} (install onnxruntime-gpu)"
                return v
        options: dict[str, Any] = {} if providers is None else {"providers": providers}
        if threads:
            options["threads"] = threads
        require_gpu = v.gpu  # an explicit GPU provider must not fall back to the CPU unnoticed
        v.make = lambda: _ort_backend(spec.path, device, options, require_gpu)
        v.gpu = v.gpu or (key == "ort-auto" and has_cuda_gpu())
        return v
    if key == "tensorrt":
        v = Variant("tensorrt", "TensorRT engine", gpu=True)
        path = spec.path if spec.kind == "engine" else engine
        if path is None:
            v.skip = "no engine given (--engine FILE; build one with phaseedge-export trt)"
        elif not has_cuda_gpu():
            v.skip = "no NVIDIA GPU / CUDA driver on this machine"
        else:
            from phaseedge.backends import get_backend

            v.make = lambda: get_backend("tensorrt", path, device)
        return v
    raise ValueError(f"unknown variant {key!r}")


def _tiling_variants(spec: ModelSpec, int8: list[Path] | None, threads: int | None) -> list[Variant]:
    """Today's tiling (training tile, overlap 0.25, Gaussian), big tiles, big tiles + each INT8 graph, on the CPU."""
    from phaseedge import sidecar

    cpu = {"providers": ["CPUExecutionProvider"], **({"threads": threads} if threads else {})}
    quantized = []
    for path in int8 or [None]:
        act = sidecar.read(path).quantization.get("activations", "int8") if path is not None else "int8"
        quantized.append((f"ort-big-{act}", f"big tiles + INT8 ({act} activations)", path, {}))
    out = []
    for key, label, path, tiling in (
            ("ort-train-tile", f"tile {spec.tile}, overlap 0.25, gaussian (baseline)", spec.path,
             {"overlap": 0.25, "blend": "gaussian"}),
            ("ort-big", "big tiles (default)", spec.path, {}), *quantized):
        v = Variant(key, label, tiling=tiling)
        if spec.kind != "onnx":
            v.skip = f"--model is a {spec.kind}, not an ONNX graph"
        elif path is None:
            v.skip = "no INT8 graph given (--int8 FILE; make one with phaseedge-export int8)"
        elif key != "ort-train-tile" and spec.tile_sizes is None:
            v.skip = f"{spec.path.name} takes only {spec.tile}-pixel tiles"
        else:
            v.make = lambda p=path: _ort_backend(p, 0, cpu, False)
        out.append(v)
    return out


def _ort_backend(path: Path, device: int, options: dict, require_gpu: bool):
    from phaseedge.backends import get_backend

    backend = get_backend("onnxruntime", path, device, **options)
    if require_gpu and not getattr(backend, "on_gpu", False):
        backend.close()
        raise RuntimeError(f"onnxruntime fell back to the CPU (providers in use: {getattr(backend, 'providers', '?')})")
    return backend


def _torch_variant(spec: ModelSpec, torch_ckpt: Path | None, device: int, threads: int | None,
                   graph_flops: int | None) -> Variant:
    v = Variant("torch", "PyTorch eager fp32 (baseline)")
    try:
        import torch
    except ImportError:
        v.skip = "torch is not installed (pip install 'phaseedge[train]' torch==2.13.0)"
        return v
    v.gpu = torch.cuda.is_available()  # the baseline runs where PyTorch users would run it

    def make():
        from phaseedge.bench.models import torch_model

        from phaseedge.backends import get_backend

        if threads:
            torch.set_num_threads(threads)
        module, origin = torch_model(spec, torch_ckpt, expect_flops=graph_flops)
        v.note = origin
        if v.gpu:
            module = module.to(f"cuda:{device}")
        return get_backend("torch", module, device)

    v.make = make
    return v


# ------------------------------------------------------------------ frames
def synthetic_frames(frame_hw: tuple[int, int], n_classes: int, count: int = _SYNTH_FRAMES):
    """``[(frame, true ratio)]`` from `phaseedge.synth` (16-bit, as SEMs store them)."""
    from phaseedge import ratio, synth

    phases = max(1, min(n_classes, len(synth.PHASE_NAMES)))
    out = []
    for i in range(count):
        image, mask = synth.micrograph(frame_hw, n_phases=phases, seed=1000 + i, dtype=np.uint16)
        r = np.zeros(n_classes, np.float32)
        r[:phases] = ratio.from_mask(mask, phases)
        out.append((image, r))
    return out


def _read(path: Path) -> np.ndarray:
    from phaseedge.io import read_image

    return np.array(read_image(path).pixels)  # a copy: the file is really read, not memory-mapped lazily


# ------------------------------------------------------------------ one variant
def time_variant(variant: Variant, frames: list, paths: list[Path] | None, runs: int, warmup: int,
                 batch: int | None, tiling: dict[str, Any], ratio_mode: str, device: int,
                 dice_frame: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Build the backend, warm up, then time ``runs`` frames; returns the variant's record, with
    the tiles it used and, given ``dice_frame`` (image, mask), macro Dice on that frame."""
    from phaseedge import Segmenter, metrics

    record: dict[str, Any] = {"variant": variant.key, "name": variant.label}
    if variant.skip:
        return {**record, "skipped": variant.skip}
    sampler = system.GpuMemorySampler(device) if variant.gpu else None
    if sampler is not None:
        sampler.__enter__()
    try:
        t0 = time.perf_counter()
        try:
            backend = variant.make()
        except (ImportError, RuntimeError, OSError, ValueError) as e:
            return {**record, "skipped": f"could not start: {e}"}
        record["setup_s"] = time.perf_counter() - t0
        record.update({k: v for k, v in backend.describe().items() if k in ("backend", "device", "precision")})
        if variant.note:
            record["weights"] = variant.note
        seg = Segmenter(backend, batch_size=batch, ratio_mode=ratio_mode, **(variant.tiling or tiling))
        try:
            h, w = _frame(frames, paths, 0)[0].shape
            grid, blend = seg.tiling_for(h, w)
            passes = 2 if ratio_mode == "local" else 1  # local mode runs a ratio-free survey pass first
            record.update(tile=grid.tile, blend=blend, tiles_per_frame=grid.n_tiles * passes,
                          overlap_factor=grid.n_tiles * passes * grid.tile**2 / (h * w))
            for i in range(warmup):
                image, r = _frame(frames, paths, i)
                seg.segment(image, ratio=r)
            system.reset_peak_host_memory()
            totals, stages = [], []
            for i in range(runs):
                t = time.perf_counter()
                image, r = _frame(frames, paths, i)
                read_s = time.perf_counter() - t
                result = seg.segment(image, ratio=r)
                totals.append(time.perf_counter() - t)
                frame_stages = {k: v for k, v in result.timings.items() if k != "total"}
                if paths:
                    frame_stages["read"] = read_s
                stages.append(frame_stages)
            record["peak_host_mb"] = system.peak_host_mb()
            if dice_frame is not None:
                image, mask = dice_frame
                labels = seg.segment(image).labels
                n = seg.n_classes
                record["dice"] = {"seed": DICE_SEED, "macro_dice": metrics.macro_dice(labels, mask, n),
                                  "fraction_error": metrics.fraction_error(labels, mask, n)}
        except (RuntimeError, MemoryError, OSError) as e:  # one failing variant must not end the comparison
            return {**record, "skipped": f"failed while running: {type(e).__name__}: {e}"}
        finally:
            seg.close()
            backend.close()
    finally:
        if sampler is not None:
            sampler.__exit__(None, None, None)
            record["peak_gpu_mb"] = sampler.peak_mb
    record.update(summarize_ms(totals))
    record["stages"] = median_stages_ms(stages)
    model_s = np.array([sum(s.get(k, 0.0) for k in MODEL_STAGES) for s in stages])
    record["pipeline_efficiency"] = float(np.median(model_s / np.array(totals)))
    return record


def _frame(frames: list, paths: list[Path] | None, i: int):
    if paths:
        return _read(paths[i % len(paths)]), None
    image, r = frames[i % len(frames)]
    return image, r


# ------------------------------------------------------------------ the command
def run_latency(args: argparse.Namespace) -> dict[str, Any]:
    """Everything ``phaseedge-bench latency`` measures, as one JSON-able dict."""
    from phaseedge.bench import floor

    from phaseedge import synth

    spec = resolve(args.model)
    paths = [Path(p) for p in args.images] if args.images else None
    if paths:
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"image not found: {p}")
        frame_hw = tuple(_read(paths[0]).shape)
        frames = []
    else:
        frame_hw = args.frame
        frames = synthetic_frames(frame_hw, spec.n_classes, min(_SYNTH_FRAMES, args.runs + args.warmup))

    tiling = {k: getattr(args, k) for k in ("tile", "overlap", "halo") if getattr(args, k) is not None}
    counts: dict[int, dict] = {}

    def count_at(tile: int) -> dict:
        if tile not in counts:
            try:
                counts[tile] = flops_per_tile(spec, tile=tile)
            except (ImportError, FileNotFoundError, ValueError) as e:
                counts[tile] = {"flops": None, "unavailable": str(e)}
        return counts[tile]

    count = count_at(spec.tile)
    graph_flops = count["flops"] if spec.kind != "checkpoint" else None
    variants = plan_variants(args.backend, spec, args.engine, args.torch_model, args.device, args.threads,
                             graph_flops, args.int8)
    dice_frame = (synth.micrograph(frame_hw, n_phases=min(spec.n_classes, len(synth.PHASE_NAMES)), seed=DICE_SEED)
                  if args.dice else None)
    peaks: dict[str, dict] = {}

    report: dict[str, Any] = {
        "command": "phaseedge-bench latency",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": system.machine_info(),
        "versions": system.library_versions(),
        "model": spec.describe(),
        "frame": {"height": frame_hw[0], "width": frame_hw[1], "megapixels": frame_hw[0] * frame_hw[1] / 1e6,
                  "source": "images" if paths else "phaseedge.synth (uint16)"},
        "runs": args.runs, "warmup": args.warmup, "batch": args.batch, "tiling": tiling,
        "threads": args.threads,
        "ratio_mode": args.ratio_mode,
        "flops_per_tile": count,
        "variants": [],
    }
    mp = frame_hw[0] * frame_hw[1] / 1e6
    for variant in variants:
        rec = time_variant(variant, frames, paths, args.runs, args.warmup, args.batch, tiling,
                           args.ratio_mode, args.device, dice_frame)
        if "skipped" not in rec:
            rec["megapixels_per_s"] = mp / (rec["p50_ms"] / 1e3)
            tile_count = count_at(rec["tile"])  # FLOPs of the tiles this variant used, times how many
            rec["flops_per_tile"] = tile_count.get("flops")
            if tile_count.get("flops") is not None:
                dev = "cuda" if variant.gpu else "cpu"
                if dev not in peaks:
                    peaks[dev] = floor.matmul_peak(dev)
                peak = peaks[dev].get("flops_per_s", {})
                value = peak.get("fp16") if rec.get("precision") == "fp16" and "fp16" in peak else peak.get("fp32")
                fl = floor.floor_report(tile_count["flops"], rec["tiles_per_frame"], frame_hw, value)
                rec["floor_ms"] = fl["floor_ms"]
                rec["gflops_per_megapixel"] = fl["gflops_per_megapixel"]
                if fl["floor_ms"]:
                    rec["x_floor"] = rec["p50_ms"] / fl["floor_ms"]
        report["variants"].append(rec)
        log.info("%s: %s", variant.label, rec.get("skipped") or f"p50 {rec['p50_ms']:.1f} ms")
    report["peaks"] = peaks
    ran = [r for r in report["variants"] if "skipped" not in r]
    baseline = next((r for r in ran if r["variant"] in ("torch", TILING_VARIANTS[0])), None)
    for r in ran:
        r["speedup_vs_baseline"] = baseline["p50_ms"] / r["p50_ms"] if baseline else None
    if ran:  # the headline keys: the fastest variant that ran
        best = min(ran, key=lambda r: r["p50_ms"])
        report["primary"] = best["variant"]
        for key in ("p50_ms", "p90_ms", "p99_ms", "megapixels_per_s", "pipeline_efficiency", "peak_host_mb",
                    "peak_gpu_mb", "stages", "backend", "device", "precision", "floor_ms", "tile", "tiles_per_frame",
                    "overlap_factor"):
            report[key] = best.get(key)
    return report


def print_report(report: dict[str, Any]) -> None:
    """Tables for the terminal (Markdown, pasteable into docs/benchmarks.md)."""
    f = report["frame"]
    m = report["model"]
    print(f"model {m['path']} ({m['architecture']}, plm={m['plm']}, tile {m['tile']}, {m['precision']}); "
          f"frame {f['width']}x{f['height']} ({f['megapixels']:.1f} MP, {f['source']}); "
          f"tiling {report['tiling'] or 'the Segmenter default'}, ratio mode {report['ratio_mode']}")
    print(f"machine: {report['machine']['cpu']} (load {report['machine'].get('load_avg_1m', '?')}); {report['date']}; "
          f"runs {report['runs']} after {report['warmup']} warm-up")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    count = report["flops_per_tile"]
    if count.get("flops") is not None:
        from phaseedge.bench.floor import si

        print(f"FLOPs per tile: {si(count['flops'])} ({count['method']})")
    rows = [[r["name"], r.get("device"), r.get("precision"), f"{r['tile']} x {r['tiles_per_frame']}",
             r["overlap_factor"], r["p50_ms"], r["p90_ms"], r["p99_ms"], r["megapixels_per_s"],
             r.get("floor_ms"), r["pipeline_efficiency"], r.get("speedup_vs_baseline"), r["peak_host_mb"],
             r.get("peak_gpu_mb"), r.get("dice", {}).get("macro_dice")] for r in report["variants"] if "skipped" not in r]
    if rows:
        print(format_table(rows, ["variant", "device", "precision", "tiles", "x pixels", "p50 ms", "p90 ms", "p99 ms",
                                  "MP/s", "floor ms", "efficiency", "x baseline", "host MB", "GPU MB",
                                  f"Dice (seed {DICE_SEED})"]))
    for r in report["variants"]:
        if "skipped" in r:
            print(f"skipped {r['name']}: {r['skipped']}")
    stage_names: list[str] = []
    for r in report["variants"]:
        stage_names.extend(k for k in r.get("stages", {}) if k not in stage_names)
    if stage_names:
        print("\nmedian per-stage ms (from Segmenter.timings):")
        srows = [[r["name"]] + [r["stages"].get(k) for k in stage_names]
                 for r in report["variants"] if "stages" in r]
        print(format_table(srows, ["variant", *stage_names]))
    if report.get("primary"):  # one summary line (scripts/gpu_check.sh shows the last RESULT line)
        best = next(r for r in report["variants"] if r["variant"] == report["primary"])
        ratio = best.get("speedup_vs_baseline")
        print(f"RESULT fastest {best['name']} on {best.get('device')}: p50 {best['p50_ms']:.1f} ms/frame, "
              f"{best['megapixels_per_s']:.2f} MP/s, efficiency {best['pipeline_efficiency']:.2f}"
              + (f", {ratio:.2f}x the baseline" if ratio else ""))


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "latency", help="per-frame latency, throughput, stages, memory and pipeline efficiency per backend",
        description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--model", default="default", help="'default' (bundled), a .onnx/.engine with sidecar, or a checkpoint dir")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                   help="which backend(s); 'all' runs every variant side by side (default auto)")
    p.add_argument("--engine", type=Path, help="TensorRT engine of the same model (for --backend tensorrt/all)")
    p.add_argument("--torch-model", type=Path, metavar="CKPT_DIR",
                   help="checkpoint for the PyTorch baseline; without it the architecture is built with random "
                        "weights (speed only)")
    p.add_argument("--frame", type=parse_frame, default=(3072, 4096), metavar="WxH",
                   help="synthetic frame size (default 4096x3072)")
    p.add_argument("--images", nargs="+", metavar="FILE",
                   help="time these images (cycled; one size, as from one microscope setting) instead of synthetic "
                        "frames; the file read is timed as stage 'read'")
    p.add_argument("--batch", type=int, default=None, help="tiles per backend call (default: the model's maximum)")
    p.add_argument("--runs", type=int, default=10, help="timed frames (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed frames first (default 2)")
    p.add_argument("--overlap", type=float, default=None,
                   help="tile overlap in [0, 1) (default: the Segmenter's, 2 x the model's halo or 0.25)")
    p.add_argument("--tile", type=int, default=None, help="tile side (default: the one the Segmenter picks)")
    p.add_argument("--halo", type=int, default=None, help="halo in pixels (default: the model's measured one)")
    p.add_argument("--int8", type=Path, nargs="+", default=None,
                   help="INT8 graph(s) of the model (phaseedge-export int8), each a variant of --backend tiling")
    p.add_argument("--dice", action="store_true",
                   help=f"also score each variant on an unseen synthetic frame (seed {DICE_SEED}) of the frame size")
    p.add_argument("--ratio-mode", choices=("global", "local", "calibrate", "none"), default="global",
                   help="how the (synthetic frames' true) ratio is used (default global)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for ONNX Runtime and PyTorch alike (default: each library's own default)")
    p.add_argument("--device", type=int, default=0, help="GPU index (default 0)")
    p.add_argument("--out", type=Path, help="also write latency.json and latency.png here")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.runs < 1 or args.warmup < 0:
        raise ValueError(f"--runs must be >= 1 and --warmup >= 0, got {args.runs} and {args.warmup}")
    for name in ("batch", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    report = run_latency(args)
    if args.out:
        from phaseedge.bench import plots

        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out / "latency.json", (json.dumps(report, indent=2) + "\n").encode())
        ran = [r for r in report["variants"] if "skipped" not in r]
        if ran:
            f = report["frame"]
            plots.latency_bars(ran, args.out / "latency.png",
                               f"{Path(report['model']['path']).name}, {f['width']}x{f['height']}, "
                               f"{report['machine']['cpu']}")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if any("skipped" not in r for r in report["variants"]) else 1
