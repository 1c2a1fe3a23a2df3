"""`phaseedge-train info` parameter counts against the paper's Table 6 (within 5%)."""

from __future__ import annotations

import json

import pytest
from phaseedge.train.cli import main

# Paper Table 6 (millions): LoRA-SAM, LoRA-SAM + PLM, PLM alone (ViT-B, rank 512).
TABLE6 = {"lora_sam": (112.0, 22.3), "lora_sam_plm": (113.2, 23.5), "plm": 1.2}


def _info(capsys, *args: str) -> dict:
    assert main(["info", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _close(count: int, millions: float) -> bool:
    return abs(count / 1e6 - millions) <= 0.05 * millions


def test_sam_vit_b_with_plm_matches_table6(capsys):
    report = _info(capsys, "--model", "sam-vit-b", "--n-classes", "3", "--lora-rank", "512", "--tile", "1024")
    total, trainable = TABLE6["lora_sam_plm"]
    assert _close(report["total"], total), report["total"]
    assert _close(report["trainable"], trainable), report["trainable"]
    assert _close(report["plm"], TABLE6["plm"]), report["plm"]
    modules = report["modules"]
    assert modules["image_encoder"]["trainable"] == 0
    assert modules["lora"]["total"] == 12 * 2 * 2 * 512 * 768  # q and v, A and B, 12 blocks
    assert sum(m["total"] for m in modules.values()) == report["total"]


def test_sam_vit_b_without_plm_matches_table6(capsys):
    report = _info(capsys, "--model", "sam-vit-b", "--lora-rank", "512", "--tile", "1024", "--no-plm")
    total, trainable = TABLE6["lora_sam"]
    assert _close(report["total"], total), report["total"]
    assert _close(report["trainable"], trainable), report["trainable"]
    assert report["plm"] == 0 and "plm" not in report["modules"]


def test_plm_count_is_independent_of_tile(capsys):
    a = _info(capsys, "--model", "sam-vit-b", "--tile", "512")
    b = _info(capsys, "--model", "sam-vit-b", "--tile", "1024")
    assert a["plm"] == b["plm"] and a["trainable"] == b["trainable"]
    assert a["total"] < b["total"]  # only pos_embed and the global rel_pos tables shrink


def test_info_rejects_bad_overrides(capsys):
    assert main(["info", "--model", "unet", "--lora-rank", "8"]) == 1
    assert "does not take lora_rank" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert "phaseedge" in capsys.readouterr().out
