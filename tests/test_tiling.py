"""Tile grid, blend windows, batching and band bookkeeping (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from phaseedge.tiling import TileGrid, tile_starts, validate_overlap


@pytest.mark.parametrize("length,tile,overlap", [
    (1, 64, 0.25), (63, 64, 0.5), (64, 64, 0.25), (65, 64, 0.25), (511, 96, 0.4), (1000, 128, 0.0),
    (4096, 512, 0.25), (3072, 512, 0.5), (237, 80, 0.9),
])
def test_starts_cover_the_axis_with_bounded_steps(length, tile, overlap):
    s = tile_starts(length, tile, overlap)
    assert s[0] == 0
    if length <= tile:
        assert s.tolist() == [0]
        return
    assert s[-1] + tile == length  # last tile ends at the border
    steps = np.diff(s)
    assert np.all(steps >= 1)
    assert np.all(steps <= max(1, tile * (1 - overlap)) + 1)  # rounding of evenly spread steps
    covered = np.zeros(length, bool)
    for a in s:
        covered[a:a + tile] = True
    assert covered.all()


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_overlap_outside_unit_interval_is_refused(bad):
    with pytest.raises(ValueError, match="overlap"):
        validate_overlap(bad)


def test_overlap_must_be_a_number():
    with pytest.raises(TypeError):
        validate_overlap("0.25")
    with pytest.raises(TypeError):
        validate_overlap(True)


@pytest.mark.parametrize("shape,tile,batch", [
    ((700, 1300), 128, 4), ((700, 1300), 128, 32), ((100, 60), 128, 8), ((300, 130), 64, 3), ((64, 64), 64, 1),
])
def test_batches_partition_tiles_and_bands_hold_them(shape, tile, batch):
    g = TileGrid.for_frame(*shape, tile, 0.25)
    batches = g.batches(batch)
    flat = [k for b in batches for k in range(b.start, b.stop)]
    assert flat == list(range(g.n_tiles))
    assert all(1 <= b.stop - b.start <= batch for b in batches)
    cols = len(g.xs)
    band = g.band_height(batches)
    top = 0
    for b in batches:
        rows = {k // cols for k in range(b.start, b.stop)}
        # a batch is inside one tile row or made of whole rows
        assert len(rows) == 1 or (b.start % cols == 0 and b.stop % cols == 0)
        assert top == g.final_row_after(b.start)
        assert min(int(g.ys[(b.stop - 1) // cols]) + tile, shape[0]) - top <= band  # batch fits the band
        top = g.final_row_after(b.stop)
    assert top == shape[0]
    if cols >= batch:  # wide frames: the band is one tile high
        assert band == min(tile, shape[0])


def test_rows_become_final_only_after_the_last_tile_touching_them():
    g = TileGrid.for_frame(500, 300, 100, 0.5)
    origins = g.origins
    for stop in range(1, g.n_tiles + 1):
        final = g.final_row_after(stop)
        later = origins[stop:]
        if len(later):
            assert later[:, 0].min() >= final  # no later tile reaches above `final`


@pytest.mark.parametrize("blend", ["gaussian", "center"])
def test_windows_cover_every_pixel(blend):
    g = TileGrid.for_frame(333, 517, 96, 0.3)
    wy, wx = g.windows(blend)
    total = np.zeros((333, 517))
    for i, y in enumerate(g.ys):
        for j, x in enumerate(g.xs):
            total[y:y + 96, x:x + 96] += np.outer(wy[i], wx[j])[: 333 - y, : 517 - x]
    assert np.all(total > 0)
    if blend == "center":
        assert np.all(total == 1)  # each pixel owned by exactly one tile


def test_owned_area_partitions_the_frame():
    g = TileGrid.for_frame(333, 517, 96, 0.3)
    assert g.owned_area().sum() == 333 * 517


def test_unknown_blend_is_refused():
    with pytest.raises(ValueError, match="blend"):
        TileGrid.for_frame(100, 100, 32, 0.25).windows("max")
