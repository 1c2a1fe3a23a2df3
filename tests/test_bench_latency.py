"""`phaseedge-bench latency` smoke tests: tiny model, tiny frames, no timing asserted."""

from __future__ import annotations

import json

import pytest
from phaseedge.bench import cli, latency
from phaseedge.bench.models import resolve

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
from tests.test_bench_floor import export_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("lat") / "tiny.onnx")[1]


def test_latency_json_has_the_promised_keys(tiny, tmp_path, capsys):
    rc = cli.main(["latency", "--model", str(tiny), "--frame", "80x60", "--runs", "3", "--warmup", "1",
                   "--backend", "onnxruntime", "--json", "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("p50_ms", "p90_ms", "p99_ms", "megapixels_per_s", "pipeline_efficiency", "peak_host_mb", "stages"):
        assert report[key] is not None, key
    assert report["p50_ms"] <= report["p90_ms"] <= report["p99_ms"]
    assert 0 < report["pipeline_efficiency"] <= 1
    assert {"prepare", "infer", "stitch"} <= set(report["stages"])
    (variant,) = report["variants"]
    assert variant["runs"] == 3 and variant["floor_ms"] > 0
    assert report["megapixels_per_s"] == pytest.approx(80 * 60 / 1e6 / (report["p50_ms"] / 1e3))
    assert report["versions"]["onnxruntime"]
    assert json.loads((tmp_path / "latency.json").read_text())["p50_ms"] == report["p50_ms"]
    assert (tmp_path / "latency.png").read_bytes()[:4] == b"\x89PNG"


def test_all_skips_what_this_machine_lacks_with_a_reason(tiny):
    from phaseedge.gpu import has_cuda_gpu

    variants = {v.key: v for v in latency.plan_variants("all", resolve(tiny), None, None)}
    assert set(variants) == set(latency.ALL_VARIANTS)
    assert variants["ort-cpu"].skip is None
    assert "no engine given" in variants["tensorrt"].skip
    if not has_cuda_gpu():
        assert "GPU" in variants["ort-cuda"].skip and "GPU" in variants["ort-tensorrt"].skip


def test_bad_arguments_are_refused(tiny, capsys):
    assert cli.main(["latency", "--model", str(tiny), "--runs", "0"]) == 2
    assert "--runs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["latency", "--model", str(tiny), "--frame", "big"])


def test_random_weight_baseline_must_match_the_graph(tiny):
    import dataclasses

    from phaseedge.bench.models import torch_model

    spec = dataclasses.replace(resolve(tiny), architecture="unet-tiny")
    module, origin = torch_model(spec)
    assert "random weights" in origin and module.tile == spec.tile
    with pytest.raises(ValueError, match="not the same network"):
        torch_model(spec, expect_flops=1)


def test_tiling_variants_report_their_own_tiles_and_dice(tmp_path, capsys):
    from runtime_graphs import write_graph

    g = write_graph(tmp_path / "g.onnx", "ratio", tile=32, n=3, multiple=8, max_tile=256, halo=5)
    assert cli.main(["latency", "--model", str(g), "--backend", "tiling", "--frame", "200x120", "--runs", "1",
                     "--warmup", "0", "--dice", "--json"]) == 0
    v = {r["variant"]: r for r in json.loads(capsys.readouterr().out)["variants"]}
    old, big = v["ort-train-tile"], v["ort-big"]
    assert (old["tile"], old["blend"], big["blend"]) == (32, "gaussian", "center")
    assert big["tile"] > 32 and big["overlap_factor"] < old["overlap_factor"]
    assert big["tiles_per_frame"] * big["tile"] ** 2 == pytest.approx(big["overlap_factor"] * 200 * 120)
    assert "no INT8 graph" in v["ort-big-int8"]["skipped"]
    assert 0 <= big["dice"]["macro_dice"] <= 1 and big["dice"]["seed"] == latency.DICE_SEED
    assert old["speedup_vs_baseline"] == 1.0
