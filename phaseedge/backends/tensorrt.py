"""TensorRT / TensorRT-RTX engine backend: cuda-python buffers, double-buffered, ``execute_async_v3``.

Loader/runner split (as in Polygraphy): construction only reads the engine's sidecar
and checks it against this machine (file hash, TensorRT version, and the GPU when
one is present). Nothing from TensorRT is imported or created until first use or
``__enter__``, and the set-up asks :func:`phaseedge.gpu.has_cuda_gpu` first: a
TensorRT runtime without a GPU logs CUDA error 35 and deserialising crashes the
interpreter, so a missing GPU must become a Python exception before that.

Set-up: the engine is hashed again from the very bytes that are deserialised, its
I/O (names from :mod:`phaseedge.names`, dtypes, shapes, batch profile) is checked
against the sidecar, then one execution context, three non-blocking streams
(upload, compute, download) and two *slots* of buffers are created. A slot is one
set of pinned host + device buffers for ``image``, ``ratio`` and ``probs`` sized for
``max_batch``. Batches alternate between the slots, and events order the streams,
so batch k+1 is uploaded while batch k executes and batch k-1 is downloaded
(:meth:`TensorRTBackend.infer_many`). One context and one compute stream: TensorRT
contexts must not run two enqueues at once (their scratch memory is shared).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import logging
import math
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from phaseedge import names, sidecar
from phaseedge.backends.base import Backend
from phaseedge.gpu import has_cuda_gpu
from phaseedge.sidecar import TARGET_MODULES

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

log = logging.getLogger(__name__)

# pip distributions that ship each module (the meta package, then the CUDA-specific ones)
_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-bindings", "tensorrt-cu12-bindings"),
    "tensorrt_rtx": ("tensorrt-rtx", "tensorrt-rtx-cu13", "tensorrt-rtx-cu12"),
}
_INSTALL = {
    "tensorrt": "pip install 'phaseedge[gpu]' (TensorRT's wheels fetch their libraries from NVIDIA's index)",
    "tensorrt_rtx": "pip install tensorrt-rtx",
}
SLOTS = 2  # double buffering
_REBUILD = "rebuild with phaseedge-export"


# ----------------------------------------------------------------------------- buffer planning


@dataclass(frozen=True)
class TensorPlan:
    """One I/O tensor: its per-sample shape (batch dim dropped) and bytes per sample."""

    name: str
    dtype: np.dtype
    item_shape: tuple[int, ...]
    is_input: bool

    @property
    def item_bytes(self) -> int:
        return math.prod(self.item_shape) * self.dtype.itemsize

    def shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.item_shape)


@dataclass(frozen=True)
class BufferPlan:
    """Sizes of every buffer the backend allocates, decided before touching the GPU.

    Each of ``slots`` slots holds one device and one pinned host buffer per tensor,
    sized for ``max_batch``; batches smaller than the engine profile's ``min_batch``
    are zero-padded up to it (the engine cannot run them otherwise).
    """

    tensors: tuple[TensorPlan, ...]
    max_batch: int
    min_batch: int = 1
    slots: int = SLOTS

    def tensor(self, name: str) -> TensorPlan:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"no tensor {name!r} in the plan; have {[t.name for t in self.tensors]}")

    def buffer_bytes(self, name: str) -> int:
        """Bytes of one buffer (one slot, one side) for tensor ``name``."""
        return self.tensor(name).item_bytes * self.max_batch

    @property
    def slot_bytes(self) -> int:
        return sum(self.buffer_bytes(t.name) for t in self.tensors)

    @property
    def device_bytes(self) -> int:
        """Device memory for I/O (TensorRT's own activation memory comes on top)."""
        return self.slot_bytes * self.slots

    @property
    def pinned_bytes(self) -> int:
        return self.slot_bytes * self.slots

    def run_batch(self, batch: int) -> int:
        """The batch actually sent to the engine for ``batch`` samples (padded up to min_batch)."""
        if not 1 <= batch <= self.max_batch:
            raise ValueError(f"batch size {batch} outside [1, {self.max_batch}]")
        return max(batch, self.min_batch)


def plan_buffers(
    inputs: Sequence[sidecar.TensorSpec],
    outputs: Sequence[sidecar.TensorSpec],
    max_batch: int,
    min_batch: int = 1,
    slots: int = SLOTS,
) -> BufferPlan:
    """A :class:`BufferPlan` from the sidecar's tensor specs (dynamic batch first, fixed rest)."""
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
    if not isinstance(min_batch, int) or not 1 <= min_batch <= max_batch:
        raise ValueError(f"min_batch must be an integer in [1, max_batch={max_batch}], got {min_batch!r}")
    if not isinstance(slots, int) or slots < 1:
        raise ValueError(f"slots must be a positive integer, got {slots!r}")
    tensors = []
    for spec, is_input in [(s, True) for s in inputs] + [(s, False) for s in outputs]:
        if not spec.shape or spec.shape[0] != sidecar.BATCH_DIM:
            raise ValueError(f"tensor {spec.name!r} must have the dynamic batch first, got {list(spec.shape)}")
        rest = spec.shape[1:]
        if not all(isinstance(d, int) and d > 0 for d in rest):
            raise ValueError(f"tensor {spec.name!r} must have fixed positive dims after the batch, got {list(spec.shape)}")
        tensors.append(TensorPlan(spec.name, np.dtype(spec.dtype), tuple(rest), is_input))
    return BufferPlan(tuple(tensors), max_batch, min_batch, slots)


# ----------------------------------------------------------------------------- environment checks


def installed_version(module: str) -> str | None:
    """Version of the TensorRT flavour ``module`` without importing it (None when not installed).

    Read from the pip metadata, so a construction-time check loads no TensorRT
    library; falls back to importing the module when it was installed some other way.
    """
    for dist in _DISTRIBUTIONS.get(module, (module,)):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(dist)
    if importlib.util.find_spec(module) is None:
        return None
    return str(importlib.import_module(module).__version__)


def check_version(sc: sidecar.Sidecar, version: str) -> None:
    """The TensorRT half of :func:`phaseedge.sidecar.check_engine_compatible`, for when no GPU is known yet.

    The sidecar's own GPU fields stand in for this machine's, so only the version
    (and target) rules can fail; the GPU is compared on first use.
    """
    eng = sc.engine
    if eng is None:
        raise sidecar.SidecarError(f"sidecar describes a {sc.kind} file, not an engine; {_REBUILD}")
    sidecar.check_engine_version(sc, version, target=eng.target)


def _no_gpu_message(path: Path) -> str:
    return (
        f"the TensorRT backend needs an NVIDIA GPU with a working CUDA driver to run {path.name}, and none "
        "was found (no libcuda.so.1 or no device); run the ONNX model with backend='onnxruntime' instead"
    )


# ----------------------------------------------------------------------------- the double-buffered pipeline


class _Slot:
    """One set of pinned host and device buffers per tensor, plus the events that guard them."""

    def __init__(self, plan: BufferPlan, cm: ModuleType) -> None:
        self.host: dict[str, Any] = {}
        self.dev: dict[str, Any] = {}
        for t in plan.tensors:
            self.host[t.name] = cm.PinnedArray(t.shape(plan.max_batch), t.dtype)
            self.dev[t.name] = cm.DeviceBuffer(plan.buffer_bytes(t.name))
        self.uploaded = cm.Event()
        self.executed = cm.Event()
        self.downloaded = cm.Event()
        self.batch = 0  # samples of the batch in flight (0: free)

    def free(self) -> None:
        for ev in (self.uploaded, self.executed, self.downloaded):
            ev.destroy()
        for buf in (*self.host.values(), *self.dev.values()):
            buf.free()


class _Pipeline:
    """Upload / execute / download of successive batches on three streams and two slots.

    Stream order for a batch in slot s: upload stream copies host→device and records
    ``uploaded``; the compute stream waits for it, runs the context on slot s's
    device buffers and records ``executed``; the download stream waits for that,
    copies device→host and records ``downloaded``. Before slot s is refilled the
    host waits for its ``downloaded``, which implies the earlier stages finished,
    so no buffer is overwritten while in use.
    """

    def __init__(self, context: Any, plan: BufferPlan, cm: ModuleType) -> None:
        self.context = context
        self.plan = plan
        self.cm = cm
        self.inputs = [t for t in plan.tensors if t.is_input]
        self.outputs = [t for t in plan.tensors if not t.is_input]
        self.upload, self.compute, self.download = cm.Stream(), cm.Stream(), cm.Stream()
        self.slots: list[_Slot] = []
        try:
            for _ in range(plan.slots):
                self.slots.append(_Slot(plan, cm))
        except BaseException:  # e.g. out of memory: give back what was allocated
            self.free()
            raise
        self._next = 0

    def submit(self, arrays: dict[str, np.ndarray]) -> _Slot:
        """Queue one batch (``{input name: array}``); returns the slot to collect it from."""
        cm, ctx = self.cm, self.context
        slot = self.slots[self._next]
        self._next = (self._next + 1) % len(self.slots)
        if slot.batch:  # not collected: its buffers may still be in use
            slot.downloaded.synchronize()
            slot.batch = 0
        b = int(next(iter(arrays.values())).shape[0])
        run = self.plan.run_batch(b)
        for t in self.inputs:
            host = slot.host[t.name].array
            np.copyto(host[:b], arrays[t.name], casting="same_kind")
            if run > b:
                host[b:run] = 0
            cm.copy_to_device_async(slot.dev[t.name], host[:run], self.upload)
        slot.uploaded.record(self.upload)

        self.compute.wait(slot.uploaded)
        for t in self.inputs:
            if not ctx.set_input_shape(t.name, t.shape(run)):
                raise RuntimeError(f"TensorRT refused input shape {t.shape(run)} for {t.name!r}")
        for t in self.plan.tensors:
            if not ctx.set_tensor_address(t.name, slot.dev[t.name].ptr):
                raise RuntimeError(f"TensorRT refused the device address for {t.name!r}")
        if not ctx.execute_async_v3(int(self.compute)):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        slot.executed.record(self.compute)

        self.download.wait(slot.executed)
        for t in self.outputs:
            cm.copy_to_host_async(slot.host[t.name].array[:run], slot.dev[t.name], self.download)
        slot.downloaded.record(self.download)
        slot.batch = b
        return slot

    def collect(self, slot: _Slot, name: str = names.PROBS) -> np.ndarray:
        """Wait for ``slot``'s batch; a view of its pinned output, valid until the slot is refilled."""
        b = slot.batch
        if not b:
            raise RuntimeError("internal error: collecting a slot with no batch in flight")
        slot.downloaded.synchronize()
        slot.batch = 0
        return slot.host[name].array[:b]

    def drain(self) -> None:
        """Wait for everything queued (nothing may be in flight into buffers about to be freed)."""
        for s in (self.upload, self.compute, self.download):
            s.synchronize()
        for slot in self.slots:
            slot.batch = 0

    def free(self) -> None:
        self.drain()
        for slot in self.slots:
            slot.free()
        for s in (self.upload, self.compute, self.download):
            s.destroy()


# ----------------------------------------------------------------------------- the backend


class TensorRTBackend(Backend):
    """Runs a serialised TensorRT (or TensorRT-RTX) engine that has a phaseedge sidecar.

    ``model``: path to ``NAME.engine`` with ``NAME.engine.json`` beside it.
    ``device``: CUDA device index. ``max_batch``: cap below the engine's profile
    maximum (less pinned/device memory). ``runtime_cache``: TensorRT-RTX only, a file
    that keeps the kernels it compiles on first use, so later starts are fast. ``tile``: for an
    engine whose profile covers a range of tile sizes, the one to run (default: the training
    tile); the pinned and device buffers are sized for it.
    """

    name = "tensorrt"

    def __init__(
        self,
        model: str | os.PathLike[str],
        device: int = 0,
        max_batch: int | None = None,
        runtime_cache: str | os.PathLike[str] | None = None,
        tile: int | None = None,
    ) -> None:
        path = Path(model)
        if path.suffix != ".engine":
            raise ValueError(f"the TensorRT backend runs .engine files, got {str(path)!r}")
        if not path.is_file():
            raise FileNotFoundError(f"engine {path} does not exist")
        if not isinstance(device, int) or device < 0:
            raise ValueError(f"device must be a CUDA device index >= 0, got {device!r}")
        sc = sidecar.load(path)  # missing/foreign sidecar, kind, sha256
        if sc.engine is None:
            raise sidecar.SidecarError(f"sidecar of {path.name} has no engine section; {_REBUILD}")
        self.path = path
        self.sidecar = sc
        self.target = sc.engine.target
        self.module_name = TARGET_MODULES[self.target]
        version = installed_version(self.module_name)
        if version is None:
            raise ImportError(
                f"{path.name} is a {self.target} engine but the {self.module_name} module is not installed; "
                f"{_INSTALL[self.module_name]}"
            )
        self.trt_version = version
        check_version(sc, version)
        self.gpu_index = device
        self.gpu = None
        self.device = f"cuda:{device}"
        if has_cuda_gpu():  # compare the GPU now when there is one; otherwise first use refuses to run
            self._check_gpu()

        self._take_sidecar(sc)
        if max_batch is None:
            self.max_batch = sc.batch[2]
        elif not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        else:
            self.max_batch = min(max_batch, sc.batch[2])
        if tile is not None:
            self.use_tile(tile)
        self.tile_sizes = None  # buffers are sized for this one tile
        inputs, outputs = sidecar.io_specs(self.tile, sc.n_classes)
        self.plan = plan_buffers(inputs, outputs, self.max_batch, min(sc.batch[0], self.max_batch))
        self.runtime_cache = None if runtime_cache is None else Path(runtime_cache)
        if self.runtime_cache is not None and self.target != "rtx":
            raise ValueError("runtime_cache is a TensorRT-RTX feature; this engine's target is 'tensorrt'")

        self._setup_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._runner: int | None = None  # thread id holding _run_lock
        self._closed = False
        self._logger: Any = None  # TensorRT keeps a pointer to it: it must outlive the runtime
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._rtx_cache: Any = None
        self._pipe: _Pipeline | None = None

    # ---------------------------------------------------------------- set-up

    def _check_gpu(self) -> None:
        from phaseedge import cuda_mem

        self.gpu = cuda_mem.device_info(self.gpu_index)
        sidecar.check_engine_compatible(
            self.sidecar, self.trt_version, self.gpu.name, self.gpu.compute_capability, target=self.target
        )
        self.device = f"cuda:{self.gpu_index} ({self.gpu.name})"

    def _ensure_ready(self) -> _Pipeline:
        with self._setup_lock:
            if self._closed:
                raise RuntimeError("this TensorRT backend was closed")
            if self._pipe is None:
                self._pipe = self._setup()
            return self._pipe

    def _setup(self) -> _Pipeline:
        if not has_cuda_gpu():  # before any TensorRT object: without a GPU they crash the interpreter
            raise RuntimeError(_no_gpu_message(self.path))
        from phaseedge import cuda_mem

        cuda_mem.set_device(self.gpu_index)
        self._check_gpu()
        trt = importlib.import_module(self.module_name)
        if str(trt.__version__) != self.trt_version:
            self.trt_version = str(trt.__version__)
            self._check_gpu()
        blob = self.path.read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        if digest != self.sidecar.sha256:
            raise sidecar.SidecarError(
                f"{self.path} changed after the backend was created (sha256 {digest}, sidecar says "
                f"{self.sidecar.sha256}); {_REBUILD}"
            )
        try:
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            configure_runtime(self._runtime, self.sidecar)
            _check_validity(trt, self._runtime, blob, self.path)
            self._engine = self._runtime.deserialize_cuda_engine(blob)
            del blob
            if self._engine is None:
                raise RuntimeError(f"TensorRT could not deserialise {self.path} (see its log above); {_REBUILD}")
            sidecar.check_io(self.sidecar, engine_io(trt, self._engine))
            self._check_profile(self._engine)
            self._context = self._create_context(self._engine)
            if self._context is None:
                raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
            pipe = _Pipeline(self._context, self.plan, cuda_mem)
        except BaseException:
            self._release_trt()
            raise
        log.info(
            "TensorRT %s engine %s on %s (%s, sm %s): max batch %d, %.1f MB pinned + %.1f MB device I/O buffers",
            self.trt_version, self.path.name, self.device, self.gpu.name, self.gpu.compute_capability,
            self.max_batch, self.plan.pinned_bytes / 1e6, self.plan.device_bytes / 1e6,
        )
        return pipe

    def _check_profile(self, engine: Any) -> None:
        """The engine's optimisation profile must accept the sidecar's batch range for every input."""
        lo, _, hi = self.sidecar.batch
        for t in self.plan.tensors:
            if not t.is_input:
                continue
            pmin, _, pmax = engine.get_tensor_profile_shape(t.name, 0)
            if int(pmin[0]) > lo or int(pmax[0]) < hi:
                raise sidecar.SidecarError(
                    f"engine profile for {t.name!r} covers batch {int(pmin[0])}..{int(pmax[0])}, "
                    f"sidecar says {lo}..{hi}; {_REBUILD}"
                )
            if t.name == names.IMAGE and not int(pmin[2]) <= self.tile <= int(pmax[2]):
                raise sidecar.SidecarError(f"engine profile covers tiles {int(pmin[2])}..{int(pmax[2])}, not the "
                                           f"{self.tile} asked for; {_REBUILD}")

    def _create_context(self, engine: Any) -> Any:
        if self.runtime_cache is None:
            return engine.create_execution_context()
        config = engine.create_runtime_config()
        cache = config.create_runtime_cache()
        if self.runtime_cache.is_file() and not cache.deserialize(self.runtime_cache.read_bytes()):
            log.warning("runtime cache %s does not fit this GPU/driver; kernels are recompiled", self.runtime_cache)
        config.set_runtime_cache(cache)
        self._rtx_cache = cache
        return engine.create_execution_context(config)

    def _save_runtime_cache(self) -> None:
        if self._rtx_cache is None or self.runtime_cache is None:
            return
        data = bytes(memoryview(self._rtx_cache.serialize()))
        tmp = self.runtime_cache.with_name(self.runtime_cache.name + ".tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self.runtime_cache)
        except OSError as e:  # losing the cache costs start-up time next run, nothing else
            log.warning("could not save the TensorRT-RTX runtime cache to %s: %s", self.runtime_cache, e)

    # ---------------------------------------------------------------- running

    @contextlib.contextmanager
    def _running(self) -> Iterator[_Pipeline]:
        me = threading.get_ident()
        if self._runner == me:
            raise RuntimeError(
                "this thread is still iterating infer_many on this backend; exhaust or close that iterator first"
            )
        pipe = self._ensure_ready()
        with self._run_lock:
            if self._pipe is not pipe:  # closed by another thread while this one waited
                raise RuntimeError("this TensorRT backend was closed")
            self._runner = me
            try:
                from phaseedge import cuda_mem

                cuda_mem.set_device(self.gpu_index)  # the current device is per thread
                yield pipe
            finally:
                try:
                    pipe.drain()
                finally:
                    self._runner = None

    def _arrays(self, images: np.ndarray, ratio: np.ndarray) -> dict[str, np.ndarray]:
        if not isinstance(images, np.ndarray) or not isinstance(ratio, np.ndarray):
            raise TypeError(
                f"images and ratio must be numpy arrays, got {type(images).__name__} and {type(ratio).__name__}"
            )
        if not np.issubdtype(images.dtype, np.floating) or not np.issubdtype(ratio.dtype, np.floating):
            raise TypeError(f"images and ratio must be floating point, got {images.dtype} and {ratio.dtype}")
        self.check_batch(images, ratio)
        return {names.IMAGE: images, names.RATIO: ratio}

    def infer(self, images: np.ndarray, ratio: np.ndarray) -> np.ndarray:
        """Probabilities float16 ``[B, n, T, T]`` (a fresh array: safe to keep)."""
        arrays = self._arrays(images, ratio)
        with self._running() as pipe:
            return pipe.collect(pipe.submit(arrays)).copy()

    def infer_many(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[np.ndarray]:
        """Double-buffered: batch k+1 is queued (uploaded, run) before batch k's result is yielded.

        Each yielded array is a view of pinned memory that the batch after next
        overwrites: use or copy it before pulling the next one. Other threads wait
        until the iterator is exhausted or closed.
        """
        with self._running() as pipe:
            pending: _Slot | None = None
            for images, ratio in batches:
                slot = pipe.submit(self._arrays(images, ratio))
                if pending is not None:
                    yield pipe.collect(pending)
                pending = slot
            if pending is not None:
                yield pipe.collect(pending)

    # ---------------------------------------------------------------- life cycle

    def __enter__(self) -> Self:
        self._ensure_ready()
        return self

    def close(self) -> None:
        """Free buffers, streams, context, engine and runtime (in that order). Safe to call twice."""
        if self._runner == threading.get_ident():
            raise RuntimeError("close() called while this thread is iterating infer_many; close that iterator first")
        with self._setup_lock, self._run_lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._pipe is not None:
                    self._pipe.free()
                self._save_runtime_cache()
            finally:
                self._pipe = None
                self._release_trt()

    def _release_trt(self) -> None:
        """Drop TensorRT objects in dependency order: context, engine, runtime, logger."""
        self._context = None
        self._rtx_cache = None
        self._engine = None
        self._runtime = None
        self._logger = None

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and getattr(self, "_pipe", None) is not None:
            with contextlib.suppress(Exception):
                self.close()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            engine=str(self.path),
            target=self.target,
            tensorrt_version=self.trt_version,
            gpu=None if self.gpu is None else self.gpu.name,
            compute_capability=None if self.gpu is None else self.gpu.compute_capability,
            pinned_bytes=self.plan.pinned_bytes,
            device_io_bytes=self.plan.device_bytes,
        )
        return d


def engine_io(trt: ModuleType, engine: Any) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (numpy dtype name, shape with -1 for dynamic dims)}`` of a deserialised engine.

    Also checks that ``image`` and ``ratio`` are inputs and ``probs`` an output.
    """
    io: dict[str, tuple[str, tuple[int, ...]]] = {}
    want_input = {names.IMAGE: True, names.RATIO: True, names.PROBS: False}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        if name in want_input and want_input[name] != is_input:
            raise sidecar.SidecarError(
                f"engine tensor {name!r} is an {'input' if is_input else 'output'}, the contract says "
                f"{'input' if want_input[name] else 'output'}; {_REBUILD}"
            )
        trt_dtype = engine.get_tensor_dtype(name)
        try:
            dtype = np.dtype(trt.nptype(trt_dtype)).name
        except TypeError:  # bf16 / fp8 have no numpy type
            dtype = str(trt_dtype)
        io[name] = (dtype, tuple(int(d) for d in engine.get_tensor_shape(name)))
    return io


def _check_validity(trt: ModuleType, runtime: Any, blob: bytes, path: Path) -> None:
    """TensorRT-RTX's header-only check (``IRuntime.get_engine_validity``), where the runtime has it."""
    if not hasattr(runtime, "get_engine_validity"):
        return
    validity, diagnostics = runtime.get_engine_validity(blob)
    if validity == trt.EngineValidity.VALID:
        return
    flags = getattr(trt, "EngineInvalidityDiagnostics", None)
    reasons = [
        name for name, member in (flags.__members__.items() if flags is not None else [])
        if int(diagnostics) & int(member)
    ] or [f"diagnostics {int(diagnostics)}"]
    if validity == trt.EngineValidity.SUBOPTIMAL:
        log.warning("%s may run slower on this system: %s", path.name, ", ".join(reasons))
        return
    raise sidecar.SidecarError(f"TensorRT says {path.name} is invalid on this system: {', '.join(reasons)}; {_REBUILD}")


def configure_runtime(runtime: Any, sc: sidecar.Sidecar) -> None:
    """Runtime flags an engine needs before it is deserialised: a version-compatible engine
    carries its own lean runtime (host code), which TensorRT runs only when allowed."""
    if sc.engine is not None and sc.engine.version_compatible:
        runtime.engine_host_code_allowed = True
