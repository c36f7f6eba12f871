"""The tile grid of a whole-slide image, as pure geometry.

Frames and names:

- ``l0_``: level-0 pixels of the slide, ``x`` right and ``y`` down.
- ``level_``: pixels of the pyramid level that tiles are read from.
- ``tile_``: pixels of a tile after resampling to the model's µm/px.

Coordinates are continuous: pixel ``i`` covers ``[i, i + 1)``, so its centre
is ``i + 0.5``. The maps between frames are then plain affine maps with no
half-pixel terms, and box centres from the detector (``(x1 + x2) / 2``) map
to level 0 as they are.

A tile is ``tile_size_px`` model pixels square. Neighbours overlap by
``overlap_px`` model pixels. The grid starts at the top-left corner of the
slide's bounds (the region with image data). The last column and row may
hang over the bounds, and that overhang is filled with the detector's padding
colour. Every tile keeps its true, unclipped level-0 origin, which may
lie outside the image, and that origin is the offset used to map detections
back to level 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "L0Rect",
    "Tile",
    "TileGrid",
    "ReadPlan",
    "plan_read",
    "grid_origins_1d",
    "make_tile_grid",
    "l0_from_tile",
    "tile_from_l0",
    "level_from_l0",
    "l0_from_level",
    "ownership_rects",
]

# Below this drift (model px accumulated across one tile) the level is used as
# it is, without resampling: the error stays under half a pixel at the far edge.
MAX_UNRESAMPLED_DRIFT_PX = 0.5

# Tolerance for float round-off when counting tiles: a length that exceeds a
# whole number of strides by less than this does not get another tile.
_COUNT_EPS = 1e-9

# ``(x, y, width, height)`` in level-0 px.
L0Rect = tuple[int, int, int, int]


@dataclass(frozen=True)
class ReadPlan:
    """The level, sizes and scale with which every tile of a slide is read.

    Attributes:
        level: pyramid level the tiles are read from.
        level_downsample: level-0 px per level px of ``level``.
        tile_size_px: tile width and height in model px.
        overlap_px: overlap of neighbouring tiles in model px.
        read_size_px: width and height of the region read at ``level``, in
            level px; covers ``tile_size_px * level_px_per_tile_px`` level px,
            rounded up.
        level_px_per_tile_px: level px per model px; 1.0 means no resampling,
            above 1 the level is downsampled, below 1 it is upsampled.
        l0_per_tile_px: level-0 px per model px
            (``level_px_per_tile_px * level_downsample``).
    """

    level: int
    level_downsample: float
    tile_size_px: int
    overlap_px: int
    read_size_px: int
    level_px_per_tile_px: float
    l0_per_tile_px: float

    @property
    def needs_resampling(self) -> bool:
        """Whether the region read at ``level`` must be resized to the tile size."""
        return self.level_px_per_tile_px != 1.0

    @property
    def l0_tile_extent(self) -> float:
        """Width and height of a tile in level-0 px."""
        return self.tile_size_px * self.l0_per_tile_px

    @property
    def l0_stride(self) -> float:
        """Distance between the origins of neighbouring tiles in level-0 px."""
        return (self.tile_size_px - self.overlap_px) * self.l0_per_tile_px


@dataclass(frozen=True)
class Tile:
    """One tile of the grid.

    Attributes:
        index: position in ``TileGrid.tiles`` (row-major).
        col: column in the grid, 0 at the left of the bounds.
        row: row in the grid, 0 at the top of the bounds.
        l0_x: unclipped level-0 x of the tile's top-left corner; may be
            negative or past the image for tiles made by hand.
        l0_y: unclipped level-0 y of the tile's top-left corner.
    """

    index: int
    col: int
    row: int
    l0_x: int
    l0_y: int


@dataclass(frozen=True)
class TileGrid:
    """The tiles covering a slide's bounds and the plan to read them.

    Attributes:
        plan: level, sizes and scale shared by all tiles.
        l0_bounds: ``(x, y, width, height)`` in level-0 px of the region with
            image data; pixels outside it are painted with the padding colour.
        l0_xs: ``(num_cols,)`` int64 tile origins along x, level-0 px.
        l0_ys: ``(num_rows,)`` int64 tile origins along y, level-0 px.
        tiles: all tiles, row-major.
    """

    plan: ReadPlan
    l0_bounds: L0Rect
    l0_xs: np.ndarray
    l0_ys: np.ndarray
    tiles: tuple[Tile, ...]

    @property
    def num_cols(self) -> int:
        return len(self.l0_xs)

    @property
    def num_rows(self) -> int:
        return len(self.l0_ys)

    def l0_footprint(self, tile: Tile) -> tuple[float, float, float, float]:
        """Return a tile's ``(x0, y0, x1, y1)`` in level-0 px, unclipped."""
        extent = self.plan.l0_tile_extent
        return (tile.l0_x, tile.l0_y, tile.l0_x + extent, tile.l0_y + extent)


def plan_read(
    slide_mpp: float,
    model_mpp: float,
    level: int,
    level_downsample: float,
    tile_size_px: int = 512,
    overlap_px: int = 64,
) -> ReadPlan:
    """Work out how tiles at ``model_mpp`` are read from one pyramid level.

    Args:
        slide_mpp: µm/px of level 0.
        model_mpp: µm/px the detector expects.
        level: pyramid level to read from, usually the coarsest level that is
            not coarser than ``model_mpp``.
        level_downsample: level-0 px per level px of ``level``.
        tile_size_px: tile width and height in model px.
        overlap_px: overlap of neighbouring tiles in model px, in
            ``[0, tile_size_px)``.

    Returns:
        The read plan. When the level's resolution is within
        ``MAX_UNRESAMPLED_DRIFT_PX`` per tile of the model's, tiles are read
        without resampling and ``l0_per_tile_px`` is the level downsample.

    Raises:
        ValueError: for a non-positive resolution, downsample or tile size, or
            an overlap outside ``[0, tile_size_px)``.
    """
    if not (slide_mpp > 0 and model_mpp > 0):
        raise ValueError(f"µm/px must be positive, got slide {slide_mpp} and model {model_mpp}")
    if not level_downsample > 0:
        raise ValueError(f"level downsample must be positive, got {level_downsample} for level {level}")
    if tile_size_px < 1:
        raise ValueError(f"tile size must be at least 1 px, got {tile_size_px}")
    if not 0 <= overlap_px < tile_size_px:
        raise ValueError(
            f"overlap must be in [0, {tile_size_px}) px for {tile_size_px} px tiles, got {overlap_px}"
        )

    level_mpp = slide_mpp * level_downsample
    level_px_per_tile_px = model_mpp / level_mpp
    if tile_size_px * abs(level_px_per_tile_px - 1.0) < MAX_UNRESAMPLED_DRIFT_PX:
        level_px_per_tile_px = 1.0
    read_size_px = math.ceil(tile_size_px * level_px_per_tile_px - _COUNT_EPS)
    return ReadPlan(
        level=level,
        level_downsample=float(level_downsample),
        tile_size_px=tile_size_px,
        overlap_px=overlap_px,
        read_size_px=read_size_px,
        level_px_per_tile_px=level_px_per_tile_px,
        l0_per_tile_px=level_px_per_tile_px * level_downsample,
    )


def grid_origins_1d(l0_start: int, l0_length: int, l0_tile_extent: float, l0_stride: float) -> np.ndarray:
    """Place tile origins along one axis so that the tiles cover an interval.

    Args:
        l0_start: first level-0 px of the interval.
        l0_length: length of the interval in level-0 px, at least 1.
        l0_tile_extent: tile length in level-0 px.
        l0_stride: distance between neighbouring origins in level-0 px, at
            most ``l0_tile_extent``.

    Returns:
        ``(n,)`` int64 origins ``l0_start + round(i * l0_stride)``, with the
        fewest tiles whose union covers ``[l0_start, l0_start + l0_length)``.
        The last tile may extend past the interval.

    Raises:
        ValueError: for a non-positive length, extent or stride.
    """
    if l0_length < 1 or not (l0_tile_extent > 0 and l0_stride > 0):
        raise ValueError(
            f"length, tile extent and stride must be positive, got {l0_length}, {l0_tile_extent}, {l0_stride}"
        )
    if l0_length <= l0_tile_extent:
        num_tiles = 1
    else:
        num_tiles = 1 + math.ceil((l0_length - l0_tile_extent) / l0_stride - _COUNT_EPS)
    steps = np.arange(num_tiles, dtype=np.float64) * l0_stride
    return l0_start + np.floor(steps + 0.5).astype(np.int64)


def make_tile_grid(l0_bounds: L0Rect, plan: ReadPlan) -> TileGrid:
    """Lay tiles over the slide's bounds.

    Args:
        l0_bounds: ``(x, y, width, height)`` in level-0 px of the region with
            image data.
        plan: the read plan from ``plan_read``.

    Returns:
        The grid, starting at the top-left corner of the bounds, row-major.

    Raises:
        ValueError: for empty bounds.
    """
    l0_x, l0_y, l0_width, l0_height = (int(v) for v in l0_bounds)
    if l0_width < 1 or l0_height < 1:
        raise ValueError(f"slide bounds must be non-empty, got {l0_bounds}")
    l0_xs = grid_origins_1d(l0_x, l0_width, plan.l0_tile_extent, plan.l0_stride)
    l0_ys = grid_origins_1d(l0_y, l0_height, plan.l0_tile_extent, plan.l0_stride)
    tiles = tuple(
        Tile(index=row * len(l0_xs) + col, col=col, row=row, l0_x=int(x), l0_y=int(y))
        for row, y in enumerate(l0_ys)
        for col, x in enumerate(l0_xs)
    )
    return TileGrid(
        plan=plan, l0_bounds=(l0_x, l0_y, l0_width, l0_height), l0_xs=l0_xs, l0_ys=l0_ys, tiles=tiles
    )


def l0_from_tile(tile_xy: np.ndarray, l0_origin_xy: tuple[float, float], l0_per_tile_px: float) -> np.ndarray:
    """Map tile px to level-0 px.

    Args:
        tile_xy: ``(N, 2)`` float ``x, y`` in tile px.
        l0_origin_xy: the tile's unclipped top-left corner in level-0 px.
        l0_per_tile_px: level-0 px per tile px.

    Returns:
        ``(N, 2)`` float64 ``x, y`` in level-0 px.
    """
    return np.asarray(tile_xy, dtype=np.float64) * l0_per_tile_px + np.asarray(l0_origin_xy, dtype=np.float64)


def tile_from_l0(l0_xy: np.ndarray, l0_origin_xy: tuple[float, float], l0_per_tile_px: float) -> np.ndarray:
    """Map level-0 px to tile px; the inverse of ``l0_from_tile``."""
    return (np.asarray(l0_xy, dtype=np.float64) - np.asarray(l0_origin_xy, dtype=np.float64)) / l0_per_tile_px


def level_from_l0(
    l0_xy: np.ndarray, l0_origin_xy: tuple[float, float], level_downsample: float
) -> np.ndarray:
    """Map level-0 px to px of a region read at a level from ``l0_origin_xy``.

    Args:
        l0_xy: ``(N, 2)`` or ``(2,)`` float ``x, y`` in level-0 px.
        l0_origin_xy: level-0 position of the region's top-left corner.
        level_downsample: level-0 px per level px.

    Returns:
        Float64 array of the same shape, in px of the region.
    """
    return (
        np.asarray(l0_xy, dtype=np.float64) - np.asarray(l0_origin_xy, dtype=np.float64)
    ) / level_downsample


def l0_from_level(
    level_xy: np.ndarray, l0_origin_xy: tuple[float, float], level_downsample: float
) -> np.ndarray:
    """Map px of a region read at a level to level-0 px; the inverse of ``level_from_l0``."""
    return np.asarray(level_xy, dtype=np.float64) * level_downsample + np.asarray(
        l0_origin_xy, dtype=np.float64
    )


def ownership_rects(grid: TileGrid, selected: np.ndarray, l0_margin: float = 0.0) -> np.ndarray:
    """Give each tile the part of the plane where its detections are kept.

    Between two neighbouring tiles that are both processed, the boundary is
    the middle of their overlap. A detection within ``overlap / 2`` of a
    tile's inner edge therefore belongs to the neighbour, where it lies away
    from the border. On sides without a processed neighbour the region is unbounded.
    ``l0_margin`` widens every bounded side so that a figure found by both
    tiles right at the boundary is kept by both and merged afterwards,
    instead of being dropped by both when their centre estimates fall on
    opposite sides.

    Args:
        grid: the tile grid.
        selected: ``(len(grid.tiles),)`` bool, tiles that are processed
            (skipped background tiles are not neighbours).
        l0_margin: widening of bounded sides in level-0 px, at least 0.

    Returns:
        ``(len(grid.tiles), 4)`` float64 ``x0, y0, x1, y1`` in level-0 px,
        ``-inf``/``inf`` on open sides. A detection at ``(x, y)`` is kept by
        its tile when ``x0 <= x < x1`` and ``y0 <= y < y1``.
    """
    selected = np.asarray(selected, dtype=bool).reshape(grid.num_rows, grid.num_cols)
    extent = grid.plan.l0_tile_extent
    # Middle of the overlap between column c and c + 1 (row r and r + 1).
    x_seams = (grid.l0_xs[1:] + grid.l0_xs[:-1] + extent) / 2.0
    y_seams = (grid.l0_ys[1:] + grid.l0_ys[:-1] + extent) / 2.0

    rects = np.empty((grid.num_rows, grid.num_cols, 4), dtype=np.float64)
    rects[..., 0:2] = -np.inf
    rects[..., 2:4] = np.inf
    for row in range(grid.num_rows):
        for col in range(grid.num_cols):
            if col > 0 and selected[row, col - 1]:
                rects[row, col, 0] = x_seams[col - 1] - l0_margin
            if row > 0 and selected[row - 1, col]:
                rects[row, col, 1] = y_seams[row - 1] - l0_margin
            if col + 1 < grid.num_cols and selected[row, col + 1]:
                rects[row, col, 2] = x_seams[col] + l0_margin
            if row + 1 < grid.num_rows and selected[row + 1, col]:
                rects[row, col, 3] = y_seams[row] + l0_margin
    return rects.reshape(-1, 4)
