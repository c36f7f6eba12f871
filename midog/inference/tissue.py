"""Tissue detection on a slide thumbnail, with numpy and PIL only.

A thumbnail pixel is tissue when its colour is that of H&E stain. It must be
coloured enough (chroma) and not too dark. Green must be its weakest channel,
because haematoxylin and eosin both absorb green most. Its hue must not be
the pure red of red pen ink.
Gaps are then closed with a morphological closing, specks removed with an
opening, and small enclosed holes filled. The mask decides which tiles
are read and gives the tissue area for figures per mm².
"""

from __future__ import annotations

import logging
import math

import numpy as np
from PIL import Image, ImageFilter

from midog.inference.tiling import L0Rect, TileGrid

__all__ = [
    "TISSUE_MPP",
    "thumbnail_size_px",
    "tissue_pixels",
    "label_components",
    "fill_holes",
    "tissue_mask",
    "restrict_to_l0_rect",
    "tissue_area_mm2",
    "tiles_with_tissue",
]

logger = logging.getLogger(__name__)

# Resolution of the thumbnail the mask is made from (µm/px). At 8 µm/px a
# 25 x 20 mm slide gives a thumbnail of about 3100 x 2500 px, while a single
# mitotic figure (5-10 µm) is about one thumbnail pixel.
TISSUE_MPP = 8.0
MAX_THUMBNAIL_PX = 4096

# Colour rule, values in 0-255 on RGB. Chosen on the H&E tiles of the
# histolab test set: tissue tiles keep most of their stained area while
# glass, pen lines and green pen give no tissue.
MIN_CHROMA = 20  # max(R, G, B) - min(R, G, B); glass and grey dust are below
MIN_BRIGHTNESS = 100  # max(R, G, B); darker pixels are pen ink, folds of ink or dirt
# (B - G) / (R - G) of H&E is about 0.3 (eosin) to over 1 (haematoxylin);
# red pen ink has B close to G, so a ratio near 0.
MIN_BLUE_RED_HUE_RATIO = 0.25

# Morphology sizes in µm, converted to odd kernel sizes at the mask's µm/px.
CLOSING_UM = 24.0  # closes gaps narrower than this
OPENING_UM = 24.0  # then removes specks narrower than this
# Enclosed holes up to this area are counted as tissue: gaps between cells
# and small lumens, but not fat, vessels or large lumens (100 x 100 µm).
MAX_HOLE_UM2 = 10_000.0


def _odd_kernel_px(size_um: float, mask_mpp: float) -> int:
    """Return an odd kernel size in px close to ``size_um``; 1 means no filtering."""
    size_px = int(round(size_um / mask_mpp))
    if size_px < 3:
        return 1
    return size_px if size_px % 2 == 1 else size_px + 1


def _morphology(
    mask: np.ndarray,
    first: type[ImageFilter.RankFilter],
    second: type[ImageFilter.RankFilter],
    size_px: int,
) -> np.ndarray:
    """Apply two PIL rank filters in turn: Min then Max is an opening, Max then Min a closing."""
    if size_px < 3:
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    image = image.filter(first(size_px)).filter(second(size_px))
    return np.asarray(image) > 0


def thumbnail_size_px(l0_dimensions: tuple[int, int], slide_mpp: float) -> int:
    """Return the longest thumbnail side that gives about ``TISSUE_MPP`` µm/px.

    Args:
        l0_dimensions: ``(width, height)`` of level 0 in px.
        slide_mpp: µm/px of level 0.

    Returns:
        A size in ``[1, MAX_THUMBNAIL_PX]``, never larger than the slide.
    """
    longest_px = max(l0_dimensions)
    size_px = math.ceil(longest_px * slide_mpp / TISSUE_MPP)
    return max(1, min(size_px, MAX_THUMBNAIL_PX, longest_px))


def tissue_pixels(rgb: np.ndarray) -> np.ndarray:
    """Classify pixels by colour alone.

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB.

    Returns:
        ``(H, W)`` bool, True where the colour is that of H&E-stained tissue.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {rgb.shape}")
    rgb = rgb.astype(np.int16)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    brightest = rgb.max(axis=-1)
    chroma = brightest - rgb.min(axis=-1)

    stained = (chroma >= MIN_CHROMA) & (brightest >= MIN_BRIGHTNESS)
    green_weakest = green < np.minimum(red, blue)
    # (B - G) >= ratio * (R - G), kept in integers.
    not_red_ink = (blue - green) * 100 >= int(MIN_BLUE_RED_HUE_RATIO * 100) * (red - green)
    return stained & green_weakest & not_red_ink


def label_components(mask: np.ndarray, connectivity: int = 4) -> tuple[np.ndarray, int]:
    """Label the connected components of a binary image.

    Works on runs of True pixels per row and joins runs of neighbouring rows
    with a union-find, so the cost grows with the number of runs, not pixels.

    Args:
        mask: ``(H, W)`` bool.
        connectivity: 4 (edge neighbours) or 8 (edge and corner neighbours).

    Returns:
        ``(labels, count)``: ``(H, W)`` int32 labels, 0 for background and
        ``1..count`` numbered in raster order of each component's first pixel.

    Raises:
        ValueError: for a mask that is not 2-D or a connectivity other than 4 or 8.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    height, width = mask.shape
    labels = np.zeros((height, width), dtype=np.int32)
    if not mask.any():
        return labels, 0

    # Runs of True per row: [start, end) columns, in raster order.
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    steps = np.diff(padded, axis=1)
    run_rows, run_starts = np.nonzero(steps == 1)
    _, run_ends = np.nonzero(steps == -1)
    num_runs = len(run_rows)

    # Runs of the previous row that touch each run: a contiguous index range
    # found by binary search on row-major keys.
    row_stride = width + 2
    start_keys = run_rows * row_stride + run_starts
    end_keys = run_rows * row_stride + run_ends
    reach = 1 if connectivity == 8 else 0
    prev_row_base = (run_rows - 1) * row_stride
    first = np.searchsorted(end_keys, prev_row_base + run_starts - reach, side="right")
    stop = np.searchsorted(start_keys, prev_row_base + run_ends + reach, side="left")
    counts = np.maximum(stop - first, 0)
    current = np.repeat(np.arange(num_runs), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    previous = np.repeat(first, counts) + offsets

    # Union-find with the smaller run index as root, so roots are in raster order.
    parent = list(range(num_runs))

    def find(index: int) -> int:
        root = index
        while parent[root] != root:
            root = parent[root]
        while parent[index] != root:
            parent[index], index = root, parent[index]
        return root

    for a, b in zip(previous.tolist(), current.tolist(), strict=True):
        root_a, root_b = find(a), find(b)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)
    roots = np.array([find(i) for i in range(num_runs)])
    _, run_labels = np.unique(roots, return_inverse=True)
    count = int(run_labels.max()) + 1

    # Paint each run with its label.
    lengths = run_ends - run_starts
    pixel_runs = np.repeat(np.arange(num_runs), lengths)
    pixel_offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    flat = run_rows[pixel_runs] * width + run_starts[pixel_runs] + pixel_offsets
    labels.reshape(-1)[flat] = run_labels[pixel_runs] + 1
    return labels, count


def fill_holes(mask: np.ndarray, max_hole_px: float) -> np.ndarray:
    """Fill enclosed background regions up to a size.

    Args:
        mask: ``(H, W)`` bool foreground.
        max_hole_px: largest hole area in px that is filled; ``inf`` fills all.

    Returns:
        ``(H, W)`` bool, ``mask`` with every 4-connected background component
        that does not touch the image border and has at most ``max_hole_px``
        pixels set to True.
    """
    mask = np.asarray(mask, dtype=bool)
    labels, count = label_components(~mask, connectivity=4)
    if count == 0:
        return mask.copy()
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    sizes = np.bincount(labels.reshape(-1), minlength=count + 1)
    is_hole = sizes <= max_hole_px
    is_hole[border] = False
    is_hole[0] = False
    return mask | is_hole[labels]


def tissue_mask(rgb: np.ndarray, mask_mpp: float) -> np.ndarray:
    """Find tissue in a thumbnail.

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB thumbnail.
        mask_mpp: µm per thumbnail px, which sets the morphology sizes.

    Returns:
        ``(H, W)`` bool tissue mask.

    Raises:
        ValueError: for a non-positive ``mask_mpp`` or an image that is not RGB.
    """
    if not mask_mpp > 0:
        raise ValueError(f"mask µm/px must be positive, got {mask_mpp}")
    mask = tissue_pixels(rgb)
    # Closing first: at a few µm/px, loose stroma is a lace of stained pixels
    # that an opening alone would erase.
    mask = _morphology(
        mask, ImageFilter.MaxFilter, ImageFilter.MinFilter, _odd_kernel_px(CLOSING_UM, mask_mpp)
    )
    mask = _morphology(
        mask, ImageFilter.MinFilter, ImageFilter.MaxFilter, _odd_kernel_px(OPENING_UM, mask_mpp)
    )
    return fill_holes(mask, MAX_HOLE_UM2 / mask_mpp**2)


def restrict_to_l0_rect(mask: np.ndarray, l0_rect: L0Rect, l0_per_mask_px: float) -> np.ndarray:
    """Clear mask pixels whose centre lies outside a level-0 rectangle.

    Args:
        mask: ``(H, W)`` bool mask whose pixel ``(0, 0)`` starts at level-0 ``(0, 0)``.
        l0_rect: ``(x, y, width, height)`` in level-0 px.
        l0_per_mask_px: level-0 px per mask px.

    Returns:
        ``(H, W)`` bool copy of ``mask``, False outside ``l0_rect``.
    """
    height, width = mask.shape
    l0_x, l0_y, l0_width, l0_height = l0_rect
    l0_col_centres = (np.arange(width) + 0.5) * l0_per_mask_px
    l0_row_centres = (np.arange(height) + 0.5) * l0_per_mask_px
    inside_cols = (l0_col_centres >= l0_x) & (l0_col_centres < l0_x + l0_width)
    inside_rows = (l0_row_centres >= l0_y) & (l0_row_centres < l0_y + l0_height)
    return mask & inside_rows[:, None] & inside_cols[None, :]


def tissue_area_mm2(mask: np.ndarray, mask_mpp: float) -> float:
    """Return the area of a mask in mm², given its µm/px."""
    return float(np.count_nonzero(mask)) * (mask_mpp / 1000.0) ** 2


def tiles_with_tissue(grid: TileGrid, mask: np.ndarray, l0_per_mask_px: float) -> np.ndarray:
    """Mark tiles whose footprint inside the slide bounds contains any tissue.

    A mask pixel counts for a tile when it overlaps the tile's footprint
    clipped to the bounds, so a tile touching tissue by a fraction of a mask
    pixel is kept.

    Args:
        grid: the tile grid.
        mask: ``(H, W)`` bool tissue mask whose pixel ``(0, 0)`` starts at level-0 ``(0, 0)``.
        l0_per_mask_px: level-0 px per mask px.

    Returns:
        ``(len(grid.tiles),)`` bool, True for tiles to read.
    """
    height, width = mask.shape
    # Summed-area table with a zero first row and column.
    integral = np.zeros((height + 1, width + 1), dtype=np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)

    l0_bx, l0_by, l0_bw, l0_bh = grid.l0_bounds
    has_tissue = np.zeros(len(grid.tiles), dtype=bool)
    for tile in grid.tiles:
        x0, y0, x1, y1 = grid.l0_footprint(tile)
        x0, y0 = max(x0, l0_bx), max(y0, l0_by)
        x1, y1 = min(x1, l0_bx + l0_bw), min(y1, l0_by + l0_bh)
        col0 = min(max(int(math.floor(x0 / l0_per_mask_px)), 0), width)
        row0 = min(max(int(math.floor(y0 / l0_per_mask_px)), 0), height)
        col1 = min(max(int(math.ceil(x1 / l0_per_mask_px)), 0), width)
        row1 = min(max(int(math.ceil(y1 / l0_per_mask_px)), 0), height)
        if col1 <= col0 or row1 <= row0:
            continue
        count = integral[row1, col1] - integral[row0, col1] - integral[row1, col0] + integral[row0, col0]
        has_tissue[tile.index] = count > 0
    return has_tissue
