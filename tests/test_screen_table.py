"""scripts/screen_table.py: the kept epoch is the one the fit's log records, and the table's
means are over the seeds a variant has."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "screen_table.py"


def _record(matrix: float, austenite: float, ma: float, defect: float) -> dict:
    dice = {"matrix": matrix, "austenite": austenite, "martensite_austenite": ma, "defect": defect,
            "precipitate": 0.0}
    return {"val": {"per_class_dice": dice}}


def _write(run: Path, records: list[dict], best: list[int] | None = None) -> None:
    """A fit's log.jsonl: epochs from 1, each with the best epoch so far (``best``; default: itself)."""
    run.mkdir(parents=True)
    best = best or list(range(1, len(records) + 1))
    lines = [json.dumps({"epoch": e, "best_epoch": b, **r}) + "\n" for e, (r, b) in enumerate(zip(records, best), 1)]
    (run / "log.jsonl").write_text("".join(lines))


def _table(screen: Path) -> dict[str, list[str]]:
    out = subprocess.run([sys.executable, str(SCRIPT), str(screen)], capture_output=True, text=True, check=True)
    rows = [line.strip("|").split("|") for line in out.stdout.splitlines()[2:]]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_kept_epoch_is_the_fits_not_the_best_main3(tmp_path: Path) -> None:
    # epoch 1 has the better main-3, epoch 2 the better macro-4 (the defect class): fit kept epoch 2
    _write(tmp_path / "a-s0", [_record(0.9, 0.9, 0.9, 0.0), _record(0.8, 0.8, 0.8, 0.9), _record(0.7, 0.7, 0.7, 0.0)],
           best=[1, 2, 2])
    _write(tmp_path / "a-s1", [_record(0.6, 0.6, 0.6, 0.6)])
    _write(tmp_path / "b-s0", [_record(0.85, 0.85, 0.85, 0.85)])
    table = _table(tmp_path)
    seeds, per_seed, mean, pair, last, epochs = table["a"]
    assert (seeds, per_seed, epochs) == ("0, 1", "80.0 / 60.0", "1, 3")
    assert (mean, pair, last) == ("70.0", "70.0", "65.0")  # last epochs: 70 and 60
    assert table["b"][3] == "—"  # one seed: no mean of seeds 0, 1
    assert list(table) == ["b", "a"]  # best mean first


def test_bad_run_names_and_empty_logs_are_refused(tmp_path: Path) -> None:
    _write(tmp_path / "nameless", [_record(0.5, 0.5, 0.5, 0.5)])
    with pytest.raises(subprocess.CalledProcessError) as err:
        _table(tmp_path)
    assert "expected VARIANT-sSEED" in err.value.stderr
    empty = tmp_path / "e"
    _write(empty / "x-s0", [])
    with pytest.raises(subprocess.CalledProcessError) as err:
        _table(empty)
    assert "holds no epoch" in err.value.stderr
