"""The pycromanager processor keeps an acquisition running: every failure is recorded, and the
non-blocking mode returns each frame at once and delivers results in frame order."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from phaseedge import Segmenter
from phaseedge.adapters import pycromanager_processor
from phaseedge.backends.base import Backend


class Flaky(Backend):
    """Uniform probabilities; raises RuntimeError (as a CUDA error would) on chosen calls."""

    name = "flaky"

    def __init__(self, fail_on: set[int] | None = None, delay: threading.Event | None = None) -> None:
        self.tile, self.n_classes, self.max_batch = 16, 2, 4
        self.class_names = ("a", "b")
        self.fail_on, self.calls, self.delay = fail_on or set(), 0, delay

    def infer(self, images, ratio):
        self.calls += 1
        if self.delay is not None:
            self.delay.wait(10)
        if self.calls in self.fail_on:
            raise RuntimeError("CUDA error 700: an illegal memory access was encountered")
        p = np.zeros((images.shape[0], 2, 16, 16), np.float32)
        p[:, 0] = images[:, 0] > 0.5  # bright pixels are class 0
        p[:, 1] = 1 - p[:, 0]
        return p


def _frame(k: int) -> np.ndarray:
    f = np.zeros((16, 16), np.uint8)
    f[:, : k % 16 + 1] = 255
    return f


def test_blocking_records_a_backend_runtime_error_and_goes_on():
    seg = Segmenter(Flaky(fail_on={2}))
    fn = pycromanager_processor(seg)
    metas = [fn(_frame(k), {"i": k})[1]["phaseedge"] for k in range(3)]
    assert "fractions" in metas[0] and "CUDA error 700" in metas[1]["error"] and "fractions" in metas[2]
    with pytest.raises(RuntimeError, match="CUDA"):
        pycromanager_processor(Segmenter(Flaky(fail_on={1})), on_error="raise")(_frame(0), {})


def test_non_blocking_passes_frames_at_once_and_delivers_in_order():
    gate = threading.Event()
    seg = Segmenter(Flaky(fail_on={3}, delay=gate), queue_size=16)
    got: list[tuple[int, dict]] = []
    done = threading.Event()

    def on_result(meta, summary):
        got.append((meta["i"], summary))
        if len(got) == 6:
            done.set()

    fn = pycromanager_processor(seg, blocking=False, on_result=on_result)
    frames = [_frame(k) for k in range(6)]
    for k, f in enumerate(frames):
        img, meta = fn(f, {"i": k})
        assert img is f and meta["phaseedge"] == {"queued": k + 1}  # returned before any inference ran
    assert got == []
    gate.set()
    assert done.wait(30)
    assert [i for i, _ in got] == list(range(6))  # frame order
    assert "CUDA error 700" in got[2][1]["error"]
    for k in (0, 1, 3, 4, 5):
        assert got[k][1]["fractions"]["a"] == pytest.approx((k % 16 + 1) / 16)
    seg.close()
    with pytest.raises(ValueError, match="on_result"):
        pycromanager_processor(Segmenter(Flaky()), blocking=False)
