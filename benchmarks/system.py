"""What machine a benchmark ran on, and how much memory it used.

A latency number means little without the machine, the libraries and the memory it
took, so every report carries them. Nothing here imports torch or a GPU library at
module level: the probes load what they need and say "unavailable" otherwise.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

_PACKAGES = (
    "phaseedge", "numpy", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt",
    "tensorrt-rtx", "cuda-python", "opencv-python-headless",
)
_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that decide the speed (absent ones left out)."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def cpu_description() -> str:
    """CPU model and the cores this process may use, e.g. 'AMD EPYC 7B13, 2 cores'."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return f"{model}, {cores} cores"


def machine_info() -> dict[str, str]:
    """One dict for the report header: host, OS, CPU, load when the run started."""
    info = {"host": platform.node(), "os": f"{platform.system()} {platform.release()}", "cpu": cpu_description()}
    if hasattr(os, "getloadavg"):
        info["load_avg_1m"] = f"{os.getloadavg()[0]:.2f}"
    return info


# ------------------------------------------------------------------ host memory
def reset_peak_host_memory() -> bool:
    """Reset the kernel's peak-RSS mark so the next reading covers only what follows.

    Linux resets VmHWM when "5" is written to /proc/self/clear_refs. Returns False
    where that is impossible; :func:`peak_host_mb` then reports the process peak.
    """
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_host_mb() -> float:
    """Peak resident memory in MiB since the last successful reset (else since start)."""
    try:
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


# ------------------------------------------------------------------ GPU memory
class _NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class GpuMemorySampler:
    """Peak device memory in use while a benchmark runs, sampled through NVML.

    NVML reports memory used on the whole device, so the sampler subtracts the
    reading taken when it starts: the result is what this run added (other
    processes on the same GPU can still disturb it; the report says so). Works
    with every backend (TensorRT, ONNX Runtime, PyTorch) because it asks the driver
    rather than an allocator. Use as a context manager; ``peak_mb`` is None when
    NVML is unavailable.
    """

    def __init__(self, device: int = 0, interval_s: float = 0.005) -> None:
        self.device = device
        self.interval_s = interval_s
        self.peak_mb: float | None = None
        self._lib = None
        self._handle = ctypes.c_void_p()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._base = 0
        self._peak = 0

    def _used(self) -> int:
        mem = _NvmlMemory()
        if self._lib.nvmlDeviceGetMemoryInfo(self._handle, ctypes.byref(mem)) != 0:
            raise OSError("nvmlDeviceGetMemoryInfo failed")
        return int(mem.used)

    def __enter__(self) -> Self:
        try:
            lib = ctypes.CDLL("libnvidia-ml.so.1")
            if lib.nvmlInit_v2() != 0:
                return self
            if lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(self.device), ctypes.byref(self._handle)) != 0:
                lib.nvmlShutdown()
                return self
        except (OSError, AttributeError):
            return self
        self._lib = lib
        self._base = self._peak = self._used()
        self._thread = threading.Thread(target=self._loop, name="gpu-memory-sampler", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._used())
            time.sleep(self.interval_s)

    def __exit__(self, *exc) -> None:
        if self._lib is None:
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._used())
        self.peak_mb = (self._peak - self._base) / (1024.0 * 1024.0)
        self._lib.nvmlShutdown()
