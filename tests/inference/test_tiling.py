"""Tile grid geometry against hand-computed tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from midog.inference.tiling import (
    grid_origins_1d,
    l0_from_level,
    l0_from_tile,
    level_from_l0,
    make_tile_grid,
    ownership_rects,
    plan_read,
    tile_from_l0,
)

# slide_mpp, model_mpp, level, downsample -> level px per tile px, read size (level px), l0 px per tile px
PLAN_TABLE = [
    (0.25, 0.25, 0, 1.0, 1.0, 512, 1.0),
    (0.5, 0.25, 0, 1.0, 0.5, 256, 0.5),
    (0.125, 0.25, 0, 1.0, 2.0, 1024, 2.0),
    # level 1 of a 0.0625 µm/px slide is 0.125 µm/px: downsampled 2x from there.
    (0.0625, 0.25, 1, 2.0, 2.0, 1024, 4.0),
    # 512 * (0.25 / 0.2502 - 1) = -0.41 px of drift: read as it is.
    (0.2502, 0.25, 0, 1.0, 1.0, 512, 1.0),
    # 512 * 0.25 / 0.26 = 492.3 level px, read as 493.
    (0.26, 0.25, 0, 1.0, 0.25 / 0.26, 493, 0.25 / 0.26),
    # CMU-1-Small-Region: 512 * 0.25 / 0.499 = 256.5 level px, read as 257.
    (0.499, 0.25, 0, 1.0, 0.25 / 0.499, 257, 0.25 / 0.499),
]


@pytest.mark.parametrize(
    ("slide_mpp", "model_mpp", "level", "downsample", "level_per_tile", "read_size", "l0_per_tile"),
    PLAN_TABLE,
)
def test_plan_read_table(slide_mpp, model_mpp, level, downsample, level_per_tile, read_size, l0_per_tile):
    plan = plan_read(slide_mpp, model_mpp, level, downsample, tile_size_px=512, overlap_px=64)
    assert plan.level_px_per_tile_px == pytest.approx(level_per_tile)
    assert plan.read_size_px == read_size
    assert plan.l0_per_tile_px == pytest.approx(l0_per_tile)


def test_plan_read_identity_needs_no_resampling():
    plan = plan_read(0.25, 0.25, 0, 1.0)
    assert not plan.needs_resampling


def test_plan_read_stride_and_extent():
    plan = plan_read(0.5, 0.25, 0, 1.0, tile_size_px=512, overlap_px=64)
    assert plan.l0_tile_extent == pytest.approx(256.0)
    assert plan.l0_stride == pytest.approx(224.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"slide_mpp": 0.0}, "µm/px must be positive"),
        ({"level_downsample": -1.0}, "downsample must be positive"),
        ({"tile_size_px": 0}, "tile size"),
        ({"overlap_px": 512}, "overlap must be in"),
        ({"overlap_px": -1}, "overlap must be in"),
    ],
)
def test_plan_read_rejects_invalid(kwargs, message):
    arguments = {"slide_mpp": 0.25, "model_mpp": 0.25, "level": 0, "level_downsample": 1.0} | kwargs
    with pytest.raises(ValueError, match=message):
        plan_read(**arguments)


# start, length, tile extent, stride -> origins (all level-0 px)
ORIGINS_TABLE = [
    (0, 1000, 512, 448, [0, 448, 896]),
    (0, 700, 512, 448, [0, 448]),
    (0, 512, 512, 448, [0]),
    (0, 513, 512, 448, [0, 448]),
    (0, 960, 512, 448, [0, 448]),
    (0, 961, 512, 448, [0, 448, 896]),
    (0, 100, 512, 448, [0]),
    (3000, 2000, 512, 448, [3000, 3448, 3896, 4344, 4792]),
    (0, 1000, 256, 224, [0, 224, 448, 672, 896]),
    # Fractional stride: 5 + round([0, 7.5, 15, 22.5]).
    (5, 30, 10.5, 7.5, [5, 13, 20, 28]),
]


@pytest.mark.parametrize(("start", "length", "extent", "stride", "expected"), ORIGINS_TABLE)
def test_grid_origins_table(start, length, extent, stride, expected):
    origins = grid_origins_1d(start, length, extent, stride)
    assert origins.tolist() == expected


@pytest.mark.parametrize(("start", "length", "extent", "stride", "expected"), ORIGINS_TABLE)
def test_grid_origins_cover_interval(start, length, extent, stride, expected):
    origins = grid_origins_1d(start, length, extent, stride)
    assert origins[-1] + extent >= start + length


def test_grid_origins_reject_empty_length():
    with pytest.raises(ValueError, match="must be positive"):
        grid_origins_1d(0, 0, 512, 448)


def test_make_tile_grid_slide_edge():
    # 1000 x 700 px at the model's µm/px, 512 px tiles, 64 px overlap.
    grid = make_tile_grid((0, 0, 1000, 700), plan_read(0.25, 0.25, 0, 1.0, 512, 64))
    assert [(tile.l0_x, tile.l0_y) for tile in grid.tiles] == [
        (0, 0), (448, 0), (896, 0), (0, 448), (448, 448), (896, 448),
    ]  # fmt: skip


def test_make_tile_grid_starts_at_bounds():
    grid = make_tile_grid((3000, 2000, 2000, 1500), plan_read(0.25, 0.25, 0, 1.0, 512, 64))
    assert grid.l0_xs.tolist() == [3000, 3448, 3896, 4344, 4792]
    assert grid.l0_ys.tolist() == [2000, 2448, 2896, 3344]


def test_make_tile_grid_row_major_indices():
    grid = make_tile_grid((0, 0, 1000, 700), plan_read(0.25, 0.25, 0, 1.0, 512, 64))
    assert [(tile.index, tile.row, tile.col) for tile in grid.tiles[2:4]] == [(2, 0, 2), (3, 1, 0)]


def test_make_tile_grid_rejects_empty_bounds():
    with pytest.raises(ValueError, match="non-empty"):
        make_tile_grid((0, 0, 0, 10), plan_read(0.25, 0.25, 0, 1.0))


def test_l0_footprint_at_half_resolution():
    grid = make_tile_grid((0, 0, 1000, 1000), plan_read(0.5, 0.25, 0, 1.0, 512, 64))
    assert grid.l0_footprint(grid.tiles[1]) == (224, 0, 224 + 256.0, 256.0)


# tile xy, l0 origin, l0 px per tile px -> l0 xy
L0_FROM_TILE_TABLE = [
    ((0.0, 0.0), (-256, -256), 1.0, (-256.0, -256.0)),
    ((356.0, 356.0), (-256, -256), 1.0, (100.0, 100.0)),
    ((512.0, 100.0), (1000, 2000), 0.5, (1256.0, 2050.0)),
    ((10.25, 3.0), (0, 0), 2.0, (20.5, 6.0)),
]


@pytest.mark.parametrize(("tile_xy", "origin", "scale", "expected"), L0_FROM_TILE_TABLE)
def test_l0_from_tile_table(tile_xy, origin, scale, expected):
    l0_xy = l0_from_tile(np.array([tile_xy]), origin, scale)
    assert l0_xy.tolist() == [list(expected)]


@pytest.mark.parametrize(("tile_xy", "origin", "scale", "expected"), L0_FROM_TILE_TABLE)
def test_tile_from_l0_inverts(tile_xy, origin, scale, expected):
    tile_back = tile_from_l0(np.array([expected]), origin, scale)
    assert tile_back.tolist() == [list(tile_xy)]


def test_level_from_l0_table():
    level_xy = level_from_l0(np.array([[1000.0, 2000.0], [1004.0, 2002.0]]), (1000, 2000), 4.0)
    assert level_xy.tolist() == [[0.0, 0.0], [1.0, 0.5]]


def test_l0_from_level_inverts():
    l0_xy = l0_from_level(np.array([[1.0, 0.5]]), (1000, 2000), 4.0)
    assert l0_xy.tolist() == [[1004.0, 2002.0]]


def test_ownership_two_tiles_split_at_overlap_middle():
    # Tiles at x = 0 and 448, 512 px wide: the overlap is [448, 512), its middle 480.
    grid = make_tile_grid((0, 0, 960, 512), plan_read(0.25, 0.25, 0, 1.0, 512, 64))
    rects = ownership_rects(grid, np.array([True, True]))
    assert rects.tolist() == [[-math.inf, -math.inf, 480.0, math.inf], [480.0, -math.inf, math.inf, math.inf]]


def test_ownership_margin_widens_bounded_sides():
    grid = make_tile_grid((0, 0, 960, 512), plan_read(0.25, 0.25, 0, 1.0, 512, 64))
    rects = ownership_rects(grid, np.array([True, True]), l0_margin=8.0)
    assert rects[:, [0, 2]].tolist() == [[-math.inf, 488.0], [472.0, math.inf]]


def test_ownership_skipped_neighbour_leaves_side_open():
    grid = make_tile_grid((0, 0, 960, 512), plan_read(0.25, 0.25, 0, 1.0, 512, 64))
    rects = ownership_rects(grid, np.array([True, False]))
    assert rects[0].tolist() == [-math.inf, -math.inf, math.inf, math.inf]


def test_ownership_two_by_two_corner_tile():
    grid = make_tile_grid((0, 0, 960, 960), plan_read(0.25, 0.25, 0, 1.0, 512, 64))
    rects = ownership_rects(grid, np.ones(4, dtype=bool))
    assert rects[3].tolist() == [480.0, 480.0, math.inf, math.inf]
