"""PNG charts for the benchmark reports (matplotlib, headless Agg backend).

Two charts: Dice against the expert's ratio accuracy α (the paper's Figure 9, with
the no-PLM baseline as a line), and per-backend latency bars with the compute floor
marked, so the gap to the floor is visible at a glance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a microscope PC or in CI
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def alpha_position(alpha: str) -> float:
    """Where an α label sits on the x axis: 'none' at 0 (no information), 'exact' at 1."""
    if alpha == "none":
        return 0.0
    if alpha == "exact":
        return 1.0
    return float(alpha)


def dice_vs_alpha(curves: Mapping[str, Mapping[str, float]], baselines: Mapping[str, float], path: str | Path,
                  title: str = "Macro Dice vs ratio accuracy α", ylabel: str = "macro Dice") -> Path:
    """Line per curve (label -> {α label: macro Dice}), horizontal dashed line per baseline."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label, points in curves.items():
        xs = sorted(points, key=alpha_position)
        ax.plot([alpha_position(a) for a in xs], [points[a] for a in xs], marker="o", label=label)
    for i, (label, value) in enumerate(baselines.items()):
        ax.axhline(value, linestyle="--", color=f"C{len(curves) + i}", label=label)
    ticks = sorted({a for points in curves.values() for a in points}, key=alpha_position)
    ax.set_xticks([alpha_position(a) for a in ticks], ticks)
    ax.set_xlabel("ratio accuracy α of the expert's guess (none = no ratio given)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def latency_bars(rows: Sequence[Mapping[str, object]], path: str | Path, title: str) -> Path:
    """One bar per variant (``name``, ``p50_ms``), with p90 as an error whisker and
    the floor (``floor_ms``, when known) as a black tick."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 0.6 * len(rows) + 2.0), dpi=120)
    names = [str(r["name"]) for r in rows]
    p50 = [float(r["p50_ms"]) for r in rows]
    p90 = [float(r.get("p90_ms", r["p50_ms"])) for r in rows]
    ys = range(len(rows))
    ax.barh(ys, p50, xerr=[[0] * len(rows), [b - a for a, b in zip(p50, p90)]], color="C0", label="p50 (whisker: p90)")
    floors = [(y, r.get("floor_ms")) for y, r in zip(ys, rows) if r.get("floor_ms")]
    if floors:
        ax.scatter([f for _, f in floors], [y for y, _ in floors], marker="|", s=400, color="k",
                   label="compute floor", zorder=3)
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    ax.set_xlabel("ms per frame")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, frameon=False)
    return _save(plt, fig, path)
