"""Hooks for acquisition software.

pycromanager image processors have the form ``fn(image, metadata) -> (image, metadata)``;
`pycromanager_processor` returns one that segments each frame and adds the phase
fractions to the metadata, passing the image through unchanged. With ``blocking=False``
the frame passes through at once and its result arrives later, in frame order, through
a callback: the acquisition thread never waits for the model.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np

from phaseedge.segmenter import Segmenter

log = logging.getLogger(__name__)

Processor = Callable[[np.ndarray, dict[str, Any]], tuple[np.ndarray, dict[str, Any]]]
#: ``on_result(metadata_in, summary)`` for the non-blocking mode; summary as ``metadata[key]``
ResultCallback = Callable[[dict[str, Any], dict[str, Any]], None]


def _summary(future_or_result: Any) -> dict[str, Any]:
    summary = future_or_result.to_dict()
    out = {k: summary[k] for k in ("fractions", "class_names", "ratio", "ratio_mode", "backend")}
    out["seconds"] = future_or_result.timings["total"]
    return out


def pycromanager_processor(segmenter: Segmenter, ratio: Any = None, key: str = "phaseedge",
                           on_error: str = "record", blocking: bool = True,
                           on_result: ResultCallback | None = None) -> Processor:
    """A ``fn(image, metadata) -> (image, metadata)`` for pycromanager.

    Blocking (default): segments the frame and adds ``metadata[key]`` = ``{"fractions":
    {phase: fraction}, "class_names", "ratio", "ratio_mode", "backend", "seconds"}``
    (JSON-able, as pycromanager stores metadata as JSON).

    ``blocking=False``: the frame is queued (`Segmenter.submit`, which copies it) and returned
    at once with ``metadata[key] = {"queued": n}``; ``on_result(metadata, summary)`` is then
    called for every frame, in frame order, from the Segmenter's worker thread.

    ``on_error="record"`` keeps the acquisition running whatever goes wrong with a frame (bad
    frame, backend or CUDA error): the frame gets ``{"error": reason}`` and a warning is
    logged; ``"raise"`` propagates (blocking mode) or hands the error to ``on_result``'s
    caller as the exception (non-blocking). The incoming metadata dict is not modified.
    """
    if on_error not in ("record", "raise"):
        raise ValueError(f"on_error must be 'record' or 'raise', got {on_error!r}")
    if not blocking and on_result is None:
        raise ValueError("blocking=False needs on_result(metadata, summary) to receive the results")
    from phaseedge import ratio as ratio_mod

    # refuse a bad ratio before acquisition starts
    checked = ratio_mod.validate(ratio, segmenter.n_classes, segmenter.class_names)

    def failed(exc: BaseException) -> dict[str, Any]:
        log.warning("phaseedge: frame not segmented: %s", exc)
        return {"error": str(exc) or type(exc).__name__}

    if blocking:
        def process(image: np.ndarray, metadata: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
            out = dict(metadata)
            try:
                out[key] = _summary(segmenter.segment(image, ratio=checked))
            except Exception as exc:
                if on_error == "raise":
                    raise
                out[key] = failed(exc)
            return image, out

        return process

    lock = threading.Lock()
    pending: deque[tuple[Future, dict[str, Any]]] = deque()
    counter = [0]

    def deliver(_: Future) -> None:
        # results leave in frame order: pop finished futures from the front only
        while True:
            with lock:
                if not pending or not pending[0][0].done():
                    return
                fut, meta = pending.popleft()
            exc = fut.exception()
            if exc is not None and on_error == "raise":
                raise exc
            on_result(meta, failed(exc) if exc is not None else _summary(fut.result()))

    def process_async(image: np.ndarray, metadata: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        out = dict(metadata)
        try:
            fut = segmenter.submit(image, ratio=checked)
        except Exception as exc:
            if on_error == "raise":
                raise
            out[key] = failed(exc)
            return image, out
        with lock:
            counter[0] += 1
            pending.append((fut, dict(metadata)))
            out[key] = {"queued": counter[0]}
        fut.add_done_callback(deliver)
        return image, out

    return process_async
