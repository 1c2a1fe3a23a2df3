"""`phaseedge-train import` on each mask format it claims, and its refusals."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import tifffile

pytest.importorskip("torch")

from phaseedge.train.cli import main
from phaseedge.train.data import load_folder, read_split

NAMES = ["ferrite", "martensite", "bainite"]


def _truth(seed: int) -> np.ndarray:
    m = np.zeros((24, 30), np.uint8)
    m[:, 10:20] = 1
    m[:, 20:] = 2
    return np.roll(m, seed, axis=1)


def _images(root, n=5):
    (root / "img").mkdir()
    (root / "lab").mkdir()
    for i in range(n):
        cv2.imwrite(str(root / "img" / f"f{i}.png"), (np.random.default_rng(i).random((24, 30)) * 255).astype(np.uint8))
    return root / "img", root / "lab"


def _run(img, lab, out, *extra):
    return main(["import", "--images", str(img), "--labels", str(lab), "--out", str(out), *extra])


@pytest.mark.parametrize("fmt", ["integer", "ilastik", "colour"])
def test_each_format_round_trips_to_a_labelled_folder(tmp_path, fmt, capsys):
    img, lab = _images(tmp_path)
    colours = {"ferrite": [255, 0, 0], "martensite": [0, 255, 0], "bainite": [0, 0, 255]}
    for i in range(5):
        t = _truth(i)
        if fmt == "integer":
            tifffile.imwrite(lab / f"f{i}.tif", t.astype(np.uint16))
        elif fmt == "ilastik":
            cv2.imwrite(str(lab / f"f{i}.png"), t + 1)
        else:
            rgb = np.array(list(colours.values()), np.uint8)[t]
            cv2.imwrite(str(lab / f"f{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    extra = ["--classes", str(tmp_path / "c.json")] if fmt == "colour" else ["--class-names", ",".join(NAMES)]
    (tmp_path / "c.json").write_text(json.dumps(colours))
    out = tmp_path / "out"
    assert _run(img, lab, out, "--format", fmt, *extra) == 0
    assert json.loads((out / "classes.json").read_text()) == NAMES
    train, val = read_split(out / "train.txt"), read_split(out / "val.txt")
    assert sorted(train + val) == [f"f{i}" for i in range(5)] and len(val) == 1
    for item in load_folder(out, 3, train + val):
        assert np.array_equal(item.mask, _truth(int(item.name[1:])))


def test_stray_colours_and_bad_labels_are_named(tmp_path, capsys):
    img, lab = _images(tmp_path, 1)
    rgb = np.zeros((24, 30, 3), np.uint8)
    rgb[0, 0] = (250, 3, 3)  # one JPEG-like stray pixel
    cv2.imwrite(str(lab / "f0.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (tmp_path / "c.json").write_text(json.dumps({"ferrite": [0, 0, 0], "martensite": [255, 0, 0]}))
    assert _run(img, lab, tmp_path / "o", "--format", "colour", "--classes", str(tmp_path / "c.json")) == 1
    assert "(250, 3, 3) x1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written
    (tmp_path / "c.json").write_text(json.dumps({"ferrite": [0, 0, 0], "martensite": [0, 0, 0]}))
    assert _run(img, lab, tmp_path / "o", "--format", "colour", "--classes", str(tmp_path / "c.json")) == 1
    assert "share the colour" in capsys.readouterr().err
    cv2.imwrite(str(lab / "f0.png"), np.zeros((24, 30), np.uint8))
    assert _run(img, lab, tmp_path / "o", "--format", "ilastik", "--class-names", "a,b") == 1
    assert "start at 1" in capsys.readouterr().err
    cv2.imwrite(str(lab / "f0.png"), np.full((24, 30), 7, np.uint8))
    assert _run(img, lab, tmp_path / "o", "--format", "integer", "--class-names", "a,b") == 1
    assert "label 7 outside 0..1" in capsys.readouterr().err
