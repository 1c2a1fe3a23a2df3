"""Latency statistics: percentiles of per-frame times, and tables for the terminal.

Percentiles rather than means because an acquisition loop cares about the slow
frames: p50 is the typical frame, p90/p99 the ones that make the microscope wait.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def summarize_ms(times_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean/min/max in milliseconds of per-frame times given in seconds.

    With few runs the high percentiles interpolate between the slowest frames
    (numpy's linear method); the report shows ``runs`` so a reader can judge.
    """
    t = np.asarray(times_s, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"need a non-empty 1-D sequence of times, got shape {t.shape}")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError("times must be finite and non-negative")
    ms = t * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "runs": int(t.size),
    }


def median_stages_ms(per_frame: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Median per stage over frames, in ms, from per-frame stage times in seconds.

    A stage missing from some frames (e.g. an upload stage that only a GPU backend
    has) is the median over the frames that report it.
    """
    names: list[str] = []
    for frame in per_frame:
        names.extend(k for k in frame if k not in names)
    return {k: float(np.median([f[k] for f in per_frame if k in f]) * 1e3) for k in names}


def format_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """A Markdown table (readable in a terminal, pasteable into docs/benchmarks.md)."""
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
