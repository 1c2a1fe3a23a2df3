"""Peak memory of segmenting one huge frame, with a fake backend that costs nothing.

Shows that stitching memory is a row band (about tile x width x n_classes floats),
not a full-frame probability buffer. Usage:

    .venv/bin/python scripts/runtime_memory.py --size 20000 --tile 512 --classes 4

Prints the resident set size (RSS) before and after, the process's peak RSS, and the
peak of the Segmenter's own allocations (tracemalloc). The frame itself (2 bytes per
pixel) and the uint8 label map (1 byte per pixel) are part of the process peak.
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np

from phaseedge import hostops
from phaseedge.backends.base import Backend
from phaseedge.segmenter import Segmenter


class FreeBackend(Backend):
    """probs = [x, 1 - x, 0, ...] into a reused buffer: no model cost, real shapes."""

    name = "fake"

    def __init__(self, tile: int, n_classes: int, max_batch: int) -> None:
        self.tile, self.n_classes, self.max_batch = tile, n_classes, max_batch
        self.class_names = tuple(f"class{i}" for i in range(n_classes))
        self._out = np.zeros((max_batch, n_classes, tile, tile), np.float16)

    def infer(self, images: np.ndarray, ratio: np.ndarray) -> np.ndarray:
        out = self._out[: len(images)]
        out[:, 0] = images[:, 0]
        np.subtract(1, images[:, 0], out=out[:, 1])
        return out


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=20000, help="frame side (square, uint16)")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--overlap", type=float, default=0.25)
    args = ap.parse_args()

    s = args.size
    frame = np.empty((s, s), np.uint16)
    for y in range(0, s, 1024):  # a cheap pattern, generated in row chunks
        rows = np.arange(y, min(y + 1024, s), dtype=np.uint32)[:, None]
        frame[y: y + len(rows)] = ((rows * 7 + np.arange(s, dtype=np.uint32)[None] * 13) % 65521).astype(np.uint16)
    seg = Segmenter(FreeBackend(args.tile, args.classes, args.batch), overlap=args.overlap)
    seg.segment(frame[:600, :600])  # warm-up outside the measurement
    before = rss_mb()
    tracemalloc.start()
    t = time.perf_counter()
    result = seg.segment(frame)
    seconds = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"frame {s}x{s} uint16 ({frame.nbytes / 2**20:.0f} MiB), tile {args.tile}, {args.classes} classes, "
          f"overlap {args.overlap}, batch {args.batch}, host ops {hostops.BACKEND}")
    print(f"segment: {seconds:.1f} s, labels {result.labels.nbytes / 2**20:.0f} MiB; stages (s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))
    print(f"Segmenter allocations peak (tracemalloc, labels included): {peak / 2**20:.0f} MiB")
    print(f"RSS before segment {before:.0f} MiB, after {rss_mb():.0f} MiB, process peak {peak_rss:.0f} MiB")
    full = args.classes * s * s * 4 / 2**20
    print(f"(a full-frame float32 probability buffer alone would be {full:.0f} MiB)")


if __name__ == "__main__":
    main()
