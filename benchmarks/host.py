"""`phaseedge-bench host`: time the host-side work around the model for one whole frame,
native extension against the numpy reference, in one run.

The work is what `phaseedge.Segmenter` does besides inference: cut and normalise every
tile (`gather_tiles`), blend each batch of tile probabilities into the row band
(`accumulate`), and finish rows to labels and class counts as soon as they are final
(`finish`, plus sliding the band). The model is replaced by fixed random float16
probabilities, so only host work is timed. Both implementations process the same frame
and must give identical labels and counts (checked).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import time
from types import ModuleType

import numpy as np
from phaseedge.bench import system
from phaseedge.bench.models import parse_frame

from phaseedge import hostops
from phaseedge.normalize import frame_range
from phaseedge.stitch import stitch
from phaseedge.tiling import BLENDS, TileGrid

#: finish includes sliding the band (plain numpy in both), as in the Segmenter
STEPS = ("gather", "accumulate", "finish")


def host_frame(impl: ModuleType, frame: np.ndarray, lo: float, hi: float, grid: TileGrid, batches: list[slice],
               blend: str, fake_probs: np.ndarray) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """One frame's host work with `impl` (hostops.numpy_impl or the native module), through the
    runtime's own `phaseedge.stitch.stitch`; the backend is replaced by ``fake_probs``.

    Returns (seconds per step, labels, counts)."""
    t = grid.tile
    tiles = np.empty((fake_probs.shape[0], 1, t, t), np.float16)
    times: dict[str, float] = {"gather": 0.0}

    def fake_backend():
        for sl in batches:
            k = sl.stop - sl.start
            t0 = time.perf_counter()
            impl.gather_tiles(frame, grid.origins[sl], t, lo, hi, tiles[:k])
            times["gather"] += time.perf_counter() - t0
            yield sl, fake_probs[:k]

    labels, counts, _ = stitch(fake_backend(), grid, batches, blend, fake_probs.shape[1], frame.shape, None,
                               False, times, ops=impl)
    return {"gather": times["gather"], "accumulate": times.get("stitch", 0.0),
            "finish": times.get("finish", 0.0)}, labels, counts


def run_host(frame_hw: tuple[int, int], classes: int, overlap: float, tile: int, batch: int, blend: str,
             runs: int, seed: int = 0) -> dict:
    """Median times over `runs` frames per implementation, native and numpy interleaved."""
    if classes < 1 or classes > 256 or tile < 8 or batch < 1 or runs < 1:
        raise ValueError(f"need 1 <= classes <= 256, tile >= 8, batch >= 1, runs >= 1; got {classes}, {tile}, "
                         f"{batch}, {runs}")
    if hostops.native_impl is None:
        raise ImportError("the native extension phaseedge._hostops is not built (or PHASEEDGE_NO_NATIVE is set): "
                          "reinstall with `pip install -e .` on a machine with a C++ compiler")
    h, w = frame_hw
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 65536, (h, w), dtype=np.uint16)
    lo, hi = frame_range(frame)
    grid = TileGrid.for_frame(h, w, tile, overlap)
    batches = grid.batches(batch)
    biggest = max(b.stop - b.start for b in batches)
    fake = rng.random((biggest, classes, tile, tile), dtype=np.float32).astype(np.float16)
    impls = {"native": hostops.native_impl, "numpy": hostops.numpy_impl}
    per: dict[str, list[dict[str, float]]] = {k: [] for k in impls}
    results = {}
    host_frame(impls["native"], frame, lo, hi, grid, batches, blend, fake)  # warm-up (pages, threads)
    for _ in range(runs):
        for name, impl in impls.items():
            times, labels, counts = host_frame(impl, frame, lo, hi, grid, batches, blend, fake)
            per[name].append(times)
            results[name] = (labels, counts)
    identical = bool(np.array_equal(results["native"][0], results["numpy"][0])
                     and np.array_equal(results["native"][1], results["numpy"][1]))
    report: dict = {
        "benchmark": "host",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": system.machine_info(),
        "native_threads": hostops.native_impl.max_threads(),
        "frame": {"width": w, "height": h, "dtype": "uint16"},
        "classes": classes, "tile": tile, "overlap": overlap, "blend": blend, "batch": batch,
        "tiles": grid.n_tiles, "batches": len(batches), "runs": runs,
        "identical": identical,
    }
    for name in impls:
        total = statistics.median(sum(t.values()) for t in per[name])
        report[f"{name}_s"] = round(total, 4)
        report[f"{name}_steps_s"] = {s: round(statistics.median(t[s] for t in per[name]), 4) for s in STEPS}
    report["speedup"] = round(report["numpy_s"] / report["native_s"], 2)
    report["step_speedup"] = {s: round(report["numpy_steps_s"][s] / max(report["native_steps_s"][s], 1e-9), 2)
                              for s in STEPS}
    return report


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("host", help="host pre/post-processing of a frame: native extension vs numpy",
                              description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--frame", type=parse_frame, default=(3072, 4096), metavar="WxH",
                   help="synthetic uint16 frame size (default 4096x3072)")
    p.add_argument("--classes", type=int, default=5, help="number of classes (default 5)")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap in [0, 1) (default 0.25)")
    p.add_argument("--tile", type=int, default=512, help="tile size (default 512)")
    p.add_argument("--batch", type=int, default=8, help="tiles per batch (default 8)")
    p.add_argument("--blend", choices=BLENDS, default="gaussian", help="blend window (default gaussian)")
    p.add_argument("--runs", type=int, default=3, help="timed frames per implementation; median reported (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = run_host(args.frame, args.classes, args.overlap, args.tile, args.batch, args.blend, args.runs)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report["identical"] else 1
    f = report["frame"]
    print(f"host ops, {f['width']}x{f['height']} uint16, {report['tiles']} tiles of {report['tile']} "
          f"(overlap {report['overlap']}, {report['blend']}), {report['classes']} classes, "
          f"median of {report['runs']}; {report['machine']['cpu']}, {report['native_threads']} OpenMP threads")
    print(f"{'step':<12}{'native s':>10}{'numpy s':>10}{'speedup':>9}")
    for s in STEPS:
        print(f"{s:<12}{report['native_steps_s'][s]:>10.3f}{report['numpy_steps_s'][s]:>10.3f}"
              f"{report['step_speedup'][s]:>9.1f}")
    print(f"{'total':<12}{report['native_s']:>10.3f}{report['numpy_s']:>10.3f}{report['speedup']:>9.1f}")
    print("labels and counts identical" if report["identical"] else "MISMATCH between native and numpy")
    return 0 if report["identical"] else 1
