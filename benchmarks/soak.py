"""``phaseedge-bench soak``: push N frames through ``Segmenter.submit`` and watch for leaks.

Reports resident memory (RSS) at start, after warm-up and at the end, the growth after
warm-up as a fraction (``memory_growth``), p50/p99 latency of the first and last tenth of
the frames (drift), and that every Future resolved. Frames are small synthetic micrographs
(one or a few tiles each), so 1000 frames take minutes on a CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import Future
from typing import Any

import numpy as np


def rss_mb() -> float:
    """Resident set size of this process, MiB (Linux /proc; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_soak(model: Any, frames: int, size: int, warmup: int, queue_size: int = 4, seed: int = 0,
             backend: str = "auto") -> dict[str, Any]:
    from phaseedge import Segmenter, synth

    if frames < 10 or warmup < 1 or warmup >= frames:
        raise ValueError(f"need frames >= 10 and 1 <= warmup < frames, got frames={frames}, warmup={warmup}")
    pool = [synth.micrograph((size, size), n_phases=3, seed=seed + k, dtype=np.uint16)[0] for k in range(8)]
    latencies = np.zeros(frames)
    start_mb = rss_mb()
    warm_mb = None
    resolved = 0
    with Segmenter(model, backend=backend, queue_size=queue_size) as seg:
        submitted: list[tuple[Future, float]] = []
        for k in range(frames):
            t = time.perf_counter()
            submitted.append((seg.submit(pool[k % len(pool)], timeout=300), t))
            if len(submitted) > queue_size:  # bounded in flight: drain the oldest
                fut, t0 = submitted.pop(0)
                fut.result(300)
                latencies[resolved] = time.perf_counter() - t0
                resolved += 1
                if resolved == warmup:
                    warm_mb = rss_mb()
        for fut, t0 in submitted:
            fut.result(300)
            latencies[resolved] = time.perf_counter() - t0
            resolved += 1
    end_mb = rss_mb()
    tenth = max(1, frames // 10)
    first, last = latencies[warmup: warmup + tenth], latencies[-tenth:]
    return {
        "frames": frames, "resolved": resolved, "all_resolved": resolved == frames, "frame_size": size,
        "warmup": warmup, "rss_mb": {"start": start_mb, "after_warmup": warm_mb, "end": end_mb},
        "memory_growth": (end_mb - warm_mb) / warm_mb,
        "latency_ms": {"first_p50": 1e3 * float(np.median(first)), "first_p99": 1e3 * float(np.quantile(first, 0.99)),
                       "last_p50": 1e3 * float(np.median(last)), "last_p99": 1e3 * float(np.quantile(last, 0.99))},
    }


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("soak", help="N frames through Segmenter.submit: memory growth and latency drift",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="model (default: the bundled one)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--frames", type=int, default=1000, help="frames to push (default 1000)")
    p.add_argument("--size", type=int, default=256, help="side of the square synthetic frames (default 256)")
    p.add_argument("--warmup", type=int, default=100, help="frames before the memory baseline (default 100)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = run_soak(args.model, args.frames, args.size, args.warmup, backend=args.backend)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        r, lat = report["rss_mb"], report["latency_ms"]
        print(f"{report['resolved']}/{report['frames']} frames resolved; RSS {r['start']:.0f} -> "
              f"{r['after_warmup']:.0f} (after {report['warmup']}) -> {r['end']:.0f} MiB, growth "
              f"{100 * report['memory_growth']:.2f} %; latency p50/p99 {lat['first_p50']:.1f}/{lat['first_p99']:.1f} ms "
              f"(first tenth) -> {lat['last_p50']:.1f}/{lat['last_p99']:.1f} ms (last tenth)")
    return 0 if report["all_resolved"] else 1
