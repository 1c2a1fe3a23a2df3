"""phaseedge-bench coverage on a tiny graph: a complete report, and intervals that mean something."""

from __future__ import annotations

from phaseedge.bench.coverage import run_coverage
from runtime_graphs import write_graph


def test_coverage_report_compares_model_and_truth(tmp_path):
    graph = write_graph(tmp_path / "m.onnx", "ratio", tile=32, n=3, max_batch=4)
    r = run_coverage(graph, specimens=2, size=192, fov=96, fovs=4, seed=1)
    assert len(r["per_class"]) == 3 and r["specimens"] == 2 and r["fovs_per_specimen"] == 4
    for v in r["per_class"].values():
        assert 0.0 <= v["coverage"] <= 1.0 and 0.0 <= v["truth_coverage"] <= 1.0
        assert v["truth_mean_se"] > 0  # real sub-fields of a real micrograph differ
    # the truth's own labels through the same interval: what the sub-field error bar alone achieves
    assert r["truth_coverage"] >= 0.5
