"""Tile grid, blend windows, batching and band bookkeeping (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from phaseedge.hostops import owned_intervals
from phaseedge.tiling import (
    DEFAULT_OVERLAP,
    MAX_BATCH_PIXELS,
    MAX_TILE_PIXELS,
    TileGrid,
    batch_size,
    choose_tile,
    plan,
    tile_starts,
    validate_overlap,
)


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


SIZES = range(128, 2049, 16)  # what the bundled model's graph takes


def _cost(height, width, tile, overlap_px):
    g = TileGrid.for_frame(height, width, tile, overlap_px / tile)
    return g.n_tiles * tile * tile


@pytest.mark.parametrize("shape,halo", [((3072, 4096), 22), ((2048, 2048), 22), ((700, 1300), 16),
                                        ((100, 60), 8), ((3000, 2000), 40)])
def test_choose_tile_computes_the_fewest_pixels(shape, halo):
    t = choose_tile(*shape, SIZES, 2 * halo)
    best = min(_cost(*shape, s, 2 * halo) for s in SIZES)
    assert _cost(*shape, t, 2 * halo) == best
    assert t == min(s for s in SIZES if _cost(*shape, s, 2 * halo) == best)  # ties: the smaller tile


def test_the_default_frame_computes_at_most_1_15x_its_pixels():
    grid, blend = plan(3072, 4096, SIZES, 22)
    assert grid.n_tiles * grid.tile**2 / (3072 * 4096) <= 1.15
    assert (grid.tile, grid.n_tiles, blend) == (1072, 12, "center")
    old, old_blend = plan(3072, 4096, (128,), None)  # a fixed-tile model: overlap 0.25 as before
    assert (old.tile, old.n_tiles, old.overlap, old_blend) == (128, 1376, DEFAULT_OVERLAP, "gaussian")


@pytest.mark.parametrize("shape,halo", [((3072, 4096), 22), ((333, 517), 13), ((1000, 129), 30), ((97, 301), 0)])
def test_every_pixel_lies_halo_pixels_inside_the_tile_it_is_taken_from(shape, halo):
    grid, blend = plan(*shape, SIZES if max(shape) > 1000 else range(64, 513, 8), halo)
    assert blend == "center"
    for starts, length in ((grid.ys, shape[0]), (grid.xs, shape[1])):
        owned = owned_intervals(starts, grid.tile, length)
        for k, a in enumerate(starts):
            pix = np.nonzero(owned[k])[0] + a  # frame coordinates this tile owns
            inside_from_start = pix - a if a > 0 else np.full_like(pix, halo)  # the frame edge is no tile border
            inside_from_end = a + grid.tile - 1 - pix if a + grid.tile < length else np.full_like(pix, halo)
            assert np.minimum(inside_from_start, inside_from_end).min() >= halo


def test_plan_keeps_what_the_caller_fixed():
    g, b = plan(3072, 4096, SIZES, 22, overlap=0.25)  # a fraction keeps the training tile
    assert (g.tile, g.overlap, b) == (128, 0.25, "gaussian")
    g, b = plan(3072, 4096, SIZES, 22, tile=512, blend="gaussian")
    assert (g.tile, g.overlap, b) == (512, 44 / 512, "gaussian")
    g, b = plan(3072, 4096, SIZES, None, halo=8)
    assert b == "center" and g.overlap == 16 / g.tile
    with pytest.raises(ValueError, match="not both"):
        plan(100, 100, SIZES, None, overlap=0.1, halo=4)
    with pytest.raises(ValueError, match="tiles of more than 32 px"):
        plan(100, 100, (32,), None, halo=16)
    with pytest.raises(ValueError, match="halo 16 px leaves nothing"):
        plan(100, 100, SIZES, None, halo=16, tile=32)
    with pytest.raises(ValueError, match="halo"):
        plan(100, 100, SIZES, None, halo=-1)


def test_batches_of_big_tiles_stay_under_the_pixel_budget():
    assert batch_size(None, 8, 128) == 8
    assert batch_size(None, 8, 512) * 512**2 <= MAX_BATCH_PIXELS and batch_size(None, 8, 1072) == 1
    assert batch_size(3, 8, 2048) == 1 and batch_size(2, 8, 128) == 2


def test_a_pixel_overlap_is_not_lost_to_rounding():
    assert tile_starts(1000 + 936, 1000, 64 / 1000).tolist() == [0, 936]  # 1000 * (1 - 0.064) is 936


def test_plan_does_not_pick_tiles_past_the_memory_cap():
    grid, _ = plan(2048, 2048, SIZES, 20)  # one 2048 tile would compute the fewest pixels, but needs GBs
    assert grid.tile**2 <= MAX_TILE_PIXELS and grid.n_tiles == 4
    assert plan(2048, 2048, SIZES, 20, tile=2048)[0].n_tiles == 1  # asked for: given


def test_spacing_is_checked_once_for_the_segmenter_and_plan():
    from phaseedge import Segmenter
    from phaseedge.tiling import validate_spacing

    assert validate_spacing(None, None) == (None, None)
    assert validate_spacing(0.5, None) == (0.5, None)
    halo = validate_spacing(None, np.int64(6))[1]
    assert halo == 6 and type(halo) is int
    for bad in (-1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="halo must be a whole number"):
            validate_spacing(None, bad)
        with pytest.raises(ValueError, match="halo must be a whole number"):
            Segmenter(object(), halo=bad)  # refused at construction, before any backend is touched
        with pytest.raises(ValueError, match="halo must be a whole number"):
            plan(100, 100, SIZES, None, halo=bad)
    with pytest.raises(ValueError, match=r"overlap must be in \[0, 1\)"):
        Segmenter(object(), overlap=1.0)
