"""Property-based checks (hypothesis): any ratio and any frame is either segmented into labels
of the frame's shape with fractions summing to 1, or refused with ValueError / TypeError."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_graphs import write_graph

from phaseedge import Segmenter, ratio

NAMES = ["ferrite", "martensite", "bainite"]


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    graph = write_graph(tmp_path_factory.mktemp("g") / "ratio.onnx", "ratio", tile=32, n=3, max_batch=4,
                        class_names=NAMES)
    with Segmenter(graph) as s:
        yield s


numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64), st.integers(-5, 100))
ratios = st.one_of(
    st.none(),
    st.lists(numbers, min_size=0, max_size=5),
    st.dictionaries(st.sampled_from(NAMES + ["FERRITE", "pearlite", ""]), numbers, max_size=4),
    st.text(max_size=5),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(r=ratios)
def test_any_ratio_is_a_valid_ratio_or_refused(r):
    try:
        out = ratio.validate(r, 3, NAMES)
    except (ValueError, TypeError):
        return
    assert out is None or (out.shape == (3,) and out.dtype == np.float32 and np.isfinite(out).all()
                           and (out >= 0).all() and abs(float(out.sum()) - 1) < 1e-5)


dtypes = st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int32, np.bool_, np.complex64])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(0, 80), w=st.integers(0, 80), dtype=dtypes, extra=st.sampled_from([(), (1,), (3,), (2,)]),
       fill=st.sampled_from(["random", "constant", "nan"]), r=ratios)
def test_any_frame_is_segmented_or_refused(seg, h, w, dtype, extra, fill, r):
    rng = np.random.default_rng(h * 100 + w)
    shape = (h, w, *extra)
    if fill == "random":
        frame = (rng.random(shape) * 200).astype(dtype)
    elif fill == "constant":
        frame = np.full(shape, 7, dtype)
    else:
        frame = np.full(shape, np.nan).astype(dtype) if np.issubdtype(dtype, np.floating) else np.zeros(shape, dtype)
    try:
        res = seg.segment(frame, ratio=r)
    except (ValueError, TypeError):
        return
    assert res.labels.shape == (h, w) and res.labels.dtype == np.uint8
    assert int(res.labels.max()) < 3
    assert sum(res.fractions.values()) == pytest.approx(1.0)
