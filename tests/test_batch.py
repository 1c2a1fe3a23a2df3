"""`phaseedge batch`: an archive folder, serial and on a real local Ray instance, resumable."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from runtime_graphs import write_graph

from phaseedge import synth
from phaseedge.batch import Settings, run_batch
from phaseedge.cli import main

CLASSES = ["ferrite", "martensite", "bainite"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A tiny model and an archive: frames in two folders (one name twice), one broken file."""
    root = tmp_path_factory.mktemp("archive")
    model = write_graph(root / "model.onnx", "ratio", tile=32, n=3, class_names=CLASSES)
    frames = root / "frames"
    (frames / "day2").mkdir(parents=True)
    for k, (rel, shape) in enumerate([("a.tif", (70, 90)), ("b.png", (64, 64)), ("day2/a.tif", (96, 50)),
                                      ("day2/c.tiff", (40, 120))]):
        image = synth.micrograph(shape, seed=k, dtype=np.uint8 if rel.endswith(".png") else np.uint16)[0]
        if rel.endswith(".png"):
            cv2.imwrite(str(frames / rel), image)
        else:
            tifffile.imwrite(frames / rel, image)
    (frames / "day2" / "broken.tif").write_bytes(b"not a tiff")
    (frames / "notes.txt").write_text("not an image")
    return model, frames


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _without(rows: list[dict[str, str]], key: str = "seconds") -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != key} for r in rows]


def _same_outputs(a: Path, b: Path) -> None:
    """Every file of two runs identical, except timings (JSON) and seconds (CSV)."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        if rel.suffix == ".json":
            x, y = (json.loads((d / rel).read_text()) for d in (a, b))
            x.pop("timings"), y.pop("timings")
            assert x == y, rel
        elif rel.suffix == ".csv":
            assert _without(_rows(a / rel)) == _without(_rows(b / rel)), rel
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


@pytest.fixture(scope="module")
def serial(archive, tmp_path_factory):
    model, frames = archive
    out = tmp_path_factory.mktemp("serial")
    assert main(["batch", str(frames), "--model", str(model), "--out", str(out), "--ratio", "0.5,0.3,0.2"]) == 1
    return out


def test_serial_run_writes_what_segment_writes(archive, serial, tmp_path):
    model, frames = archive
    table = _rows(serial / "fractions.csv")
    assert [r["image"] for r in table] == [str(frames / p) for p in ("a.tif", "b.png", "day2/a.tif", "day2/c.tiff")]
    assert all(r["error"] == "" and r["model"] == str(model) for r in table)
    errors = _rows(serial / "errors.csv")
    assert [r["image"] for r in errors] == [str(frames / "day2" / "broken.tif")] and errors[0]["error"]
    for stem in ("a", "b"):
        assert (serial / f"{stem}_labels.png").is_file() and (serial / f"{stem}_fractions.csv").is_file()
    assert (serial / "day2" / "a_labels.tif").is_file() and not (serial / "a_overlay.png").exists()
    # the same frame through `phaseedge segment`: the same files, byte for byte
    seg_out = tmp_path / "segment"
    assert main(["segment", str(frames / "day2" / "a.tif"), "--model", str(model), "--out", str(seg_out),
                 "--ratio", "0.5,0.3,0.2", "--no-overlay"]) == 0
    for name in ("a_labels.png", "a_labels.tif"):
        assert (seg_out / name).read_bytes() == (serial / "day2" / name).read_bytes()
    x, y = (json.loads((d / "a.json").read_text()) for d in (seg_out, serial / "day2"))
    x.pop("timings"), y.pop("timings")
    assert x == y
    assert _without(_rows(seg_out / "fractions.csv")) == _without([table[2]])


def test_rerun_resumes_and_a_new_model_reprocesses(archive, serial, tmp_path):
    model, frames = archive
    out = tmp_path / "out"
    first = run_batch(frames, out, Settings(model=str(model), ratio=[0.5, 0.3, 0.2]))
    assert (first.frames, first.skipped, first.segmented, first.failed) == (5, 0, 4, 1)
    (out / "b_labels.tif").unlink()  # as if the run had stopped while writing b
    kept = (out / "a_labels.png").stat().st_mtime_ns
    again = run_batch(frames, out, Settings(model=str(model), ratio=[0.5, 0.3, 0.2]))
    assert (again.skipped, again.segmented, again.failed) == (3, 1, 1)  # b redone, the broken file retried
    assert (out / "a_labels.png").stat().st_mtime_ns == kept
    _same_outputs(serial, out)

    other = write_graph(tmp_path / "other.onnx", "ratio", tile=32, n=3, class_names=CLASSES)
    third = run_batch(frames, out, Settings(model=str(other), ratio=[0.5, 0.3, 0.2]))
    assert (third.skipped, third.segmented) == (0, 4)
    assert {r["model"] for r in _rows(out / "fractions.csv")} == {str(other)}


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_pipeline_gives_the_serial_outputs(archive, serial, local_ray, tmp_path):
    model, frames = archive
    out = tmp_path / "ray"
    report = run_batch(frames, out, Settings(model=str(model), ratio=[0.5, 0.3, 0.2]), ray=True, workers=2)
    assert (report.frames, report.segmented, report.failed) == (5, 4, 1)
    _same_outputs(serial, out)
    again = run_batch(frames, out, Settings(model=str(model), ratio=[0.5, 0.3, 0.2]), ray=True, workers=2)
    assert (again.skipped, again.segmented, again.failed) == (4, 0, 1)
