"""The runtime imports without torch (acquisition PCs run on ONNX Runtime / TensorRT only)."""

from __future__ import annotations

import subprocess
import sys

MODULES = [
    "phaseedge",
    "phaseedge.synth",
    "phaseedge.ratio",
    "phaseedge.metrics",
    "phaseedge.normalize",
    "phaseedge.io",
]


def test_runtime_imports_without_torch():
    code = (
        "import importlib, sys\n"
        f"for name in {MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = sorted(m for m in ('torch', 'scipy', 'torchvision') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"runtime imported {out.stdout.strip()}"
