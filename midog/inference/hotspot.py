"""The mitotic-count hotspot: the window of fixed area with the most mitotic figures.

Grading schemes count mitotic figures in a fixed area placed where they are
densest (the "hotspot"). ``find_hotspot`` places such a window, 2 mm² by
default, on a slide from the detected figure centres alone:

1. Lay a lattice of window centres with a spacing of ``step_um`` over the
   tissue, grown by half a window on every side.
2. Count the figures in the window at every lattice centre. In each lattice
   row, a figure lies in the windows of a run of centres (an interval for a
   rectangle, a chord for a circle), and adds one to that run through a
   difference array. The cost grows with figures times lattice rows per
   window, not with windows times figures.
3. Compute each window's tissue share from the tissue mask (exactly for
   rectangles, with a summed-area table; for circles by convolving the mask
   with a disc) and drop windows below ``min_tissue_share``.
4. Take the window with the most figures. Ties go to the window with the
   larger tissue share, then to the top-most, then the left-most.
5. Move it within the connected set of windows with the same count to the
   one centred closest on its figures, so a cluster smaller than the window
   sits in its middle and not at a corner.

A window contains a figure when the figure's centre lies inside it or on its
border; ``Hotspot.count`` is recounted that way on the reported window.

Only numpy and PIL are used here, so inference never imports torch.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from midog.inference.tissue import label_components
from midog.io.writers import atomic_output

__all__ = [
    "HotspotKind",
    "HotspotShape",
    "TissueMap",
    "Hotspot",
    "MITOTIC_COUNT_AREA_MM2",
    "DEFAULT_STEP_UM",
    "DEFAULT_MIN_TISSUE_SHARE",
    "find_hotspot",
    "count_in_window",
    "figures_in_window",
    "hotspot_record",
    "write_hotspot_geojson",
    "read_hotspot_geojson",
]

logger = logging.getLogger(__name__)

HotspotKind = Literal["rectangle", "circle"]

# Default area of the mitotic count in mm². Ten high-power fields of 0.55 mm
# diameter cover 2.37 mm², the area of the veterinary consensus; other
# schemes use other areas, so ``HotspotShape.area_mm2`` sets it.
MITOTIC_COUNT_AREA_MM2 = 2.0

# Width / height of the default rectangle, the 4:3 frame of a camera field.
DEFAULT_ASPECT_RATIO = 4.0 / 3.0

# Spacing of the window centres in µm, about two cell diameters. A window
# shifted by less than this changes its count only by the figures in a strip
# this wide along its border.
DEFAULT_STEP_UM = 25.0

# Share of the window that must be tissue. Half keeps the window on the
# tumour while allowing hotspots at the tissue edge.
DEFAULT_MIN_TISSUE_SHARE = 0.5

# Largest lattice, in window centres, that ``find_hotspot`` accepts; beyond it
# it raises ValueError, because each array over the lattice takes 160 MB.
MAX_LATTICE_SIZE = 20_000_000

# Figures stamped per batch; bounds the memory of the (figure, row) arrays.
_STAMP_BATCH = 16_384

# QuPath colour of the hotspot annotation, RGB 0-255.
_HOTSPOT_COLOR_RGB = (255, 200, 0)
HOTSPOT_CLASS_NAME = "Mitotic count hotspot"


@dataclass(frozen=True)
class HotspotShape:
    """Shape and size of the counting window.

    Attributes:
        kind: ``"rectangle"`` (axis-aligned) or ``"circle"``.
        area_mm2: window area in mm².
        aspect_ratio: width / height of a rectangle; ignored for circles.
    """

    kind: HotspotKind = "rectangle"
    area_mm2: float = MITOTIC_COUNT_AREA_MM2
    aspect_ratio: float = DEFAULT_ASPECT_RATIO

    def __post_init__(self) -> None:
        if self.kind not in ("rectangle", "circle"):
            raise ValueError(f"hotspot shape must be 'rectangle' or 'circle', got {self.kind!r}")
        if not (math.isfinite(self.area_mm2) and self.area_mm2 > 0):
            raise ValueError(f"hotspot area must be a positive number of mm², got {self.area_mm2!r}")
        if not (math.isfinite(self.aspect_ratio) and self.aspect_ratio > 0):
            raise ValueError(
                f"hotspot aspect ratio (width / height) must be positive, got {self.aspect_ratio!r}"
            )

    def size_um(self) -> tuple[float, float]:
        """Return ``(width, height)`` in µm; a circle's diameter for both."""
        area_um2 = self.area_mm2 * 1e6
        if self.kind == "circle":
            diameter_um = 2.0 * math.sqrt(area_um2 / math.pi)
            return diameter_um, diameter_um
        width_um = math.sqrt(area_um2 * self.aspect_ratio)
        return width_um, area_um2 / width_um


@dataclass(frozen=True)
class TissueMap:
    """A tissue mask laid over level 0.

    Attributes:
        mask: ``(H, W)`` bool, True for tissue; pixel ``(0, 0)`` starts at
            level-0 ``(0, 0)``.
        l0_per_mask_px: level-0 px per mask px, the same along x and y.
    """

    mask: np.ndarray
    l0_per_mask_px: float

    def __post_init__(self) -> None:
        mask = np.asarray(self.mask, dtype=bool)
        if mask.ndim != 2:
            raise ValueError(f"tissue mask must be 2-D, got shape {mask.shape}")
        if not (math.isfinite(self.l0_per_mask_px) and self.l0_per_mask_px > 0):
            raise ValueError(f"l0_per_mask_px must be positive, got {self.l0_per_mask_px!r}")
        object.__setattr__(self, "mask", mask)

    def l0_tissue_bbox(self) -> tuple[float, float, float, float] | None:
        """Return ``(x0, y0, x1, y1)`` in level-0 px around all tissue, or None without tissue."""
        rows = np.flatnonzero(self.mask.any(axis=1))
        cols = np.flatnonzero(self.mask.any(axis=0))
        if len(rows) == 0:
            return None
        scale = self.l0_per_mask_px
        return cols[0] * scale, rows[0] * scale, (cols[-1] + 1) * scale, (rows[-1] + 1) * scale


@dataclass(frozen=True)
class Hotspot:
    """The counting window with the most mitotic figures on a slide.

    Attributes:
        count: figures whose centre lies inside the window or on its border.
        l0_centre_xy: ``(x, y)`` of the window centre in level-0 px.
        l0_size_px: ``(width, height)`` in level-0 px; a circle's diameter for both.
        shape: the window's shape and area.
        mpp: level-0 µm/px of the slide.
        tissue_share: share of the window's area that is tissue, 0-1; None
            when no tissue mask was given.
        figure_indices: ``(count,)`` int64 indices of the figures inside, into
            the points given to ``find_hotspot``.
    """

    count: int
    l0_centre_xy: tuple[float, float]
    l0_size_px: tuple[float, float]
    shape: HotspotShape
    mpp: float
    tissue_share: float | None
    figure_indices: np.ndarray = field(repr=False)

    @property
    def figures_per_mm2(self) -> float:
        """The count divided by the window's area."""
        return self.count / self.shape.area_mm2

    def l0_polygon(self, num_vertices: int = 72) -> np.ndarray:
        """Return the window outline as ``(K, 2)`` float64 ``x, y`` in level-0 px.

        A rectangle gives its 4 corners clockwise from the top-left (y points
        down); a circle gives ``num_vertices`` points on its border. The ring
        is not closed, so the first vertex is not repeated.
        """
        centre_x, centre_y = self.l0_centre_xy
        half_width, half_height = self.l0_size_px[0] / 2, self.l0_size_px[1] / 2
        if self.shape.kind == "rectangle":
            return np.array(
                [
                    [centre_x - half_width, centre_y - half_height],
                    [centre_x + half_width, centre_y - half_height],
                    [centre_x + half_width, centre_y + half_height],
                    [centre_x - half_width, centre_y + half_height],
                ]
            )
        angles = np.linspace(0.0, 2.0 * math.pi, num_vertices, endpoint=False)
        return np.stack(
            [centre_x + half_width * np.cos(angles), centre_y + half_width * np.sin(angles)], axis=1
        )


@dataclass(frozen=True)
class _Lattice:
    """Window centres ``l0_x0 + i * l0_step_px``, ``l0_y0 + j * l0_step_px``; array index ``[j, i]``."""

    l0_x0: float
    l0_y0: float
    l0_step_px: float
    num_x: int
    num_y: int

    def l0_xs(self) -> np.ndarray:
        return self.l0_x0 + np.arange(self.num_x) * self.l0_step_px

    def l0_ys(self) -> np.ndarray:
        return self.l0_y0 + np.arange(self.num_y) * self.l0_step_px


def _validate_points(l0_xy: np.ndarray) -> np.ndarray:
    points = np.asarray(l0_xy, dtype=np.float64)
    if points.size == 0:
        return points.reshape(0, 2)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"figure centres must have shape (N, 2), got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("figure centres contain NaN or infinite coordinates")
    return points


def _make_lattice(l0_region: tuple[float, float, float, float], l0_step_px: float) -> _Lattice:
    """Lay window centres over ``(x0, y0, x1, y1)``, centred on it, at least one per axis."""
    x0, y0, x1, y1 = l0_region
    num_x = max(1, math.floor((x1 - x0) / l0_step_px) + 1)
    num_y = max(1, math.floor((y1 - y0) / l0_step_px) + 1)
    if num_x * num_y > MAX_LATTICE_SIZE:
        raise ValueError(
            f"hotspot search over {num_x} x {num_y} window positions exceeds {MAX_LATTICE_SIZE}; "
            "use a larger step_um"
        )
    # Centre the lattice on the region so neither side is favoured.
    start_x = (x0 + x1) / 2 - (num_x - 1) * l0_step_px / 2
    start_y = (y0 + y1) / 2 - (num_y - 1) * l0_step_px / 2
    return _Lattice(start_x, start_y, l0_step_px, num_x, num_y)


def _window_counts(
    points: np.ndarray, lattice: _Lattice, half_width_px: float, half_height_px: float, circle: bool
) -> np.ndarray:
    """Count points per window centre; ``(num_y, num_x)`` int64."""
    step = lattice.l0_step_px
    num_x, num_y = lattice.num_x, lattice.num_y
    diff = np.zeros(num_y * (num_x + 1), dtype=np.int64)
    for start in range(0, len(points), _STAMP_BATCH):
        batch = points[start : start + _STAMP_BATCH]
        px, py = batch[:, 0], batch[:, 1]

        # Lattice rows whose windows reach each point vertically.
        row_first = np.maximum(np.ceil((py - half_height_px - lattice.l0_y0) / step), 0).astype(np.int64)
        row_last = np.minimum(np.floor((py + half_height_px - lattice.l0_y0) / step), num_y - 1).astype(
            np.int64
        )
        rows_per_point = np.maximum(row_last - row_first + 1, 0)
        point_index = np.repeat(np.arange(len(batch)), rows_per_point)
        if len(point_index) == 0:
            continue
        offsets = np.arange(len(point_index)) - np.repeat(
            np.cumsum(rows_per_point) - rows_per_point, rows_per_point
        )
        rows = row_first[point_index] + offsets

        # Half the run of window centres in that row whose window contains the point.
        if circle:
            dy = lattice.l0_y0 + rows * step - py[point_index]
            half_run = np.sqrt(np.maximum(half_width_px**2 - dy**2, 0.0))
        else:
            half_run = np.full(len(rows), half_width_px)
        point_x = px[point_index]
        col_first = np.maximum(np.ceil((point_x - half_run - lattice.l0_x0) / step), 0).astype(np.int64)
        col_last = np.minimum(np.floor((point_x + half_run - lattice.l0_x0) / step), num_x - 1).astype(
            np.int64
        )
        keep = col_first <= col_last
        rows, col_first, col_last = rows[keep], col_first[keep], col_last[keep]

        flat_starts = rows * (num_x + 1) + col_first
        flat_stops = rows * (num_x + 1) + col_last + 1
        diff += np.bincount(flat_starts, minlength=len(diff))
        diff -= np.bincount(flat_stops, minlength=len(diff))
    return np.cumsum(diff.reshape(num_y, num_x + 1), axis=1)[:, :num_x]


def _integral_at(integral: np.ndarray, mask_ys: np.ndarray, mask_xs: np.ndarray) -> np.ndarray:
    """Evaluate a summed-area table at continuous mask coordinates; ``(len(ys), len(xs))``.

    The integral of a pixelwise-constant mask is bilinear inside each pixel,
    so bilinear interpolation of the table between pixel corners is exact.
    Coordinates outside the mask are clamped, as no tissue lies there.
    """
    height, width = integral.shape[0] - 1, integral.shape[1] - 1
    ys = np.clip(mask_ys, 0.0, height)
    xs = np.clip(mask_xs, 0.0, width)
    row0 = np.minimum(np.floor(ys).astype(np.int64), height - 1)
    col0 = np.minimum(np.floor(xs).astype(np.int64), width - 1)
    row_t = (ys - row0)[:, None]
    col_t = (xs - col0)[None, :]
    top = integral[row0][:, col0] * (1 - col_t) + integral[row0][:, col0 + 1] * col_t
    bottom = integral[row0 + 1][:, col0] * (1 - col_t) + integral[row0 + 1][:, col0 + 1] * col_t
    return top * (1 - row_t) + bottom * row_t


def _bilinear_sample(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample a 2-D array bilinearly at pixel-centre coordinates, clamped to its edge.

    Returns:
        ``(len(ys), len(xs))`` float64.
    """
    height, width = image.shape
    ys = np.clip(ys, 0.0, height - 1)
    xs = np.clip(xs, 0.0, width - 1)
    row0 = np.minimum(np.floor(ys).astype(np.int64), max(height - 2, 0))
    col0 = np.minimum(np.floor(xs).astype(np.int64), max(width - 2, 0))
    row1 = np.minimum(row0 + 1, height - 1)
    col1 = np.minimum(col0 + 1, width - 1)
    row_t = (ys - row0)[:, None]
    col_t = (xs - col0)[None, :]
    top = image[row0][:, col0] * (1 - col_t) + image[row0][:, col1] * col_t
    bottom = image[row1][:, col0] * (1 - col_t) + image[row1][:, col1] * col_t
    return top * (1 - row_t) + bottom * row_t


def _rectangle_tissue_share(
    tissue: TissueMap, lattice: _Lattice, half_width_px: float, half_height_px: float
) -> np.ndarray:
    """Share of each rectangular window that is tissue; ``(num_y, num_x)`` float64 in 0-1."""
    integral = np.zeros((tissue.mask.shape[0] + 1, tissue.mask.shape[1] + 1), dtype=np.float64)
    integral[1:, 1:] = np.cumsum(np.cumsum(tissue.mask, axis=0, dtype=np.int64), axis=1)
    scale = tissue.l0_per_mask_px
    xs, ys = lattice.l0_xs(), lattice.l0_ys()
    left, right = (xs - half_width_px) / scale, (xs + half_width_px) / scale
    top, bottom = (ys - half_height_px) / scale, (ys + half_height_px) / scale
    tissue_px = (
        _integral_at(integral, bottom, right)
        - _integral_at(integral, bottom, left)
        - _integral_at(integral, top, right)
        + _integral_at(integral, top, left)
    )
    window_px = (2 * half_width_px / scale) * (2 * half_height_px / scale)
    return np.clip(tissue_px / window_px, 0.0, 1.0)


def _circle_tissue_share(tissue: TissueMap, lattice: _Lattice, radius_px: float) -> np.ndarray:
    """Share of each circular window that is tissue; ``(num_y, num_x)`` float64 in 0-1.

    The mask is convolved (by FFT) with a disc of mask pixels whose centres
    lie within the radius, so the share is exact to one mask pixel along the
    circle's border.
    """
    scale = tissue.l0_per_mask_px
    radius_mask_px = radius_px / scale
    reach = math.ceil(radius_mask_px)
    offsets = np.arange(-reach, reach + 1)
    disc = (offsets[None, :] ** 2 + offsets[:, None] ** 2 <= radius_mask_px**2).astype(np.float64)

    height, width = tissue.mask.shape
    full_shape = (height + 2 * reach, width + 2 * reach)
    spectrum = np.fft.rfft2(tissue.mask.astype(np.float64), full_shape) * np.fft.rfft2(disc, full_shape)
    # full[r, c] is the tissue in the disc centred on mask pixel (r - reach, c - reach).
    full = np.fft.irfft2(spectrum, full_shape)

    mask_ys = lattice.l0_ys() / scale - 0.5 + reach
    mask_xs = lattice.l0_xs() / scale - 0.5 + reach
    tissue_px = _bilinear_sample(full, mask_ys, mask_xs)
    return np.clip(tissue_px / disc.sum(), 0.0, 1.0)


def figures_in_window(
    l0_xy: np.ndarray,
    l0_centre_xy: tuple[float, float],
    l0_size_px: tuple[float, float],
    kind: HotspotKind,
) -> np.ndarray:
    """Mark the points inside a window or on its border.

    Args:
        l0_xy: ``(N, 2)`` float ``x, y`` in level-0 px.
        l0_centre_xy: ``(x, y)`` of the window centre in level-0 px.
        l0_size_px: ``(width, height)`` in level-0 px; a circle uses the width as diameter.
        kind: ``"rectangle"`` or ``"circle"``.

    Returns:
        ``(N,)`` bool, True for points inside.
    """
    points = _validate_points(l0_xy)
    dx = points[:, 0] - l0_centre_xy[0]
    dy = points[:, 1] - l0_centre_xy[1]
    if kind == "circle":
        return dx**2 + dy**2 <= (l0_size_px[0] / 2) ** 2
    return (np.abs(dx) <= l0_size_px[0] / 2) & (np.abs(dy) <= l0_size_px[1] / 2)


def count_in_window(
    l0_xy: np.ndarray,
    l0_centre_xy: tuple[float, float],
    l0_size_px: tuple[float, float],
    kind: HotspotKind,
) -> int:
    """Count the points inside a window or on its border; see ``figures_in_window``."""
    return int(np.count_nonzero(figures_in_window(l0_xy, l0_centre_xy, l0_size_px, kind)))


def _search_region(
    points: np.ndarray,
    tissue: TissueMap | None,
    half_width_px: float,
    half_height_px: float,
    min_tissue_share: float,
) -> tuple[float, float, float, float] | None:
    """Return ``(x0, y0, x1, y1)`` in level-0 px that the window centres cover, or None if empty."""
    points_bbox = None
    if len(points):
        points_bbox = (*points.min(axis=0).tolist(), *points.max(axis=0).tolist())
    if tissue is None:
        return points_bbox

    tissue_bbox = tissue.l0_tissue_bbox()
    if tissue_bbox is None:
        return points_bbox if min_tissue_share == 0 else None
    # Every window that overlaps tissue.
    x0, y0, x1, y1 = tissue_bbox
    region = (x0 - half_width_px, y0 - half_height_px, x1 + half_width_px, y1 + half_height_px)
    if min_tissue_share == 0 and points_bbox is not None:
        region = (
            min(region[0], points_bbox[0]),
            min(region[1], points_bbox[1]),
            max(region[2], points_bbox[2]),
            max(region[3], points_bbox[3]),
        )
    return region


def find_hotspot(
    l0_xy: np.ndarray,
    mpp: float,
    tissue: TissueMap | None = None,
    shape: HotspotShape | None = None,
    *,
    min_tissue_share: float = DEFAULT_MIN_TISSUE_SHARE,
    step_um: float = DEFAULT_STEP_UM,
) -> Hotspot | None:
    """Find the window with the most figures, restricted to tissue.

    Args:
        l0_xy: ``(N, 2)`` float figure centres ``x, y`` in level-0 px.
        mpp: level-0 µm/px of the slide.
        tissue: the tissue mask; None places windows anywhere around the figures.
        shape: window shape and area; None uses a 2 mm² rectangle of 4:3 (width:height).
        min_tissue_share: windows with a smaller share of tissue are not
            considered, 0-1; ignored without ``tissue``.
        step_um: spacing of the window centres tried, in µm.

    Returns:
        The hotspot, or None when no window has enough tissue (or there are
        neither figures nor tissue). Among windows of equal count, the one
        with more tissue wins, then the top-most, then the left-most. The
        winner is then moved to centre its figures, as far as the count
        stays the same.

    Raises:
        ValueError: ``mpp`` or ``step_um`` is not positive, ``min_tissue_share``
            is outside 0-1, ``l0_xy`` is not ``(N, 2)`` finite, or the lattice
            of window centres would be too large for ``step_um``.
    """
    shape = HotspotShape() if shape is None else shape
    if not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number of µm/px, got {mpp!r}")
    if not (math.isfinite(step_um) and step_um > 0):
        raise ValueError(f"hotspot step must be a positive number of µm, got {step_um!r}")
    if not 0.0 <= min_tissue_share <= 1.0:
        raise ValueError(f"minimum tissue share must be in [0, 1], got {min_tissue_share!r}")
    points = _validate_points(l0_xy)
    width_um, height_um = shape.size_um()
    half_width_px, half_height_px = width_um / mpp / 2, height_um / mpp / 2

    region = _search_region(points, tissue, half_width_px, half_height_px, min_tissue_share)
    if region is None:
        logger.info("No hotspot: no tissue in the mask and no figures")
        return None
    lattice = _make_lattice(region, step_um / mpp)
    circle = shape.kind == "circle"

    counts = _window_counts(points, lattice, half_width_px, half_height_px, circle)
    share: np.ndarray | None = None
    valid = np.ones(counts.shape, dtype=bool)
    if tissue is not None:
        if circle:
            share = _circle_tissue_share(tissue, lattice, half_width_px)
        else:
            share = _rectangle_tissue_share(tissue, lattice, half_width_px, half_height_px)
        # Shares are rounded so that float noise of the integrals never decides a tie.
        share = np.round(share, 6)
        valid = share >= min_tissue_share
    if not valid.any():
        logger.info(
            "No hotspot: no %.3g mm² %s has a tissue share of at least %.2f (largest %.2f)",
            shape.area_mm2,
            shape.kind,
            min_tissue_share,
            float(share.max()) if share is not None else 0.0,
        )
        return None

    # Highest count; ties to more tissue, then raster order (argmax takes the first).
    max_count = int(counts[valid].max())
    best_mask = valid & (counts == max_count)
    candidates = np.flatnonzero(best_mask)
    best = (
        int(candidates[np.argmax(share.reshape(-1)[candidates])]) if share is not None else int(candidates[0])
    )

    # Centre on the figures within the connected windows of the same count.
    labels, _ = label_components(best_mask, connectivity=8)
    plateau = np.flatnonzero(labels.reshape(-1) == labels.reshape(-1)[best])
    xs, ys = lattice.l0_xs(), lattice.l0_ys()
    best_centre = (float(xs[best % lattice.num_x]), float(ys[best // lattice.num_x]))
    size_px = (2 * half_width_px, 2 * half_height_px)
    if max_count > 0:
        inside = figures_in_window(points, best_centre, size_px, shape.kind)
        centroid_x, centroid_y = points[inside].mean(axis=0)
        plateau_xs = xs[plateau % lattice.num_x]
        plateau_ys = ys[plateau // lattice.num_x]
        chosen = int(plateau[np.argmin((plateau_xs - centroid_x) ** 2 + (plateau_ys - centroid_y) ** 2)])
    else:
        chosen = best
    centre = (float(xs[chosen % lattice.num_x]), float(ys[chosen // lattice.num_x]))

    inside = figures_in_window(points, centre, size_px, shape.kind)
    hotspot = Hotspot(
        count=int(np.count_nonzero(inside)),
        l0_centre_xy=centre,
        l0_size_px=size_px,
        shape=shape,
        mpp=float(mpp),
        tissue_share=float(share.reshape(-1)[chosen]) if share is not None else None,
        figure_indices=np.flatnonzero(inside),
    )
    logger.debug(
        "Hotspot: %d figures in a %.3g mm² %s at level-0 (%.0f, %.0f); %d x %d window centres %.3g µm apart",
        hotspot.count,
        shape.area_mm2,
        shape.kind,
        centre[0],
        centre[1],
        lattice.num_x,
        lattice.num_y,
        step_um,
    )
    return hotspot


def _round(value: float) -> float:
    return float(f"{value:.6g}")


def hotspot_record(hotspot: Hotspot) -> dict[str, Any]:
    """Return the fields of a hotspot as plain JSON values, as stored in the GeoJSON and the slide summary.

    The keys are ``count``, ``l0_centre_xy`` and ``l0_size_px`` (level-0 px),
    ``kind``, ``area_mm2``, ``aspect_ratio``, ``mpp`` (level-0 µm/px) and
    ``tissue_share`` (0-1, or None without a tissue mask).
    """
    return {
        "count": hotspot.count,
        "l0_centre_xy": list(hotspot.l0_centre_xy),
        "l0_size_px": list(hotspot.l0_size_px),
        "kind": hotspot.shape.kind,
        "area_mm2": hotspot.shape.area_mm2,
        "aspect_ratio": hotspot.shape.aspect_ratio,
        "mpp": hotspot.mpp,
        "tissue_share": hotspot.tissue_share,
    }


def write_hotspot_geojson(
    path: str | Path, hotspot: Hotspot | None, *, search: Mapping[str, Any] | None = None
) -> None:
    """Write the hotspot as a GeoJSON FeatureCollection that QuPath imports as an annotation.

    The one Feature has a uuid4 ``id`` and a Polygon geometry in level-0 px:
    a rectangle's 4 corners or 72 points on a circle, the ring closed. Its
    properties are ``objectType`` "annotation", ``name``, ``classification``
    ``{"name": "Mitotic count hotspot", "color": [r, g, b]}``,
    ``measurements`` (mitotic count, area, figures per mm², tissue share) and
    ``midog_hotspot``, the fields of ``Hotspot`` for ``read_hotspot_geojson``.
    Without a hotspot the collection has no features. ``search``, the
    settings of the search, is kept as the collection's ``midog_search``
    member (GeoJSON allows such foreign members; QuPath ignores them).

    Args:
        path: the output file, written atomically.
        hotspot: the hotspot, or None.
        search: plain JSON values describing the search, or None.

    Raises:
        OSError: the file cannot be written.
    """
    features = []
    if hotspot is not None:
        ring = hotspot.l0_polygon().tolist()
        ring.append(ring[0])
        measurements: dict[str, float] = {
            "mitotic count": hotspot.count,
            "area mm2": hotspot.shape.area_mm2,
            "figures per mm2": _round(hotspot.figures_per_mm2),
        }
        if hotspot.tissue_share is not None:
            measurements["tissue share"] = _round(hotspot.tissue_share)
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid4()),
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "annotation",
                    "name": f"Mitotic count {hotspot.count} in {hotspot.shape.area_mm2:g} mm²",
                    "classification": {"name": HOTSPOT_CLASS_NAME, "color": list(_HOTSPOT_COLOR_RGB)},
                    "measurements": measurements,
                    "midog_hotspot": hotspot_record(hotspot),
                },
            }
        )
    collection: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if search is not None:
        collection["midog_search"] = dict(search)
    text = json.dumps(collection, indent=1, allow_nan=False)
    with atomic_output(path) as temporary_path:
        temporary_path.write_text(text + "\n", encoding="utf-8")


def read_hotspot_geojson(path: str | Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Read back a file written by ``write_hotspot_geojson``.

    Returns:
        ``(hotspot, search)``: the ``midog_hotspot`` properties (count,
        centre, size, shape, mpp, tissue share) or None for a collection
        without a hotspot, and the ``midog_search`` settings or None.

    Raises:
        ValueError: the file is not JSON or not a hotspot collection.
        OSError: the file cannot be read.
    """
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"hotspot file {path} is not valid JSON: {exc}") from exc
    if (
        not isinstance(obj, dict)
        or obj.get("type") != "FeatureCollection"
        or not isinstance(obj.get("features"), list)
    ):
        raise ValueError(f"hotspot file {path} is not a GeoJSON FeatureCollection")
    search = obj.get("midog_search")
    search = dict(search) if isinstance(search, dict) else None
    if not obj["features"]:
        return None, search
    properties = obj["features"][0].get("properties", {})
    if not isinstance(properties.get("midog_hotspot"), dict):
        raise ValueError(f"hotspot file {path} has no midog_hotspot properties")
    return dict(properties["midog_hotspot"]), search
