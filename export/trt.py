"""ONNX graph -> strongly typed TensorRT or TensorRT-RTX engine, with its sidecar.

One code path serves both targets: ``tensorrt`` (TensorRT 10/11, data-centre and
Jetson GPUs) and ``tensorrt_rtx`` (TensorRT for RTX, workstation GPUs). Their Python
APIs share the builder, network, parser, optimisation-profile and progress-monitor
calls used here; the module is a parameter. One difference matters: TensorRT-RTX
does not time kernels at build time (it compiles them for the GPU when the engine
is loaded, and keeps them in a *runtime* cache), so its timing-cache calls are
deprecated no-ops and ``--timing-cache`` only applies to ``--target tensorrt``.

Precision comes from the graph (``export/fp16.py``): TensorRT 11 removed
``BuilderFlag.FP16`` and weak typing, TensorRT-RTX never had them, and on TensorRT 10
we ask for ``STRONGLY_TYPED`` explicitly so all three behave the same.

The TensorRT builder needs a GPU; the TensorRT-RTX builder does not (ahead-of-time
build, compiled for the GPU at load time). Without a GPU we never create a Runtime
(it crashes the interpreter); the precision report then reads the parsed network.
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from phaseedge import gpu, names
from phaseedge import sidecar as sidecar_mod
from phaseedge.sidecar import TARGET_MODULES

HEAVY_LAYERS = ("CONVOLUTION", "DECONVOLUTION", "MATRIX_MULTIPLY", "EINSUM")
MIN_FP16_HEAVY_SHARE = 0.9  # an fp16 build must run at least this share of Conv/MatMul/Einsum layers in fp16


class BuildError(RuntimeError):
    """Parsing or building failed, or the engine is not in the precision the graph asks for."""


def import_target(target: str) -> ModuleType:
    if target not in TARGET_MODULES:
        raise ValueError(f"target must be one of {sorted(TARGET_MODULES)}, got {target!r}")
    try:
        return importlib.import_module(TARGET_MODULES[target])
    except ImportError as e:
        hint = ("pip install tensorrt-rtx" if target == "rtx"
                else "install TensorRT from NVIDIA's package index (pip install tensorrt; needs network access "
                     "to pypi.nvidia.com) or use --target rtx")
        raise BuildError(f"Python module {TARGET_MODULES[target]!r} for --target {target} is not installed: {hint}") from e


@dataclass(frozen=True)
class PrecisionReport:
    """Layer output types of the built engine (GPU) or the parsed network (no GPU)."""

    source: str  # "engine inspector" | "parsed network"
    by_dtype: dict[str, int]
    heavy_by_dtype: dict[str, int]

    @property
    def heavy_fp16_share(self) -> float:
        total = sum(self.heavy_by_dtype.values())
        return self.heavy_by_dtype.get("fp16", 0) / total if total else 0.0

    @property
    def fp16_share(self) -> float:
        floats = self.by_dtype.get("fp16", 0) + self.by_dtype.get("fp32", 0)
        return self.by_dtype.get("fp16", 0) / floats if floats else 0.0

    def __str__(self) -> str:
        def fmt(c: dict[str, int]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"

        return (f"layer precisions ({self.source}): {fmt(self.by_dtype)}; fp16 share of float layers "
                f"{self.fp16_share:.1%}; Conv/MatMul/Einsum: {fmt(self.heavy_by_dtype)}")

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "by_dtype": self.by_dtype, "heavy_by_dtype": self.heavy_by_dtype}


@dataclass
class BuildResult:
    path: Path
    sidecar: sidecar_mod.Sidecar
    seconds: float
    report: PrecisionReport
    warnings: list[str] = field(default_factory=list)


def mostly_fp16(report: PrecisionReport) -> bool:
    """Conv/MatMul/Einsum layers carry the cost: at least 90 % of them in fp16. When the
    engine inspector fuses them out of sight (Myelin regions), half the float layers."""
    if sum(report.heavy_by_dtype.values()):
        return report.heavy_fp16_share >= MIN_FP16_HEAVY_SHARE
    return report.fp16_share >= 0.5


def profile_tiles(src: sidecar_mod.Sidecar, tiles: tuple[int, int, int] | None) -> tuple[int, int, int]:
    """The (min, opt, max) tile sides an engine's profile covers; every one must be a size the graph takes."""
    sizes = src.tile_sizes()
    if tiles is None:
        return sizes[0], sizes[0], sizes[-1]
    if len(tiles) != 3 or not tiles[0] <= tiles[1] <= tiles[2] or any(s not in sizes for s in tiles):
        allowed = f"{sizes[0]}..{sizes[-1]} in steps of {sizes.step}" if len(sizes) > 1 else f"only {sizes[0]}"
        raise ValueError(f"tiles must be MIN <= OPT <= MAX, each a size the graph takes ({allowed}), got {tiles}")
    return tiles


def parse_batch(text: str) -> tuple[int, int, int]:
    """``"1:4:8"`` -> (1, 4, 8); ``"8"`` -> (1, 8, 8)."""
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        raise ValueError(f"batch must be MIN:OPT:MAX integers, got {text!r}") from None
    if len(parts) == 1:
        parts = [1, parts[0], parts[0]]
    if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2]:
        raise ValueError(f"batch must be MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, got {text!r}")
    return parts[0], parts[1], parts[2]


def device_info(device: int = 0) -> gpu.DeviceInfo | None:
    """The GPU the build targets (:func:`phaseedge.gpu.device_info`, which the runtime checks
    engines against); None without a driver or GPU. A device past the last GPU, or a failed
    driver call, is a :class:`BuildError`: recording the wrong GPU in the sidecar, or none,
    would be worse."""
    try:
        return gpu.device_info(device)
    except gpu.GpuError as e:
        raise BuildError(str(e)) from e


def _make_logger(trt: ModuleType, verbose: bool):
    """A TensorRT logger that keeps warnings and errors so a failure can quote them."""
    sev = trt.ILogger.Severity
    keep = {sev.INTERNAL_ERROR, sev.ERROR, sev.WARNING}

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, msg) -> None:
            if severity in keep or verbose:
                self.messages.append(f"[{severity.name}] {msg}")
            if verbose:
                print(f"[TensorRT {severity.name}] {msg}", file=sys.stderr)

    return Logger()


def _progress_monitor(trt: ModuleType, stream):
    """A progress line fed by TensorRT's IProgressMonitor (called from builder threads).

    On a terminal one line is redrawn at most 5 times a second; otherwise only
    top-level phases are printed, one per line, so logs stay short.
    """
    tty = bool(getattr(stream, "isatty", lambda: False)())

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()
            self._phases: dict[str, list[int]] = {}
            self._t0 = self._shown = time.perf_counter()

        def _show(self, force: bool = False) -> None:
            now = time.perf_counter()
            if not tty or (not force and now - self._shown < 0.2):
                return
            self._shown = now
            parts = [f"{p} {s}/{n}" for p, (s, n) in list(self._phases.items())[-3:]]
            stream.write(f"\rbuilding [{now - self._t0:5.0f}s] " + " > ".join(parts)[:110].ljust(110))
            stream.flush()

        def phase_start(self, phase_name, parent_phase, num_steps) -> None:
            with self._lock:
                self._phases[phase_name] = [0, num_steps]
                if not tty and parent_phase is None:
                    stream.write(f"building [{time.perf_counter() - self._t0:5.0f}s] {phase_name}\n")
                self._show(force=parent_phase is None)

        def step_complete(self, phase_name, step) -> bool:
            with self._lock:
                if phase_name in self._phases:
                    self._phases[phase_name][0] = step + 1
                    self._show()
            return True

        def phase_finish(self, phase_name) -> None:
            with self._lock:
                self._phases.pop(phase_name, None)
                self._show()

    return Monitor()


class _Ticker:
    """Elapsed-time line for builders without IProgressMonitor."""

    def __init__(self, stream) -> None:
        self._stream, self._stop = stream, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.wait(1.0):
            self._stream.write(f"\rbuilding [{time.perf_counter() - t0:5.0f}s]")
            self._stream.flush()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _dtype_name(trt: ModuleType, dt) -> str:
    table = {trt.float16: "fp16", trt.float32: "fp32"}
    bf16 = getattr(trt, "bfloat16", None)
    if bf16 is not None:
        table[bf16] = "bf16"
    return table.get(dt, str(dt).split(".")[-1].lower())


def network_precisions(trt: ModuleType, network) -> PrecisionReport:
    """Output types of every layer that computes floats (constants and shape layers excluded)."""
    skip = {"CONSTANT", "SHAPE", "ASSERTION"}
    by, heavy = Counter(), Counter()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = layer.type.name
        if kind in skip or layer.num_outputs == 0:
            continue
        dt = _dtype_name(trt, layer.get_output(0).dtype)
        by[dt] += 1
        if kind in HEAVY_LAYERS:
            heavy[dt] += 1
    return PrecisionReport("parsed network", dict(by), dict(heavy))


def engine_precisions(trt: ModuleType, serialized: bytes, logger, batch_opt: int, tile: int, n: int) -> PrecisionReport:
    """Per-layer output formats from the engine inspector (GPU only: needs a Runtime).

    Formats are listed only with an execution context whose input shapes are set,
    and layer parameters only with ProfilingVerbosity.DETAILED (set at build time).
    """
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise BuildError("the engine just built does not deserialise on this GPU")
    context = engine.create_execution_context()
    context.set_input_shape(names.IMAGE, (batch_opt, 1, tile, tile))
    context.set_input_shape(names.RATIO, (batch_opt, n))
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    by, heavy = Counter(), Counter()
    for layer in info.get("Layers", []):
        if not isinstance(layer, dict) or not layer.get("Outputs"):
            continue
        fmt = str(layer["Outputs"][0].get("Format/Datatype", ""))
        dt = "fp16" if ("FP16" in fmt or "Half" in fmt) else "fp32" if ("FP32" in fmt or "Float" in fmt) else "other"
        by[dt] += 1
        kind = str(layer.get("LayerType", "")).upper()
        if any(h.replace("_", "") in kind.replace("_", "") for h in ("CONVOLUTION", "MATRIXMULTIPLY", "GEMM", "EINSUM")):
            heavy[dt] += 1
    return PrecisionReport("engine inspector", dict(by), dict(heavy))


def build_engine(
    onnx_path: str | Path,
    out: str | Path,
    *,
    batch: tuple[int, int, int],
    target: str = "tensorrt",
    workspace_mb: int | None = None,
    timing_cache: str | Path | None = None,
    version_compatible: bool = False,
    hardware_compatible: bool = False,
    verbose: bool = False,
    device: int = 0,
    tiles: tuple[int, int, int] | None = None,
    stream=sys.stderr,
    log=print,
) -> BuildResult:
    """Parse ``onnx_path`` strongly typed, build for ``batch`` (min, opt, max), write engine + sidecar.

    ``device``: the CUDA device the build runs on (made current for this thread) and whose
    name and compute capability the sidecar records. ``tiles``: (min, opt, max) tile sides of the
    optimisation profile for a graph that takes any tile size (default: its training tile, the
    training tile, its largest), each one the graph takes; a fixed-tile graph has its one tile.
    """
    onnx_path, out = Path(onnx_path), Path(out)
    if out.suffix != ".engine":
        raise ValueError(f"output must end in .engine, got {out}")
    if workspace_mb is not None and workspace_mb <= 0:
        raise ValueError(f"--workspace must be a positive number of MB, got {workspace_mb}")
    src = sidecar_mod.load(onnx_path)  # the engine inherits classes, tile, normalisation, precision
    if src.kind != "onnx":
        raise ValueError(f"{onnx_path} is not an ONNX graph")
    dev = device_info(device)
    if target == "tensorrt" and dev is None:
        raise BuildError("the TensorRT builder needs an NVIDIA GPU and none was found; "
                         "use --target rtx (TensorRT-RTX builds without a GPU) or build on the target machine")
    if src.quantization and not src.quantization.get("tensorrt_compatible", False):
        raise BuildError(f"{onnx_path.name} was quantised with {src.quantization.get('activations')} activations for "
                         "ONNX Runtime; TensorRT takes only symmetric int8 Q/DQ (zero point 0): "
                         "phaseedge-export int8 --activations int8")
    if dev is not None and device != 0:  # TensorRT builds on the calling thread's current device (0 by default)
        from phaseedge import cuda_mem

        cuda_mem.set_device(device)
    trt = import_target(target)
    logger = _make_logger(trt, verbose)
    t0 = time.perf_counter()

    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildError(f"{target} could not parse {onnx_path}:\n  " + "\n  ".join(errors or logger.messages))
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    if inputs != {names.IMAGE, names.RATIO}:
        raise BuildError(f"network inputs are {sorted(inputs)}, expected {[names.IMAGE, names.RATIO]}")
    report = network_precisions(trt, network)

    config = builder.create_builder_config()
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    profile = builder.create_optimization_profile()
    n = src.n_classes
    sides = profile_tiles(src, tiles)
    t = sides[0]
    profile.set_shape(names.IMAGE, *[(b, 1, s, s) for b, s in zip(batch, sides)])
    profile.set_shape(names.RATIO, *[(b, n) for b in batch])
    config.add_optimization_profile(profile)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None and target == "rtx":
        log("timing cache: not used by TensorRT-RTX (no build-time timing; the runtime keeps a runtime cache)")
        cache_path = None
    if cache_path is not None:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False)
        log(f"timing cache: {'reusing' if blob else 'creating'} {cache_path}")

    if hasattr(trt, "IProgressMonitor"):
        monitor = _progress_monitor(trt, stream)
        config.progress_monitor = monitor
        serialized = builder.build_serialized_network(network, config)
    else:
        with _Ticker(stream):
            serialized = builder.build_serialized_network(network, config)
    if getattr(stream, "isatty", lambda: False)():
        stream.write("\n")
    if serialized is None:
        raise BuildError(f"{target} build failed:\n  " + "\n  ".join(logger.messages[-20:]))
    seconds = time.perf_counter() - t0
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))

    data = bytes(memoryview(serialized))
    if dev is not None:
        engine_report = engine_precisions(trt, data, logger, batch[1], sides[1], n)
        if engine_report.by_dtype.get("fp16", 0) + engine_report.by_dtype.get("fp32", 0) > 0:
            report = engine_report  # otherwise the inspector listed no formats: keep the network's view
    log(str(report))
    if src.precision == "fp16" and not mostly_fp16(report):
        raise BuildError(f"the graph is fp16 but the engine is not mostly fp16: {report}")

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    engine_info = sidecar_mod.EngineInfo(
        target=target,
        tensorrt_version=str(trt.__version__),
        gpu_name=dev.name if dev else sidecar_mod.NO_GPU,
        compute_capability=dev.compute_capability if dev and target == "tensorrt" else None,
        version_compatible=version_compatible,
        hardware_compatible=hardware_compatible,
        strongly_typed=strongly_typed is not None,
    )
    sc = sidecar_mod.write(
        sidecar_mod.Sidecar(
            kind="engine", architecture=src.architecture, plm=src.plm, class_names=src.class_names,
            n_classes=n, tile=t, normalization=src.normalization, inputs=src.inputs, outputs=src.outputs,
            batch=batch, precision=src.precision, engine=engine_info, pixel_size_m=src.pixel_size_m,
            trained_on=src.trained_on, metrics=dict(src.metrics), tile_multiple=src.tile_multiple,
            max_tile=None if src.tile_multiple is None else sides[2], halo=src.halo,
            quantization=dict(src.quantization),
            source={"onnx": onnx_path.name, "onnx_sha256": src.sha256, "build_seconds": round(seconds, 1),
                    "profile_tiles": list(sides),
                    "workspace_mb": workspace_mb, "layer_precisions": report.to_dict()},
        ),
        out,
    )
    return BuildResult(out, sc, seconds, report, logger.messages)
