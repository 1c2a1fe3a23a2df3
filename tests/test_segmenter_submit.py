"""submit() against a full queue: no lock held while waiting, timeouts kept, close() never waits behind it.

A gated numpy backend holds the worker on its first frame, so the queue stays full for
as long as a test wants; every wait below is bounded, and the gate is always opened.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

from phaseedge import Segmenter
from phaseedge.backends.base import Backend

FRAME = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16)


class GatedBackend(Backend):
    """probs = [x, 1 - x]; ``infer`` waits for ``gate`` (at most 30 s)."""

    name = "fake"

    def __init__(self) -> None:
        self.tile, self.n_classes, self.max_batch = 16, 2, 4
        self.class_names = ("bright", "dark")
        self.gate, self.started = threading.Event(), threading.Event()

    def infer(self, images, ratio):
        self.check_batch(images, ratio)
        self.started.set()
        self.gate.wait(30)
        x = images.astype(np.float32)
        return np.concatenate([x, 1 - x], axis=1)


def _full(seg: Segmenter, backend: GatedBackend) -> list:
    """One frame running (held at the gate), ``queue_size`` frames waiting: the queue is full."""
    futures = [seg.submit(FRAME)]
    assert backend.started.wait(10)
    futures += [seg.submit(FRAME, block=False) for _ in range(seg.queue_size)]
    return futures


def _in_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        t0 = time.monotonic()
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            out["error"] = exc
        out["seconds"] = time.monotonic() - t0

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


@pytest.fixture
def gated():
    backend = GatedBackend()
    seg = Segmenter(backend, queue_size=1)
    yield seg, backend
    backend.gate.set()
    seg.close()


def test_a_waiting_submit_does_not_block_the_others(gated):
    seg, backend = gated
    accepted = _full(seg, backend)
    waiter, waited = _in_thread(lambda: seg.submit(FRAME))  # block=True, no timeout: waits for room
    time.sleep(0.3)
    assert waiter.is_alive()

    t, out = _in_thread(lambda: seg.submit(FRAME, block=False))
    t.join(5)
    assert not t.is_alive(), "submit(block=False) waited behind a blocked submit"
    assert isinstance(out.get("error"), queue.Full) and out["seconds"] < 2

    t, out = _in_thread(lambda: seg.submit(FRAME, timeout=0.3))
    t.join(5)
    assert not t.is_alive(), "submit(timeout=0.3) waited behind a blocked submit"
    assert isinstance(out.get("error"), queue.Full) and 0.25 <= out["seconds"] < 3

    backend.gate.set()  # room again: the waiting submit gets in, everything resolves
    waiter.join(30)
    assert not waiter.is_alive() and "value" in waited
    for f in [*accepted, waited["value"]]:
        assert f.result(timeout=30).labels.shape == FRAME.shape


def test_close_wakes_a_waiting_submit_and_finishes_the_queue(gated):
    seg, backend = gated
    accepted = _full(seg, backend)
    waiter, waited = _in_thread(lambda: seg.submit(FRAME))
    time.sleep(0.3)
    closer, closed = _in_thread(seg.close)
    waiter.join(5)
    assert not waiter.is_alive(), "close() left a submit waiting on a full queue"
    assert isinstance(waited.get("error"), RuntimeError) and "closed" in str(waited["error"])
    assert closer.is_alive()  # close() finishes the frames already queued first
    backend.gate.set()
    closer.join(30)
    assert not closer.is_alive() and "error" not in closed
    for f in accepted:
        assert f.result(timeout=30).labels.shape == FRAME.shape
    with pytest.raises(RuntimeError, match="closed"):
        seg.submit(FRAME)


def test_submit_timeout_is_checked(gated):
    seg, _ = gated
    with pytest.raises(ValueError, match="timeout"):
        seg.submit(FRAME, timeout=-1)


def test_close_from_a_future_callback_resolves_every_future():
    """close() in a done-callback runs on the worker thread: it must not wait for itself."""
    backend = GatedBackend()
    seg = Segmenter(backend, queue_size=8)
    first = seg.submit(FRAME)
    assert backend.started.wait(10)
    rest = [seg.submit(FRAME) for _ in range(6)]
    ran_on, done = [], threading.Event()

    def callback(_) -> None:
        ran_on.append(threading.current_thread().name)
        seg.close()
        done.set()

    first.add_done_callback(callback)  # first is running: the callback runs on the worker
    backend.gate.set()
    assert done.wait(30), "close() in a Future's callback did not return"
    assert ran_on == ["phaseedge-submit"]
    assert first.result(timeout=30).labels.shape == FRAME.shape
    for f in rest:
        with pytest.raises(RuntimeError, match="closed"):
            f.result(timeout=30)
    with pytest.raises(RuntimeError, match="closed"):
        seg.segment(FRAME)
