"""``phaseedge-bench triton``: frames/s through a Triton server vs in-process ONNX Runtime.

Starts a real ``tritonserver`` on 127.0.0.1 (`LoopbackServer`: PyTriton's bundled binary,
Python backend, the bundled ONNX graph in ONNX Runtime inside), segments the same synthetic
frames through ``Segmenter("triton://...")`` and through the onnxruntime backend in this
process, both ONNX Runtime sessions with the same thread count, and prints frames/s side by
side with whether the labels agree. `LoopbackServer` is also what tests/test_triton.py and
tests/test_batch.py serve from.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

#: the interpreter of the PyTriton environment (PyTriton pins numpy<2, so it has its own)
PYTHON_ENV = "PHASEEDGE_TRITON_PYTHON"
SERVER_SCRIPT = Path(__file__).resolve().with_name("triton_server.py")
DEFAULT_PYTHON = Path(__file__).resolve().parents[1] / ".venv-triton" / "bin" / "python"


def triton_python() -> Path | None:
    """``$PHASEEDGE_TRITON_PYTHON``, else the checkout's .venv-triton (made by ``make test``), else None."""
    env = os.environ.get(PYTHON_ENV)
    if env:
        return Path(env)
    return DEFAULT_PYTHON if DEFAULT_PYTHON.exists() else None


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackServer:
    """A real Triton Inference Server on 127.0.0.1 serving ``model`` (an .onnx with its sidecar).

    Runs in its own process group, so `stop` (and `kill`, which simulates a crash) ends
    PyTriton, tritonserver and its backend stubs together. ``batch_sizes()`` lists the
    batch of every call the served function received, in order.
    """

    def __init__(self, model: str | os.PathLike[str], workdir: str | os.PathLike[str], name: str = "phaseedge",
                 python: str | os.PathLike[str] | None = None, max_batch: int = 8, delay_us: int = 20000,
                 threads: int = 1, http_port: int | None = None, grpc_port: int | None = None) -> None:
        from phaseedge.export.triton import parameters

        from phaseedge import sidecar

        py = Path(python) if python is not None else triton_python()
        if py is None or not py.exists():
            raise FileNotFoundError(f"no PyTriton environment ({py or DEFAULT_PYTHON}): `make test` creates "
                                    f".venv-triton, or set {PYTHON_ENV}")
        self.model, self.name, self.python = Path(model), name, py
        self.params = parameters(sidecar.load(self.model))
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.record = self.workdir / "batches.txt"
        self.log = self.workdir / "server.log"
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        while self.grpc_port == self.http_port:
            self.grpc_port = free_port()
        self.max_batch, self.delay_us, self.threads = max_batch, delay_us, threads
        self._proc: subprocess.Popen | None = None
        self._starts = 0

    def url(self, protocol: str = "grpc") -> str:
        if protocol == "grpc":
            return f"triton://127.0.0.1:{self.grpc_port}/{self.name}"
        return f"triton+http://127.0.0.1:{self.http_port}/{self.name}"

    def _env(self) -> dict[str, str]:
        """tritonserver's Python backend stub links libpython: put the interpreter's library dir first."""
        libdir = subprocess.run([str(self.python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                                capture_output=True, text=True, check=True, timeout=60).stdout.strip()
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
        return env

    def start(self, timeout: float = 180.0) -> LoopbackServer:
        """Start and wait until the model is ready (RuntimeError with the log's tail otherwise)."""
        from tritonclient import http

        if self._proc is not None:
            raise RuntimeError("the server is already running")
        self._starts += 1
        self.record.write_text("")
        cmd = [str(self.python), str(SERVER_SCRIPT), "--model", str(self.model), "--name", self.name,
               "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port), "--record", str(self.record),
               "--parameters", json.dumps(self.params), "--max-batch", str(self.max_batch),
               "--delay-us", str(self.delay_us), "--threads", str(self.threads),
               "--workspace", str(self.workdir / f"workspace-{self._starts}")]
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=self._env(), start_new_session=True)
        client = http.InferenceServerClient(f"127.0.0.1:{self.http_port}", connection_timeout=2, network_timeout=2)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"tritonserver exited with {self._proc.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(Exception):  # not listening yet
                    if client.is_model_ready(self.name):
                        return self
                time.sleep(0.25)
            raise RuntimeError(f"tritonserver not ready after {timeout:.0f} s:\n{self.log_tail()}")
        except BaseException:
            self.stop()
            raise
        finally:
            client.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self._proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the whole server at once: what a crash or a pulled cable looks like to clients."""
        if self._proc is not None:
            self._signal_group(signal.SIGKILL)
            self._proc.wait(30)
            self._proc = None

    def stop(self) -> None:
        """SIGTERM (PyTriton stops tritonserver), then SIGKILL whatever is left of the group."""
        if self._proc is None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self._proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
        self._signal_group(signal.SIGKILL)  # stragglers (backend stubs) share the group
        self._proc.wait(30)
        self._proc = None

    def batch_sizes(self) -> list[int]:
        return [int(line) for line in self.record.read_text().split()]

    def clear_record(self) -> None:
        self.record.write_text("")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _throughput(seg: Any, frames: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
    seg.segment(frames[0])  # warm-up: sessions, connections, first-call allocations
    t = time.perf_counter()
    labels = [seg.segment(f).labels for f in frames]
    return len(frames) / (time.perf_counter() - t), labels


def run_triton_bench(model: Any, frames: int, size: int, threads: int, protocol: str = "grpc",
                     in_flight: int = 4, url: str | None = None, python: str | None = None) -> dict[str, Any]:
    """frames/s of the onnxruntime backend here and of the triton backend against a loopback server."""
    import warnings

    from phaseedge import Segmenter, synth
    from phaseedge.segmenter import default_model

    path = default_model() if model == "default" else Path(model)
    pool = [synth.micrograph((size, size), seed=k, dtype=np.uint16)[0] for k in range(frames)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the bundled model's "synthetic only" note
        with Segmenter(path, backend="onnxruntime", backend_options={"threads": threads}) as seg:
            local_fps, local_labels = _throughput(seg, pool)
            tiles = seg.backend.max_batch
        with tempfile.TemporaryDirectory(prefix="phaseedge-bench-triton-") as tmp:
            server = None
            if url is None:
                server = LoopbackServer(path, tmp, python=python, threads=threads).start()
                url = server.url(protocol)
            try:
                with Segmenter(url, backend_options={"in_flight": in_flight}) as seg:
                    triton_fps, triton_labels = _throughput(seg, pool)
                    desc = seg.backend.describe()
                sizes = server.batch_sizes() if server is not None else []
            finally:
                if server is not None:
                    server.stop()
    return {
        "frames": frames, "frame_size": size, "ort_threads": threads, "max_batch": tiles,
        "onnxruntime_fps": local_fps, "triton_fps": triton_fps, "triton_over_onnxruntime": triton_fps / local_fps,
        "labels_equal": all(np.array_equal(a, b) for a, b in zip(local_labels, triton_labels)),
        "triton": {"url": url, "protocol": desc["protocol"], "in_flight": in_flight, "platform": desc["platform"]},
        "server_batches": {"calls": len(sizes), "mean": float(np.mean(sizes)) if sizes else None,
                           "max": max(sizes) if sizes else None},
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("triton", help="frames/s: triton backend (loopback server) vs in-process ONNX Runtime",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help=".onnx with its sidecar (default: the bundled model)")
    p.add_argument("--frames", type=int, default=8, help="frames timed per backend (default 8)")
    p.add_argument("--size", type=int, default=1024, help="side of the square synthetic frames (default 1024)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads, here and in the server (default 2)")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--in-flight", type=int, default=4, help="requests outstanding per frame (default 4)")
    p.add_argument("--url", default=None, help="an existing server's triton:// URL instead of a loopback one")
    p.add_argument("--triton-python", default=None, help=f"PyTriton interpreter (default ${PYTHON_ENV} or .venv-triton)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.size < 16 or args.threads < 1 or args.in_flight < 1:
        raise ValueError("need --frames >= 1, --size >= 16, --threads >= 1 and --in-flight >= 1")
    r = run_triton_bench(args.model, args.frames, args.size, args.threads, args.protocol, args.in_flight,
                         args.url, args.triton_python)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        b = r["server_batches"]
        print(f"{r['frames']} frames of {r['frame_size']}x{r['frame_size']}, ONNX Runtime {r['ort_threads']} threads: "
              f"onnxruntime {r['onnxruntime_fps']:.2f} frames/s, triton ({r['triton']['protocol']}, "
              f"{r['triton']['in_flight']} in flight) {r['triton_fps']:.2f} frames/s "
              f"(x{r['triton_over_onnxruntime']:.2f}); labels equal: {r['labels_equal']}; server batches: "
              f"{b['calls']} calls, mean {b['mean']}, max {b['max']}", file=sys.stdout)
    return 0 if r["labels_equal"] else 1
