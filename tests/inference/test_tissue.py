"""Tissue mask: colour rule, labelling, hole filling, real H&E tiles, tile selection."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from midog.inference.tiling import make_tile_grid, plan_read
from midog.inference.tissue import (
    fill_holes,
    label_components,
    restrict_to_l0_rect,
    thumbnail_size_px,
    tiles_with_tissue,
    tissue_area_mm2,
    tissue_mask,
    tissue_pixels,
)
from midog.io.slide import open_slide

# RGB -> tissue?
COLOUR_TABLE = [
    ((245, 245, 245), False),  # glass
    ((128, 128, 128), False),  # grey dust or coverslip edge
    ((0, 0, 0), False),  # black
    ((230, 160, 200), True),  # eosin pink
    ((120, 70, 160), True),  # haematoxylin purple
    ((211, 124, 158), True),  # eosin-rich stroma
    ((90, 185, 170), False),  # green pen
    ((220, 40, 50), False),  # red pen
    ((240, 176, 176), False),  # red pen halo
    ((60, 20, 30), False),  # dark pen ink
]


@pytest.mark.parametrize(("rgb", "expected"), COLOUR_TABLE)
def test_tissue_pixels_colour_table(rgb, expected):
    image = np.array([[rgb]], dtype=np.uint8)
    assert bool(tissue_pixels(image)[0, 0]) is expected


def test_tissue_pixels_rejects_gray_image():
    with pytest.raises(ValueError, match="RGB"):
        tissue_pixels(np.zeros((4, 4), dtype=np.uint8))


MASK = np.array(
    [
        [1, 1, 0, 0, 1],
        [0, 1, 0, 1, 1],
        [1, 0, 0, 0, 0],
        [1, 1, 0, 1, 0],
    ],
    dtype=bool,
)


def test_label_components_4_connected():
    labels, count = label_components(MASK, connectivity=4)
    assert count == 4
    assert labels.tolist() == [[1, 1, 0, 0, 2], [0, 1, 0, 2, 2], [3, 0, 0, 0, 0], [3, 3, 0, 4, 0]]


def test_label_components_8_connected():
    labels, count = label_components(MASK, connectivity=8)
    assert count == 3
    assert labels.tolist() == [[1, 1, 0, 0, 2], [0, 1, 0, 2, 2], [1, 0, 0, 0, 0], [1, 1, 0, 3, 0]]


def test_label_components_u_shape_joins_late():
    # Two arms join only in the last row.
    mask = np.array([[1, 0, 1], [1, 0, 1], [1, 1, 1]], dtype=bool)
    labels, count = label_components(mask)
    assert count == 1


def test_label_components_empty():
    labels, count = label_components(np.zeros((3, 3), dtype=bool))
    assert count == 0


def test_label_components_rejects_connectivity_6():
    with pytest.raises(ValueError, match="connectivity"):
        label_components(MASK, connectivity=6)


def test_fill_holes_fills_small_hole():
    ring = np.ones((5, 5), dtype=bool)
    ring[2, 2] = False
    assert fill_holes(ring, max_hole_px=1).all()


def test_fill_holes_keeps_large_hole():
    ring = np.ones((6, 6), dtype=bool)
    ring[2:4, 2:4] = False
    assert fill_holes(ring, max_hole_px=3).sum() == 32


def test_fill_holes_keeps_border_background():
    mask = np.zeros((5, 5), dtype=bool)
    mask[1:4, 1:4] = True
    assert fill_holes(mask, max_hole_px=np.inf).sum() == 9


@pytest.mark.parametrize(
    ("dimensions", "mpp", "expected"),
    [
        ((100_000, 80_000), 0.25, 3125),  # 25 mm at 8 µm/px
        ((2220, 2967), 0.499, 186),
        ((1000, 700), 0.25, 32),
        ((400_000, 10), 0.25, 4096),  # capped
        ((10, 10), 100.0, 10),  # never larger than the slide
    ],
)
def test_thumbnail_size_table(dimensions, mpp, expected):
    assert thumbnail_size_px(dimensions, mpp) == expected


def test_tissue_area_mm2():
    # 1000 px at 8 µm/px: 1000 * 64 µm² = 0.064 mm².
    mask = np.zeros((100, 100), dtype=bool)
    mask[:10, :100] = True
    assert tissue_area_mm2(mask, 8.0) == pytest.approx(0.064)


def test_restrict_to_l0_rect():
    # Mask px are 10 l0 px; the rect [25, 45) x [0, 100) keeps columns with centres 25 and 35.
    restricted = restrict_to_l0_rect(np.ones((4, 6), dtype=bool), (25, 0, 20, 100), 10.0)
    assert restricted[0].tolist() == [False, False, True, True, False, False]


def test_tiles_with_tissue_marks_touching_tiles():
    # 1000 x 700 px at 0.25 µm/px; mask at 10 l0 px per px with tissue only at l0 x 970-980, y 100-110.
    grid = make_tile_grid((0, 0, 1000, 700), plan_read(0.25, 0.25, 0, 1.0, 512, 64))
    mask = np.zeros((70, 100), dtype=bool)
    mask[10, 97] = True
    # Tiles span x [0, 512), [448, 960), [896, 1408) and y [0, 512), [448, 960).
    assert tiles_with_tissue(grid, mask, 10.0).tolist() == [False, False, True, False, False, False]


def test_tiles_with_tissue_ignores_tissue_outside_bounds():
    grid = make_tile_grid((0, 0, 500, 500), plan_read(0.25, 0.25, 0, 1.0, 512, 64))
    mask = np.zeros((100, 100), dtype=bool)
    mask[60:, 60:] = True  # tissue only past l0 600, outside the bounds but under the tile's overhang
    assert tiles_with_tissue(grid, mask, 10.0).tolist() == [False]


# Measured fractions with each histolab H&E tile treated as an 8 µm/px
# thumbnail: tissue tiles 0.63-0.83; glass, pen line and green pen 0.000-0.002;
# almost-white-2 0.026 (a sliver of tissue in one corner); red pen 0.106.
TISSUE_TILES = [
    "tissue-level0-4302-10273-4814-10785.png",
    "tissue-level0-7352-11762-7864-12274.png",
    "tissue-level2-1784-6289-5880-10386.png",
    "tissue-level2-3000-7666-7096-11763.png",
    "tissue-level2-4640-4649-8736-8746.png",
    "tissue-level2-4760-5241-8856-9338.png",
]
EMPTY_TILES = [
    "no-tissue.png",
    "no-tissue2.png",
    "no-tissue-line.png",
    "no-tissue-green-pen.png",
    "almost-white-1.png",
    "almost-white-2.png",
]


def tile_fraction(shared_data, name: str) -> float:
    rgb = np.asarray(Image.open(shared_data / "tiles" / name).convert("RGB"))
    return float(tissue_mask(rgb, mask_mpp=8.0).mean())


@pytest.mark.parametrize("name", TISSUE_TILES)
def test_tissue_tiles_have_tissue(shared_data, name):
    assert tile_fraction(shared_data, name) >= 0.55


@pytest.mark.parametrize("name", EMPTY_TILES)
def test_empty_tiles_have_almost_none(shared_data, name):
    assert tile_fraction(shared_data, name) <= 0.03


def test_red_pen_tile_mostly_rejected(shared_data):
    # NOTE: blurred edges of dark pen ink have the colour of haematoxylin, so
    # about a tenth of this pen-only tile still counts as tissue.
    assert tile_fraction(shared_data, "no-tissue-red-pen.png") <= 0.15


@pytest.mark.parametrize("thumbnail_px", [186, 512, 1024])
def test_cmu_area_stable_across_thumbnail_size(shared_data, thumbnail_px):
    # 186 px is the default size for this slide (about 8 µm/px), where the
    # area measures 0.599 mm²; finer thumbnails measured 0.626 and 0.630 mm².
    with open_slide(shared_data / "slides" / "cmu-1-small-region.svs") as slide:
        rgb, l0_per_px = slide.read_thumbnail(thumbnail_px)
        mask_mpp = slide.mpp * l0_per_px
    assert tissue_area_mm2(tissue_mask(rgb, mask_mpp), mask_mpp) == pytest.approx(0.6, rel=0.1)


def test_tissue_mask_removes_specks():
    rgb = np.full((50, 50, 3), 245, dtype=np.uint8)
    rgb[10, 10] = (230, 160, 200)  # one stained thumbnail px: 8 µm, below the 24 µm opening
    assert not tissue_mask(rgb, mask_mpp=8.0).any()


def test_tissue_mask_rejects_zero_mpp():
    with pytest.raises(ValueError, match="µm/px must be positive"):
        tissue_mask(np.zeros((4, 4, 3), dtype=np.uint8), mask_mpp=0.0)
