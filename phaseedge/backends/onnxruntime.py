"""ONNX Runtime backend: TensorRT, CUDA or CPU execution provider, chosen by availability.

The sidecar is read and the file's sha256 checked before the graph is loaded, so a
stale or foreign file is refused with a reason instead of giving wrong masks. ONNX
Runtime silently falls back to the CPU when a GPU provider cannot start (missing CUDA
or cuDNN), so the providers actually in use are read back from the session and a
fallback is logged and reported in ``device``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from phaseedge import names, sidecar
from phaseedge.backends.base import Backend

try:
    import onnxruntime as ort
except ImportError as exc:  # the registry turns this into "install phaseedge[cpu]"
    raise ImportError("onnxruntime is not installed") from exc

log = logging.getLogger(__name__)

TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
GPU_EPS = (TRT_EP, CUDA_EP)
#: ONNX Runtime tensor type strings -> the dtype names the sidecar uses
_ORT_DTYPES = {"tensor(float16)": "float16", "tensor(float)": "float32", "tensor(double)": "float64"}


def _cpu_threads() -> int:
    """Cores this process may use (respects affinity / container limits, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "phaseedge" / "ort-tensorrt"


class OnnxRuntimeBackend(Backend):
    """Runs an exported ``.onnx`` (with its sidecar) in ONNX Runtime.

    options: ``providers`` (list of provider names, overrides the automatic choice),
    ``threads`` (CPU intra-op threads; default: the cores this process may use).
    """

    name = "onnxruntime"

    def __init__(self, model: str | os.PathLike[str], device: int = 0,
                 providers: list[str] | None = None, threads: int | None = None) -> None:
        path = Path(model)
        if path.suffix.lower() != ".onnx":
            raise ValueError(f"the onnxruntime backend runs .onnx files, got {path}")
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        self.path = path
        self.sidecar = sidecar.load(path)  # read + kind + sha256, before parsing the graph
        sc = self.sidecar
        self._take_sidecar(sc)
        self.max_batch = sc.batch[2]
        self.gpu_id = int(device)

        wanted = list(providers) if providers is not None else self._default_providers()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = int(threads) if threads else _cpu_threads()
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), sess_options=opts,
                                             providers=[(p, self._provider_options(p)) for p in wanted])
        self.providers = tuple(self._session.get_providers())
        sidecar.check_io(sc, {
            t.name: (_ORT_DTYPES.get(t.type, t.type), tuple(t.shape))
            for t in (*self._session.get_inputs(), *self._session.get_outputs())
        })
        active = self.providers[0] if self.providers else CPU_EP
        self.on_gpu = active in GPU_EPS
        self.device = f"cuda:{self.gpu_id} ({active})" if self.on_gpu else f"CPU ({active})"
        if any(p in GPU_EPS for p in wanted) and not self.on_gpu:
            log.warning("onnxruntime fell back to the CPU: asked for %s, the session uses %s "
                        "(is CUDA/cuDNN installed for onnxruntime-gpu?)", wanted, list(self.providers))
        self._bindings: dict[tuple[int, int], tuple[Any, Any, Any, Any]] = {}

    def _default_providers(self) -> list[str]:
        available = set(ort.get_available_providers())
        from phaseedge.gpu import has_cuda_gpu

        gpu = has_cuda_gpu()
        return [p for p in (TRT_EP, CUDA_EP) if gpu and p in available] + [CPU_EP]

    def _provider_options(self, provider: str) -> dict[str, Any]:
        if provider == TRT_EP:
            lo, opt, hi = self.sidecar.batch
            sizes, n = self.allowed_tiles(), self.n_classes

            def shapes(b: int, t: int) -> str:
                return f"{names.IMAGE}:{b}x1x{t}x{t},{names.RATIO}:{b}x{n}"

            cache = _cache_dir()
            cache.mkdir(parents=True, exist_ok=True)
            return {
                "device_id": self.gpu_id,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(cache),
                "trt_profile_min_shapes": shapes(lo, sizes[0]),
                "trt_profile_opt_shapes": shapes(opt, sizes[0]),
                "trt_profile_max_shapes": shapes(hi, sizes[-1]),
            }
        if provider == CUDA_EP:
            return {"device_id": self.gpu_id, "cudnn_conv_algo_search": "HEURISTIC"}
        return {}

    def infer(self, images: np.ndarray, ratio: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise RuntimeError(f"{self.path.name}: the onnxruntime backend was closed")
        self.check_batch(images, ratio)
        images = np.ascontiguousarray(images, dtype=np.float16)
        ratio = np.ascontiguousarray(ratio, dtype=np.float32)
        if not self.on_gpu:
            return self._session.run([names.PROBS], {names.IMAGE: images, names.RATIO: ratio})[0]
        binding, image_dev, ratio_dev, probs_dev = self._device_buffers(images.shape[0], self.tile)
        image_dev.update_inplace(images)  # one host-to-device copy each, into fixed device buffers
        ratio_dev.update_inplace(ratio)
        self._session.run_with_iobinding(binding)
        return probs_dev.numpy()  # the one device-to-host copy

    def infer_many(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[np.ndarray]:
        """On a GPU, batch k+1 runs while the caller stitches batch k (`Backend.infer_ahead`);
        on the CPU one after another (the session already uses every core)."""
        if self.on_gpu:
            return self.infer_ahead(batches)
        return super().infer_many(batches)

    def _device_buffers(self, batch: int, t: int) -> tuple[Any, Any, Any, Any]:
        """I/O binding with device-resident inputs and output, one set per batch size and tile
        (a frame uses only a few), so ``run`` makes no hidden copies or allocations."""
        if (batch, t) not in self._bindings:
            n, dev = self.n_classes, self.gpu_id
            image = ort.OrtValue.ortvalue_from_shape_and_type((batch, 1, t, t), np.float16, "cuda", dev)
            ratio = ort.OrtValue.ortvalue_from_shape_and_type((batch, n), np.float32, "cuda", dev)
            probs = ort.OrtValue.ortvalue_from_shape_and_type((batch, n, t, t), np.float16, "cuda", dev)
            binding = self._session.io_binding()
            binding.bind_ortvalue_input(names.IMAGE, image)
            binding.bind_ortvalue_input(names.RATIO, ratio)
            binding.bind_ortvalue_output(names.PROBS, probs)
            self._bindings[batch, t] = (binding, image, ratio, probs)
        return self._bindings[batch, t]

    def close(self) -> None:
        self._bindings = {}
        self._session = None
