"""Segmenter lifecycle: a closed Segmenter refuses work; submit and close never lose a Future."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from runtime_graphs import write_graph

from phaseedge import Segmenter


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    return write_graph(tmp_path_factory.mktemp("g") / "ratio.onnx", "ratio", tile=32, n=3, max_batch=4,
                       class_names=["ferrite", "martensite", "bainite"])


def test_a_closed_segmenter_refuses_work(graph):
    seg = Segmenter(graph)
    frame = np.zeros((40, 40), np.uint16)
    seg.segment(frame)
    seg.close()
    seg.close()  # twice is fine
    for call in (lambda: seg.segment(frame), lambda: list(seg.segment_many([frame])), lambda: seg.submit(frame),
                 lambda: seg.backend):
        with pytest.raises(RuntimeError, match="closed"):
            call()
    with Segmenter(graph) as ctx:
        ctx.segment(frame)
    with pytest.raises(RuntimeError, match="closed"):
        ctx.segment(frame)


def test_ratio_by_name_equals_ratio_in_class_order(graph):
    frame = np.random.default_rng(1).integers(0, 65535, (50, 45), dtype=np.uint16)
    with Segmenter(graph) as seg:
        a = seg.segment(frame, ratio={"Bainite": 0.1, "ferrite": 0.6, "martensite": 0.3})
        b = seg.segment(frame, ratio=[0.6, 0.3, 0.1])
        assert np.array_equal(a.labels, b.labels)
        with pytest.raises(ValueError, match="pearlite"):
            seg.submit(frame, ratio={"pearlite": 1.0})


def test_submit_racing_close_never_leaves_a_future_unresolved(graph):
    frame = np.random.default_rng(2).integers(0, 65535, (40, 40), dtype=np.uint16)
    for _ in range(3):
        _race_submit_and_close(graph, frame)


def _race_submit_and_close(graph, frame) -> None:
    """8 threads submit 20 frames each while the main thread closes the Segmenter."""
    seg = Segmenter(graph, queue_size=2)
    futures, refused, start = [], [], threading.Barrier(9)
    lock = threading.Lock()

    def producer() -> None:
        start.wait()
        for _ in range(20):
            try:
                f = seg.submit(frame, block=True, timeout=30)
            except RuntimeError as exc:
                with lock:
                    refused.append(exc)
                continue
            with lock:
                futures.append(f)

    threads = [threading.Thread(target=producer) for _ in range(8)]
    for t in threads:
        t.start()
    start.wait()
    seg.close()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    for f in futures:  # every accepted frame resolves: a result, or the closed error
        try:
            assert f.result(timeout=30).labels.shape == (40, 40)
        except RuntimeError as exc:
            assert "closed" in str(exc)
    assert len(futures) + len(refused) == 8 * 20
    assert all("closed" in str(e) for e in refused)


def test_auto_ratio_is_the_models_own_ratio_free_estimate(graph):
    frame = np.random.default_rng(3).integers(0, 65535, (70, 90), dtype=np.uint16)
    with Segmenter(graph) as seg:
        free = seg.segment(frame, return_probabilities=True)
        auto = seg.segment(frame, ratio="auto")
        assert free.ratio_source is None and auto.ratio_source == "auto"
        soft = free.probabilities.mean(axis=(1, 2))
        np.testing.assert_allclose(auto.ratio, soft / soft.sum(), atol=0.02)  # tile means, owned-area weighted
        given = seg.segment(frame, ratio=auto.ratio)
        assert np.array_equal(given.labels, auto.labels) and given.ratio_source == "given"
        assert auto.timings["survey"] > 0


def test_partial_ratio_fixes_the_named_class_and_shares_the_rest_by_the_models_estimate(graph):
    frame = np.random.default_rng(4).integers(0, 65535, (70, 90), dtype=np.uint16)
    with Segmenter(graph) as seg:
        names = seg.class_names
        auto = seg.segment(frame, ratio="auto")
        part = seg.segment(frame, ratio={names[1]: 0.1, "rest": "auto"})
        assert part.ratio_source == "partial"
        assert part.ratio[1] == pytest.approx(0.1, abs=1e-6)
        others = [0, 2]
        np.testing.assert_allclose(part.ratio[others], 0.9 * auto.ratio[others] / auto.ratio[others].sum(), rtol=1e-5)
        given = seg.segment(frame, ratio=part.ratio)  # the completed ratio, fed as any ratio is
        assert np.array_equal(given.labels, part.labels)
        for bad, match in [({"nosuch": 0.1, "rest": "auto"}, "not a class"),
                           ({names[0]: 0.7, names[1]: 0.5, "rest": "auto"}, "sum to 1.200"),
                           ({names[0]: -0.1, "rest": "auto"}, r"\[0, 1\]"),
                           ({names[0]: 0.1, "rest": "guess"}, "rest"),
                           ({"rest": "auto"}, "at least one class"),
                           ({names[0]: 0.2, names[1]: 0.3, names[2]: 0.5, "rest": "auto"}, "every class")]:
            with pytest.raises(ValueError, match=match):
                seg.segment(frame, ratio=bad)
