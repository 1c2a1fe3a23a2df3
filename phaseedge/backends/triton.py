"""Triton Inference Server backend: tiles go to a model served elsewhere, stitching stays here.

``Segmenter("triton://host:8001/NAME")`` (gRPC; ``triton+http://host:8000/NAME`` for HTTP;
``/NAME/VERSION`` pins a version). Only the backend interface changes hands: the Segmenter
cuts, normalises and stitches exactly as with a local backend, so labels match.

Before the first frame the server's model metadata and config are read and checked:
tensor names, dtypes and shapes against the contract (`phaseedge.names`), batching, and
the class names and normalisation, which come from the ``phaseedge_*`` config parameters
that ``phaseedge-export triton`` writes (or from a local sidecar / ``class_names`` option,
which must then agree with the server). Batches are serialised in the caller's thread (the
Segmenter reuses its tile buffers) and sent from a small thread pool, several requests in
flight, so the server's dynamic batcher can merge them with other clients' requests.

A request that times out, a server that goes away mid-frame, or a model that is not
ready raise `TritonError` naming the server, the model and what to do; the connection is
then rebuilt (and the model re-checked) on the next call, so the same Segmenter carries on
once the server is back.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from phaseedge import names, sidecar
from phaseedge.backends.base import DEFAULT_NORMALIZATION, Backend

try:
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http
    from tritonclient.utils import InferenceServerException
except ImportError as exc:  # the registry turns this into "install phaseedge[triton]"
    raise ImportError("tritonclient is not installed") from exc

#: URL scheme -> protocol; plain ``triton://`` is gRPC (binary, the faster of the two)
SCHEMES = {"triton": "grpc", "triton+grpc": "grpc", "triton+http": "http"}
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
#: model config parameters written by phaseedge-export triton (export/triton.py)
PARAM = "phaseedge_"
_DTYPES = {"FP16": np.float16, "FP32": np.float32}
_CONTRACT = {names.IMAGE: "FP16", names.RATIO: "FP32"}


class TritonError(RuntimeError):
    """The server or the model on it cannot serve this request (the message says why and what to do)."""


@dataclass(frozen=True)
class Endpoint:
    """Where a ``triton://`` model lives."""

    protocol: str  # "grpc" | "http"
    host: str
    port: int
    model: str
    version: str  # "" = the server's latest

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        v = f" version {self.version}" if self.version else ""
        return f"model {self.model!r}{v} on Triton {self.address} ({self.protocol})"


def parse_url(url: str) -> Endpoint:
    """``triton[+grpc|+http]://host[:port]/NAME[/VERSION]`` -> `Endpoint` (ValueError when malformed)."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"{url!r}: expected triton://host:port/NAME (gRPC) or triton+http://host:port/NAME")
    protocol = SCHEMES[parts.scheme]
    try:
        port = parts.port or DEFAULT_PORTS[protocol]
    except ValueError:
        raise ValueError(f"{url!r}: the port must be a number") from None
    path = [p for p in parts.path.split("/") if p]
    if not parts.hostname or not 1 <= len(path) <= 2 or parts.query or parts.fragment:
        raise ValueError(f"{url!r}: expected {parts.scheme}://host:port/NAME or .../NAME/VERSION")
    version = path[1] if len(path) == 2 else ""
    if version and not version.isdigit():
        raise ValueError(f"{url!r}: the model version must be a number, got {version!r}")
    return Endpoint(protocol, parts.hostname, port, path[0], version)


def _reason(exc: BaseException) -> str:
    """One line from a tritonclient / socket error."""
    text = exc.message() if isinstance(exc, InferenceServerException) else str(exc)
    text = (text or type(exc).__name__).strip().splitlines()[0]
    return text if len(text) < 300 else text[:300] + "..."


def _is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError):  # socket.timeout and gevent's timeouts are TimeoutErrors
        return True
    text = str(exc.status() if isinstance(exc, InferenceServerException) else "") + " " + _reason(exc)
    return "DEADLINE_EXCEEDED" in text or "timed out" in text.lower()


def _local_sidecar(path: str | Path) -> sidecar.Sidecar:
    """A sidecar given as its JSON file or as the model file it sits beside (not hashed: the
    file is on the server; its sha256 is compared with the server's parameter instead)."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        try:
            return sidecar.Sidecar.from_dict(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as e:
            raise sidecar.SidecarError(f"cannot read sidecar {p}: {e}") from e
    return sidecar.read(p)


class TritonBackend(Backend):
    """Runs tiles on a model served by Triton Inference Server (``triton://host:port/NAME``).

    options: ``timeout`` (seconds per request and per check, default 30), ``in_flight``
    (requests outstanding at once, default 4), ``sidecar`` (path of the model's sidecar JSON
    when the server's config lacks the ``phaseedge_*`` parameters), ``class_names`` (what
    the caller expects; refused if the server says otherwise). ``device`` is ignored: the
    server decides where the model runs.
    """

    name = "triton"

    def __init__(self, model: str, device: int = 0, timeout: float = 30.0, in_flight: int = 4,
                 sidecar: str | Path | None = None, class_names: Sequence[str] | None = None) -> None:
        if not isinstance(model, str):
            raise TypeError(f"the triton backend takes a triton://host:port/NAME string, got {type(model).__name__}")
        self.endpoint = parse_url(model)
        if not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if isinstance(in_flight, bool) or not isinstance(in_flight, int) or in_flight < 1:
            raise ValueError(f"in_flight must be a positive integer, got {in_flight!r}")
        self.timeout = float(timeout)
        self.in_flight = in_flight
        self._local = None if sidecar is None else _local_sidecar(sidecar)
        self._expected = None if class_names is None else tuple(class_names)
        self._module = triton_grpc if self.endpoint.protocol == "grpc" else triton_http
        self._threads = threading.local()  # one client per thread (the HTTP client is not thread-safe)
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        self._generation = 0  # bumped when the connection breaks: every thread builds a fresh client
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._stale = False
        self._config_key: tuple[Any, ...] | None = None
        self._connect()

    # ------------------------------------------------------------------ connection and checks
    def _client(self) -> Any:
        t = self._threads
        if getattr(t, "generation", None) != self._generation:
            if self.endpoint.protocol == "grpc":
                client = triton_grpc.InferenceServerClient(self.endpoint.address)
            else:
                client = triton_http.InferenceServerClient(self.endpoint.address, connection_timeout=self.timeout,
                                                           network_timeout=self.timeout)
            with self._clients_lock:
                self._clients.append(client)
            t.client, t.generation = client, self._generation
        return t.client

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.endpoint.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout
        return getattr(self._client(), method)(*args, **kwargs)

    def _drop_clients(self) -> None:
        """Forget every connection (a gRPC channel in reconnect back-off would refuse calls for
        up to minutes after the server is back); the next call opens new ones."""
        with self._clients_lock:
            self._generation += 1
            old, self._clients = self._clients, []
        for client in old:
            with contextlib.suppress(Exception):  # a broken connection may fail to close; it is dropped anyway
                client.close()

    def _connect(self) -> None:
        """Reach the server, wait for nothing, and check the model before any tile is sent."""
        ep = self.endpoint
        try:
            live = self._call("is_server_live")
        except Exception as e:
            self._drop_clients()
            raise TritonError(f"cannot reach Triton at {ep.address} over {ep.protocol} ({_reason(e)}): is "
                              f"tritonserver running there, and is {ep.port} its {ep.protocol} port "
                              f"(defaults {DEFAULT_PORTS})?") from e
        if not live:
            raise TritonError(f"Triton at {ep.address} answers but is not live (shutting down or starting up)")
        try:
            ready = self._call("is_model_ready", ep.model, ep.version)
        except InferenceServerException as e:
            raise TritonError(f"{ep}: readiness check failed: {_reason(e)}") from e
        if not ready:
            raise TritonError(f"{ep} is not ready{self._not_ready_reason()}; load it (tritonserver "
                              "--model-repository with phaseedge-export triton's folder) or check the server's log")
        try:
            metadata = self._call("get_model_metadata", ep.model, ep.version, **self._as_json())
            config = self._call("get_model_config", ep.model, ep.version, **self._as_json())
        except InferenceServerException as e:
            raise TritonError(f"{ep}: cannot read its metadata/config: {_reason(e)}") from e
        self._check(metadata, config.get("config", config))
        self._stale = False

    def _as_json(self) -> dict[str, Any]:
        return {"as_json": True} if self.endpoint.protocol == "grpc" else {}

    def _not_ready_reason(self) -> str:
        """The server's own word on why (repository index), when it gives one."""
        try:
            index = self._call("get_model_repository_index", **self._as_json())
        except Exception:  # noqa: BLE001 - only decorates the error message
            return ""
        entries = index.get("models", []) if isinstance(index, dict) else index
        for entry in entries:
            if entry.get("name") == self.endpoint.model:
                state, reason = entry.get("state", ""), entry.get("reason", "")
                return f" (state {state or 'unknown'}{f': {reason}' if reason else ''})"
        return " (the server has no model of that name)"

    def _check(self, metadata: dict[str, Any], config: dict[str, Any]) -> None:
        ep = self.endpoint
        tensors = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]])
                   for t in (*metadata.get("inputs", []), *metadata.get("outputs", []))}
        want = {names.IMAGE, names.RATIO, names.PROBS}
        if set(tensors) != want:
            raise TritonError(f"{ep} has tensors {sorted(tensors)}, a phaseedge model has {sorted(want)}: "
                              "it is another model, or was not exported with phaseedge-export")
        for name, dtype in _CONTRACT.items():
            if tensors[name][0] != dtype:
                raise TritonError(f"{ep}: input {name!r} is {tensors[name][0]}, the contract says {dtype}")
        if tensors[names.PROBS][0] not in _DTYPES:
            raise TritonError(f"{ep}: output {names.PROBS!r} is {tensors[names.PROBS][0]}, expected FP16 or FP32")
        image, ratio, probs = (tensors[k][1] for k in (names.IMAGE, names.RATIO, names.PROBS))
        if len(image) != 4 or image[1] != 1 or image[2] != image[3] or image[2] < 1:
            raise TritonError(f"{ep}: input {names.IMAGE!r} has shape {image}, expected [-1, 1, T, T]")
        tile = image[2]
        if len(ratio) != 2 or ratio[1] < 2:
            raise TritonError(f"{ep}: input {names.RATIO!r} has shape {ratio}, expected [-1, n]")
        n = ratio[1]
        if probs != [probs[0], n, tile, tile]:
            raise TritonError(f"{ep}: output {names.PROBS!r} has shape {probs}, expected [-1, {n}, {tile}, {tile}]")
        max_batch = int(config.get("max_batch_size", 0))
        if max_batch < 1 or image[0] != -1:
            raise TritonError(f"{ep} does not batch (max_batch_size {max_batch}); give it max_batch_size >= 1 "
                              "(phaseedge-export triton writes it)")
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        served = None
        if PARAM + "class_names" in params:
            try:
                served = tuple(json.loads(params[PARAM + "class_names"]))
            except ValueError as e:
                raise TritonError(f"{ep}: parameter {PARAM}class_names is not a JSON list: {e}") from e
        local = self._local
        if served is None and local is None and self._expected is None:
            raise TritonError(f"{ep} does not say which classes its channels are (no {PARAM}class_names config "
                              "parameter: serve a repository written by phaseedge-export triton), or pass "
                              "backend_options={'sidecar': 'model.onnx.json'} or {'class_names': [...]}")
        sources = [(what, tuple(c)) for what, c in (("the server's config", served),
                                                    ("the local sidecar", None if local is None else local.class_names),
                                                    ("class_names", self._expected)) if c is not None]
        for what, classes in sources:
            if len(classes) != n:
                raise TritonError(f"{ep} has {n} classes, {what} names {len(classes)}: {list(classes)}")
            if classes != sources[0][1]:
                raise TritonError(f"class names differ: {sources[0][0]} says {list(sources[0][1])}, {what} says "
                                  f"{list(classes)} (same names, same order); it is another model")
        if local is not None:
            if local.tile != tile:
                raise TritonError(f"{ep} takes {tile}-pixel tiles, the local sidecar says {local.tile}")
            sha = params.get(PARAM + "sha256")
            if sha and local.sha256 and sha != local.sha256:
                raise TritonError(f"{ep} serves the file with sha256 {sha}, the local sidecar describes {local.sha256}: "
                                  "another build of the model")
        if PARAM + "tile" in params and params[PARAM + "tile"] != str(tile):
            raise TritonError(f"{ep}: parameter {PARAM}tile is {params[PARAM + 'tile']}, its tensors say {tile}")
        try:
            norm = json.loads(params[PARAM + "normalization"]) if PARAM + "normalization" in params else None
            pixel = params.get(PARAM + "pixel_size_m", "")
            pixel_size = float(pixel) if pixel else None
        except ValueError as e:
            raise TritonError(f"{ep}: a {PARAM}* config parameter is malformed: {e}") from e
        key = (tile, n, sources[0][1], max_batch, tensors[names.PROBS][0])
        if self._config_key is not None and key != self._config_key:
            raise TritonError(f"{ep} changed while this Segmenter used it (tile, classes, batch or output type "
                              "differ): create a new Segmenter for the new model")
        self._config_key = key
        self.tile, self.n_classes, self.class_names, self.max_batch = tile, n, sources[0][1], max_batch
        self.normalization = dict(norm or (local.normalization if local else DEFAULT_NORMALIZATION))
        self.pixel_size_m = pixel_size if pixel_size is not None else (local.pixel_size_m if local else None)
        self.trained_on = params.get(PARAM + "trained_on") or (local.trained_on if local else None)
        self.precision = params.get(PARAM + "precision") or (local.precision if local else "unknown")
        self.platform = metadata.get("platform", "")
        self._probs_dtype = _DTYPES[tensors[names.PROBS][0]]
        self.device = f"{ep} [{self.platform or 'unknown platform'}]"

    # ------------------------------------------------------------------ inference
    def _ensure_ready(self) -> None:
        if self._closed:
            raise RuntimeError(f"the triton backend for {self.endpoint} was closed")
        if self._stale:  # the last call lost the server: reconnect and re-check before sending tiles
            self._connect()

    def _inputs(self, images: np.ndarray, ratio: np.ndarray) -> tuple[list[Any], list[Any]]:
        """Request tensors, serialised now (copies): the caller may overwrite its buffers next."""
        self.check_batch(images, ratio)
        m = self._module
        image_in = m.InferInput(names.IMAGE, list(images.shape), "FP16")
        image_in.set_data_from_numpy(np.ascontiguousarray(images, dtype=np.float16))
        ratio_in = m.InferInput(names.RATIO, list(ratio.shape), "FP32")
        ratio_in.set_data_from_numpy(np.ascontiguousarray(ratio, dtype=np.float32))
        return [image_in, ratio_in], [m.InferRequestedOutput(names.PROBS)]

    def _send(self, request: tuple[list[Any], list[Any]], batch: int) -> np.ndarray:
        inputs, outputs = request
        ep = self.endpoint
        try:
            result = self._call("infer", ep.model, inputs, model_version=ep.version, outputs=outputs)
        except Exception as e:
            raise self._failure(e) from e
        probs = result.as_numpy(names.PROBS)
        if probs is None or probs.shape != (batch, self.n_classes, self.tile, self.tile):
            raise TritonError(f"{ep} answered a batch of {batch} with {names.PROBS} of shape "
                              f"{None if probs is None else list(probs.shape)}")
        return probs

    def _failure(self, exc: BaseException) -> TritonError:
        """The error for a failed request; a lost connection makes the next call reconnect."""
        ep = self.endpoint
        if isinstance(exc, TritonError):
            return exc
        status = str(exc.status()) if isinstance(exc, InferenceServerException) else ""
        if _is_timeout(exc):
            self._stale = True
            self._drop_clients()
            return TritonError(f"{ep}: no answer within {self.timeout:g} s (the frame is not finished): the server "
                               "is overloaded or stuck; raise backend_options={'timeout': ...} or check the server")
        if not isinstance(exc, InferenceServerException) or "UNAVAILABLE" in status or "CANCELLED" in status:
            self._stale = True  # a socket error, a reset mid-answer, a refused connection: the server is gone
            self._drop_clients()
            return TritonError(f"lost {ep} during a frame ({_reason(exc)}); the frame is not finished. The next "
                               "call reconnects and re-checks the model: segment the frame again once the server "
                               "is back")
        self._stale = True  # e.g. the model was unloaded: re-check readiness next time
        return TritonError(f"{ep} refused the request: {_reason(exc)}")

    def infer(self, images: np.ndarray, ratio: np.ndarray) -> np.ndarray:
        self._ensure_ready()
        return self._send(self._inputs(images, ratio), images.shape[0])

    def infer_many(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[np.ndarray]:
        """Up to ``in_flight`` requests outstanding; results in order. A failure cancels the
        requests not yet sent and raises `TritonError`."""
        self._ensure_ready()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.in_flight, thread_name_prefix="phaseedge-triton")
        pending: deque[Future] = deque()
        try:
            for images, ratio in batches:
                pending.append(self._pool.submit(self._send, self._inputs(images, ratio), images.shape[0]))
                if len(pending) >= self.in_flight:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:  # an error or an early close: what was not sent is not sent
                fut.cancel()

    def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._drop_clients()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "server": self.endpoint.address, "protocol": self.endpoint.protocol,
                "model": self.endpoint.model, "version": self.endpoint.version or "latest",
                "platform": self.platform, "in_flight": self.in_flight}
