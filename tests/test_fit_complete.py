"""scripts/fit_complete.py decides which fits scripts/run_metaldam.sh keeps on a rerun: a wrong
"complete" would silently report an unfinished model, a wrong "incomplete" would retrain or crash
on a finished one (fit refuses an --out that holds a run unless it resumes)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

_script = Path(__file__).resolve().parents[1] / "scripts" / "fit_complete.py"
_spec = importlib.util.spec_from_file_location("fit_complete", _script)
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
fit_complete = _mod.fit_complete


def _run(tmp: Path, epochs: int, records: list[dict], best: bool = True) -> Path:
    tmp.mkdir()
    (tmp / "config.json").write_text(json.dumps({"epochs": epochs}))
    (tmp / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if best:
        (tmp / "best").mkdir()
    return tmp


def test_a_run_with_every_epoch_logged_is_complete(tmp_path):
    run = _run(tmp_path / "r", 2, [{"epoch": 1, "complete": True}, {"epoch": 2, "complete": True}])
    assert fit_complete(run)
    assert subprocess.run([sys.executable, str(_script), str(run)], check=False).returncode == 0


def test_an_interrupted_run_is_not(tmp_path):
    stopped_early = _run(tmp_path / "a", 3, [{"epoch": 1, "complete": True}, {"epoch": 2, "complete": True}])
    cut_mid_epoch = _run(tmp_path / "b", 2, [{"epoch": 1, "complete": True}, {"epoch": 2, "complete": False}])
    no_best = _run(tmp_path / "c", 1, [{"epoch": 1, "complete": True}], best=False)
    no_epochs_yet = _run(tmp_path / "d", 1, [])
    for run in (stopped_early, cut_mid_epoch, no_best, no_epochs_yet):
        assert not fit_complete(run), run.name
    assert subprocess.run([sys.executable, str(_script), str(stopped_early)], check=False).returncode == 1


def test_a_missing_or_broken_run_is_not(tmp_path):
    assert not fit_complete(tmp_path / "never-started")
    broken = _run(tmp_path / "e", 1, [{"epoch": 1, "complete": True}])
    (broken / "log.jsonl").write_text('{"epoch": 1, "comp')  # the process died mid-line
    assert not fit_complete(broken)
