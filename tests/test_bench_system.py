"""Benchmark bookkeeping: percentiles, tables, machine info and memory probes."""

from __future__ import annotations

import numpy as np
import pytest
from phaseedge.bench import stats, system

from phaseedge.gpu import has_cuda_gpu


def test_percentiles_in_ms():
    s = stats.summarize_ms([0.010, 0.020, 0.030, 0.040, 0.100])
    assert s["p50_ms"] == pytest.approx(30.0)
    assert s["p90_ms"] == pytest.approx(np.percentile([10, 20, 30, 40, 100], 90))
    assert s["min_ms"] == pytest.approx(10.0) and s["max_ms"] == pytest.approx(100.0) and s["runs"] == 5
    for bad in ([], [0.1, float("nan")], [-1.0]):
        with pytest.raises(ValueError):
            stats.summarize_ms(bad)


def test_stage_medians_tolerate_missing_stages():
    m = stats.median_stages_ms([{"infer": 0.010, "read": 0.002}, {"infer": 0.030}, {"infer": 0.020}])
    assert m == pytest.approx({"infer": 20.0, "read": 2.0})


def test_table_is_markdown():
    t = stats.format_table([["a", 1.23456, None], ["bb", 123.4, 7]], ["name", "x", "y"]).splitlines()
    assert t[0].startswith("| name") and set(t[1]) <= {"|", "-"}
    assert "1.23" in t[2] and "—" in t[2] and "123.4" in t[3]


def test_peak_host_memory_sees_an_allocation():
    system.reset_peak_host_memory()
    before = system.peak_host_mb()
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched
    assert system.peak_host_mb() >= before + 60
    del block


def test_machine_info_and_versions():
    info = system.machine_info()
    assert "cores" in info["cpu"]
    versions = system.library_versions()
    assert versions["numpy"] == np.__version__ and "python" in versions


@pytest.mark.skipif(has_cuda_gpu(), reason="checks the no-GPU path")
def test_gpu_sampler_without_a_gpu_reports_nothing():
    with system.GpuMemorySampler() as sampler:
        pass
    assert sampler.peak_mb is None
