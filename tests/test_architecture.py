"""Import rules between the stages (DEVELOPERS.md): data flows train/ -> export/ -> phaseedge/,
and the runtime an acquisition PC installs needs neither torch nor Qt nor the other stages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "phaseedge"
#: what the runtime must not import at module level (lazily only through the doors below)
HEAVY = ("torch", "torchvision", "PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy", "napari", "vispy", "ray",
         "tritonclient", "tensorrt", "tensorrt_rtx", "phaseedge.train", "phaseedge.export", "phaseedge.bench")
#: the documented lazy doors out of the runtime: (file, imported module)
DOORS = {("backends/torch.py", "phaseedge.train.checkpoint")}
#: what a backend may import from phaseedge: the core, never the orchestration above it
BACKEND_FORBIDDEN = ("phaseedge.segmenter", "phaseedge.strategies", "phaseedge.stitch", "phaseedge.jobs",
                     "phaseedge.cli", "phaseedge.batch", "phaseedge.adapters", "phaseedge.demo", "phaseedge.napari")


def _runtime_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "napari" not in p.relative_to(ROOT).parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at module level?) for every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    guarded = {id(c) for n in tree.body if isinstance(n, ast.Try) for c in ast.walk(n)}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            out.append((name, id(node) in top or id(node) in guarded))
    return out


def _is(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_runtime_modules_import_no_heavy_stage_at_module_level():
    bad = [f"{p.relative_to(ROOT)}: {m}" for p in _runtime_files() for m, top in _imports(p)
           if top and _is(m, HEAVY) and p.relative_to(ROOT).parts[:1] != ("backends",)]
    # backends may import their own engine library at module level: the registry imports them lazily
    backend_bad = [f"{p.relative_to(ROOT)}: {m}" for p in (ROOT / "backends").glob("*.py") for m, top in _imports(p)
                   if top and _is(m, ("phaseedge.train", "phaseedge.export", "phaseedge.bench", "napari", "qtpy"))]
    assert not bad + backend_bad, bad + backend_bad


def test_lazy_imports_of_other_stages_are_only_the_documented_doors():
    found = {(str(p.relative_to(ROOT)), m) for p in _runtime_files() for m, top in _imports(p)
             if not top and _is(m, ("phaseedge.train", "phaseedge.export", "phaseedge.bench"))}
    assert found == DOORS


def test_backends_import_only_the_runtime_core():
    bad = [f"{p.name}: {m}" for p in (ROOT / "backends").glob("*.py") for m, _ in _imports(p)
           if _is(m, BACKEND_FORBIDDEN)]
    assert not bad, bad


def test_importing_every_runtime_module_loads_no_heavy_library():
    """The real check behind the static ones: import all of it in a fresh interpreter."""
    skip = {"phaseedge.backends.torch", "phaseedge.backends.tensorrt", "phaseedge.backends.triton"}
    names = [".".join(("phaseedge", *p.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
             for p in _runtime_files()]
    names = [n for n in names if n not in skip]
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n    importlib.import_module(name)\n"
            f"print(','.join(sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in {HEAVY!r}))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing the runtime loaded {out.stdout.strip()}"
