"""Exit 0 if a `phaseedge-train fit` output folder holds a finished run, else 1.

scripts/run_metaldam.sh calls it to keep finished fits and resume interrupted ones, so a rerun
after a crash or on a machine that already trained costs no fit twice. A run is finished when
its last log.jsonl record is a complete epoch equal to the config's epoch count and best/ exists.

usage: python scripts/fit_complete.py RUN_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fit_complete(run: Path) -> bool:
    """True when every epoch of the run's config is logged complete and its best/ checkpoint exists."""
    try:
        epochs = json.loads((run / "config.json").read_text())["epochs"]
        lines = (run / "log.jsonl").read_text().splitlines()
        last = json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return last.get("epoch") == epochs and bool(last.get("complete")) and (run / "best").is_dir()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    sys.exit(0 if fit_complete(Path(sys.argv[1])) else 1)
