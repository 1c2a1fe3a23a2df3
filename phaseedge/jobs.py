"""`JobQueue`: the bounded queue and worker thread behind `Segmenter.submit`.

Acquisition software hands frames over as they arrive and must never block longer than it
chooses: ``put`` waits for room up to a timeout (or not at all) and refuses once the queue
is closed. ``close`` lets every job already queued run, so each Future handed out resolves.
Waiting for room releases the lock ``close`` takes (a Condition), so neither ``close`` nor
other non-blocking puts wait behind a full queue.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

CLOSED = "this Segmenter is closed; create a new one"


class JobQueue:
    """Runs ``job()`` callables one at a time on a worker thread started on first use."""

    def __init__(self, size: int, name: str = "phaseedge-submit") -> None:
        self.size, self.name = size, name
        self._space = threading.Condition(threading.Lock())  # a slot freed, or the queue closed
        self._closed = False
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None

    def put(self, job: Callable[[], Any], block: bool = True, timeout: float | None = None) -> Future:
        """Queue ``job``; its Future resolves to what it returns (or raises). Raises queue.Full
        when there is no room (``block=False`` or the timeout passed), RuntimeError once closed."""
        if block and timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be None or a non-negative number of seconds, got {timeout!r}")
        fut: Future = Future()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._space:
            while True:
                if self._closed:
                    raise RuntimeError(CLOSED)
                try:
                    self._started().put_nowait((fut, job))
                    return fut
                except queue.Full:
                    left = None if deadline is None else deadline - time.monotonic()
                    if not block or (left is not None and left <= 0):
                        raise
                self._space.wait(left)

    def close(self) -> None:
        """Refuse new jobs, run the queued ones, stop the worker. Safe to call twice, and from
        a job's own Future callback (then the jobs still queued fail as closed instead)."""
        with self._space:
            self._closed = True
            worker, q = self._worker, self._queue
            self._worker, self._queue = None, None
            self._space.notify_all()  # waiting puts wake, see closed, raise
        if worker is None or q is None:
            return
        if worker is threading.current_thread():  # cannot wait for itself
            while True:
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                if item is not None and item[0].set_running_or_notify_cancel():
                    item[0].set_exception(RuntimeError("this Segmenter was closed before the frame started"))
            q.put_nowait(None)  # the worker stops when this callback returns
        else:
            q.put(None)  # after the jobs already queued (waits while the worker frees a slot)
            worker.join()

    def _started(self) -> queue.Queue:
        """The queue, with its worker running (called under the lock)."""
        if self._worker is None or self._queue is None:
            self._queue = queue.Queue(maxsize=self.size)
            self._worker = threading.Thread(target=self._work, args=(self._queue,), name=self.name, daemon=True)
            self._worker.start()
        return self._queue

    def _work(self, q: queue.Queue) -> None:
        while True:
            item = q.get()
            with self._space:  # a slot is free: wake the puts waiting for one
                self._space.notify_all()
            if item is None:
                return
            fut, job = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(job())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
                fut.set_exception(exc)
