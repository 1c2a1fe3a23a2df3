"""Models that take any tile size: the Segmenter picks, switches and refuses sizes (tiny ONNX graphs)."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_graphs import write_graph

from phaseedge import Segmenter, sidecar


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    d = tmp_path_factory.mktemp("sizes")
    return {
        "affine": write_graph(d / "affine.onnx", "affine", tile=32, n=2, multiple=8, max_tile=256, halo=5),
        "ratio": write_graph(d / "ratio.onnx", "ratio", tile=32, n=3, multiple=8, max_tile=256, halo=5),
        "fixed": write_graph(d / "fixed.onnx", "affine", tile=32, n=2),
    }


def _frame(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(np.uint16)


@pytest.mark.parametrize("kind", ["affine", "ratio"])
@pytest.mark.parametrize("shape", [(37, 53), (200, 131), (301, 300)])
def test_a_pointwise_model_gives_bit_identical_results_for_every_tile_size(graphs, kind, shape):
    img = _frame(shape, seed=shape[0])
    ratio = None if kind == "affine" else [0.5, 0.3, 0.2]
    runs = {}
    for tile in (32, 40, 64, 104, 256, None):  # None: the size the Segmenter picks
        with Segmenter(graphs[kind], tile=tile) as seg:
            r = seg.segment(img, ratio=ratio, return_probabilities=True)
            runs[tile or seg.tile] = r
    ref = runs[32]
    for tile, r in runs.items():
        assert np.array_equal(r.labels, ref.labels), tile
        assert np.array_equal(r.probabilities, ref.probabilities), tile
        assert np.array_equal(r.counts, ref.counts), tile
    with Segmenter(graphs["fixed"], blend="center") as seg:  # and the fixed-tile graph says the same
        fixed = seg.segment(img, return_probabilities=True) if kind == "affine" else None
    if fixed is not None:
        assert np.array_equal(fixed.labels, ref.labels) and np.array_equal(fixed.probabilities, ref.probabilities)


def test_the_segmenter_picks_a_tile_per_frame_from_the_measured_halo(graphs):
    with Segmenter(graphs["affine"]) as seg:
        assert seg.backend.halo == 5 and list(seg.backend.allowed_tiles()) == list(range(32, 257, 8))
        for shape in ((120, 500), (40, 40), (600, 257)):
            grid, blend = seg.tiling_for(*shape)
            seg.segment(_frame(shape))
            assert seg.tile == grid.tile and blend == "center" and grid.overlap == 10 / grid.tile
        assert seg.tiling_for(40, 40)[0].tile == 40 and seg.tiling_for(40, 40)[0].n_tiles == 1


def test_tile_sizes_a_model_does_not_take_are_refused_with_the_sizes_it_does(graphs):
    with Segmenter(graphs["affine"], tile=36) as seg, pytest.raises(ValueError, match="multiples of 8 from 32 to 256"):
        seg.segment(_frame((50, 50)))
    with Segmenter(graphs["affine"], tile=512) as seg, pytest.raises(ValueError, match="from 32 to 256"):
        seg.segment(_frame((50, 50)))
    with Segmenter(graphs["fixed"], tile=64) as seg, pytest.raises(ValueError, match="only 32"):
        seg.segment(_frame((50, 50)))
    with pytest.raises(ValueError, match="not both"):
        Segmenter(graphs["affine"], overlap=0.25, halo=4)
    for bad in (-8, 0):  # 0 is not "unset": plan would otherwise pick a tile itself
        with pytest.raises(ValueError, match="tile must be a whole number of pixels >= 1"):
            Segmenter(graphs["affine"], tile=bad)


def test_a_sidecar_range_must_fit_the_training_tile(graphs):
    sc = sidecar.load(graphs["affine"])
    assert sc.tile_sizes() == range(32, 257, 8) and sc.inputs[0].shape == ("B", 1, "H", "W")
    for bad, match in (({"tile_multiple": 5}, "tile_multiple"), ({"max_tile": 250}, "max_tile"),
                       ({"max_tile": 16}, "max_tile"), ({"halo": 128}, "halo"),
                       ({"tile_multiple": None, "max_tile": None}, "contract")):
        with pytest.raises(sidecar.SidecarError, match=match):
            sidecar.Sidecar.from_dict({**sc.to_dict(), **bad})


def test_eval_overlap_auto_scores_the_tiling_the_runtime_deploys(graphs):
    """`phaseedge-train eval --overlap auto` keeps the Segmenter's default: big tiles from the
    measured halo, as `phaseedge segment` runs the graph; a number keeps the training tile."""
    import argparse

    pytest.importorskip("torch")
    from phaseedge.train.evaluate import open_segmenter, parse_overlap

    assert parse_overlap("auto") is None and parse_overlap("0.5") == 0.5
    with pytest.raises(argparse.ArgumentTypeError, match="or 'auto'"):
        parse_overlap("big")
    with open_segmenter(graphs["ratio"], parse_overlap("auto")) as deployed, \
            open_segmenter(graphs["ratio"], parse_overlap("0.25")) as fixed, Segmenter(graphs["ratio"]) as cli:
        def tiling(seg: Segmenter) -> tuple[int, float, str]:
            grid, blend = seg.tiling_for(300, 301)
            return grid.tile, grid.overlap, blend

        assert tiling(deployed) == tiling(cli) and tiling(deployed)[0] > 32 and tiling(deployed)[2] == "center"
        assert tiling(fixed) == (32, 0.25, "gaussian")
