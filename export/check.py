"""Parity checks between an fp32 ONNX graph, its fp16 conversion and a TensorRT engine.

Polygraphy runs every runner on the same inputs (random tiles in [0, 1] and
ratios that sum to 1, as the runtime feeds them) and compares each runner with the
first (ONNX Runtime fp32 on CPU) with per-output tolerances. No torch here.

Engines: a ``tensorrt`` engine runs in Polygraphy's own ``TrtRunner``; Polygraphy
does not know the ``tensorrt_rtx`` module, so a TensorRT-RTX engine runs through
phaseedge's runtime backend wrapped as a Polygraphy runner. Either needs a GPU:
without one, or without the module, the engine is skipped and the reason printed.
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phaseedge import gpu, names
from phaseedge import sidecar as sidecar_mod

DEFAULT_ATOL = 2e-2  # on probabilities: fp16 compute vs fp32 (random-weight models have near-ties)
DEFAULT_RTOL = 0.0


class CheckFailed(RuntimeError):
    """Two versions of a model disagree beyond the tolerance."""


def random_inputs(batch: int, tile: int, n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Uniform [0,1] float16 tiles and ratios that sum to 1 (what the runtime feeds)."""
    rng = np.random.default_rng(seed)
    image = rng.random((batch, 1, tile, tile), dtype=np.float32).astype(np.float16)
    ratio = rng.dirichlet(np.ones(n_classes), size=batch).astype(np.float32)
    return image, ratio


def ort_session(path: str | Path):
    """CPU session without graph optimisations, so we test the graph as written."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Agreement:
    max_abs_err: float
    argmax_agreement: float

    def __str__(self) -> str:
        return f"max |dprobs| {self.max_abs_err:.2e}, argmax agreement {self.argmax_agreement:.4%}"


def agreement(ref: np.ndarray, got: np.ndarray) -> Agreement:
    diff = np.abs(ref.astype(np.float32) - got.astype(np.float32))
    return Agreement(float(diff.max()), float((ref.argmax(1) == got.argmax(1)).mean()))


@dataclass
class CheckReport:
    passed: bool
    compared: dict[str, Agreement] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"  {k} vs onnxrt-fp32: {v}" for k, v in self.compared.items()]
        lines += [f"  {k}: skipped ({why})" for k, why in self.skipped.items()]
        return "\n".join([f"check {'PASSED' if self.passed else 'FAILED'}", *lines])


def _backend_runner(engine: Path):
    """A Polygraphy runner around phaseedge's TensorRT backend (for TensorRT-RTX engines)."""
    from polygraphy.backend.base import BaseRunner

    from phaseedge.backends.tensorrt import TensorRTBackend

    class BackendRunner(BaseRunner):
        def __init__(self) -> None:
            super().__init__(name=f"{engine.name} (phaseedge runtime)", prefix="phaseedge-runner")
            self.backend: TensorRTBackend | None = None

        def activate_impl(self) -> None:
            self.backend = TensorRTBackend(engine).__enter__()

        def get_input_metadata_impl(self):
            from polygraphy.common import TensorMetadata

            sc = self.backend.sidecar
            meta = TensorMetadata()
            for t in sc.inputs:
                meta.add(t.name, np.dtype(t.dtype), [-1 if d == sidecar_mod.BATCH_DIM else d for d in t.shape])
            return meta

        def infer_impl(self, feed_dict):
            probs = self.backend.infer(feed_dict[names.IMAGE], feed_dict[names.RATIO])
            return OrderedDict([(names.PROBS, np.array(probs, copy=True))])

        def deactivate_impl(self) -> None:
            self.backend.close()
            self.backend = None

    return BackendRunner()


def engine_runner(engine: Path) -> tuple[object | None, str | None]:
    """(runner, None) or (None, why it cannot run here). Never touches TensorRT without a GPU."""
    sc = sidecar_mod.load(engine)
    target = sc.engine.target
    module = sidecar_mod.TARGET_MODULES[target]
    if not gpu.has_cuda_gpu():
        return None, "no NVIDIA GPU on this machine: engines only run on a GPU"
    if importlib.util.find_spec(module) is None:
        return None, f"the {module} module is not installed"
    if target == "tensorrt":
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        return TrtRunner(EngineFromBytes(BytesFromPath(str(engine))), name=f"{engine.name} (TrtRunner)"), None
    if importlib.util.find_spec("cuda") is None:
        return None, "cuda-python is not installed (phaseedge's TensorRT-RTX runner needs it)"
    return _backend_runner(engine), None


def run_check(
    onnx_path: str | Path,
    *,
    fp16: str | Path | None = None,
    engine: str | Path | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    batches: tuple[int, ...] = (1, 3),
    verbose: bool = False,
    log=print,
) -> CheckReport:
    """Compare the fp32 graph (reference) with the fp16 graph and/or the engine."""
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.INFO if verbose else G_LOGGER.WARNING

    onnx_path = Path(onnx_path)
    ref = sidecar_mod.load(onnx_path)
    runners = [OnnxrtRunner(lambda p=onnx_path: ort_session(p), name="onnxrt-fp32")]
    report = CheckReport(passed=True)
    for path in (fp16,):
        if path is not None:
            sc = sidecar_mod.load(path)
            _same_model(ref, sc, Path(path))
            runners.append(OnnxrtRunner(lambda p=Path(path): ort_session(p), name=f"onnxrt-{sc.precision}"))
    if engine is not None:
        engine = Path(engine)
        _same_model(ref, sidecar_mod.load(engine), engine)
        runner, why = engine_runner(engine)
        if runner is None:
            report.skipped[engine.name] = why
        else:
            runners.append(runner)
            lo, _, hi = sidecar_mod.read(engine).batch
            batches = tuple(min(max(b, lo), hi) for b in batches)
    if len(runners) == 1:
        log(str(report))
        return report

    feeds = [dict(zip((names.IMAGE, names.RATIO), random_inputs(b, ref.tile, ref.n_classes, seed=i), strict=True))
             for i, b in enumerate(batches)]
    results = Comparator.run(runners, data_loader=feeds)
    compare = _simple_compare(atol={names.PROBS: atol}, rtol={names.PROBS: rtol})
    report.passed = bool(Comparator.compare_accuracy(results, compare_func=compare))
    pairs = list(results.items())
    ref_runs = pairs[0][1]
    for name, runs in pairs[1:]:
        worst = [agreement(np.asarray(a[names.PROBS]), np.asarray(b[names.PROBS]))
                 for a, b in zip(ref_runs, runs, strict=True)]
        report.compared[name] = Agreement(max(w.max_abs_err for w in worst), min(w.argmax_agreement for w in worst))
    log(str(report))
    return report


def _simple_compare(**kw):
    """Polygraphy 0.53 deprecates CompareFunc.simple for SimpleCompareFunc; older releases lack the latter."""
    try:
        from polygraphy.comparator import SimpleCompareFunc
    except ImportError:
        from polygraphy.comparator import CompareFunc

        return CompareFunc.simple(**kw)
    return SimpleCompareFunc(**kw)


def _same_model(ref: sidecar_mod.Sidecar, other: sidecar_mod.Sidecar, path: Path) -> None:
    """Comparing graphs of two different models would fail for the wrong reason."""
    for key in ("architecture", "plm", "class_names", "tile"):
        if getattr(ref, key) != getattr(other, key):
            raise ValueError(f"{path.name} is not the same model as the reference: {key} "
                             f"{getattr(other, key)!r} != {getattr(ref, key)!r}")
