"""phaseedge-bench soak on a tiny graph: every Future resolves and the report is complete."""

from __future__ import annotations

from phaseedge.bench.soak import run_soak
from runtime_graphs import write_graph


def test_soak_reports_memory_and_latency(tmp_path):
    graph = write_graph(tmp_path / "m.onnx", "ratio", tile=32, n=3, max_batch=4)
    r = run_soak(graph, frames=40, size=48, warmup=10, queue_size=3)
    assert r["all_resolved"] and r["resolved"] == 40
    assert r["rss_mb"]["end"] > 0 and isinstance(r["memory_growth"], float)
    assert 0 < r["latency_ms"]["first_p50"] <= r["latency_ms"]["first_p99"]
