"""Mitotic-count hotspot: window geometry, counts, tie rule, tissue restriction and GeoJSON output."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from midog.inference.hotspot import (
    HotspotShape,
    TissueMap,
    _circle_tissue_share,
    _make_lattice,
    _rectangle_tissue_share,
    _window_counts,
    count_in_window,
    figures_in_window,
    find_hotspot,
    read_hotspot_geojson,
    write_hotspot_geojson,
)

MPP = 0.25  # level-0 µm/px of the synthetic point sets
STEP_PX = 25.0 / MPP  # the default lattice step in level-0 px
L0_PER_MASK_PX = 32.0


def _cluster(centre_xy: tuple[float, float], count: int, radius_px: float, seed: int) -> np.ndarray:
    """Return ``count`` points spread uniformly over a disc."""
    rng = np.random.default_rng(seed)
    angles = rng.uniform(0, 2 * math.pi, count)
    radii = radius_px * np.sqrt(rng.uniform(0, 1, count))
    return np.stack([centre_xy[0] + radii * np.cos(angles), centre_xy[1] + radii * np.sin(angles)], axis=1)


def _tissue(width_px: int, height_px: int, l0_rect: tuple[int, int, int, int] | None = None) -> TissueMap:
    """Return a mask over ``width_px x height_px`` level-0 px, tissue inside ``l0_rect`` (all if None)."""
    mask = np.zeros((height_px // int(L0_PER_MASK_PX), width_px // int(L0_PER_MASK_PX)), dtype=bool)
    if l0_rect is None:
        mask[:] = True
    else:
        x, y, w, h = (v // int(L0_PER_MASK_PX) for v in l0_rect)
        mask[y : y + h, x : x + w] = True
    return TissueMap(mask, L0_PER_MASK_PX)


# Shapes


def test_rectangle_area_is_2_mm2():
    width_um, height_um = HotspotShape().size_um()
    assert width_um * height_um == pytest.approx(2e6)


def test_rectangle_aspect_is_4_to_3():
    width_um, height_um = HotspotShape().size_um()
    assert width_um / height_um == pytest.approx(4 / 3)


def test_circle_area_is_2_mm2():
    diameter_um, _ = HotspotShape("circle").size_um()
    assert math.pi * (diameter_um / 2) ** 2 == pytest.approx(2e6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "square"}, "'rectangle' or 'circle'"),
        ({"area_mm2": 0.0}, "positive number of mm²"),
        ({"aspect_ratio": -1.0}, "aspect ratio"),
    ],
)
def test_shape_rejects_invalid(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HotspotShape(**kwargs)


# Window counts against brute force


@pytest.mark.parametrize("kind", ["rectangle", "circle"])
def test_window_counts_match_brute_force(kind):
    rng = np.random.default_rng(7)
    points = rng.uniform(0, 4000, size=(300, 2))
    half_width, half_height = (700.0, 700.0) if kind == "circle" else (800.0, 450.0)
    lattice = _make_lattice((-500.0, -300.0, 4300.0, 4100.0), 97.0)
    counts = _window_counts(points, lattice, half_width, half_height, kind == "circle")
    expected = np.array(
        [
            [
                count_in_window(points, (x, y), (2 * half_width, 2 * half_height), kind)
                for x in lattice.l0_xs()
            ]
            for y in lattice.l0_ys()
        ]
    )
    assert np.array_equal(counts, expected)


def test_window_counts_add_over_batches():
    # 40,000 points take three stamping batches; counts of two halves must add up.
    rng = np.random.default_rng(3)
    points = rng.uniform(0, 30000, size=(40000, 2))
    lattice = _make_lattice((0.0, 0.0, 30000.0, 30000.0), 500.0)
    whole = _window_counts(points, lattice, 3000.0, 2000.0, False)
    first = _window_counts(points[:20000], lattice, 3000.0, 2000.0, False)
    second = _window_counts(points[20000:], lattice, 3000.0, 2000.0, False)
    assert np.array_equal(whole, first + second)


# Tissue share


def test_rectangle_share_on_tissue_edge():
    tissue = _tissue(8000, 8000, (0, 0, 4000, 8000))
    lattice = _make_lattice((4000.0, 4000.0, 4000.0, 4000.0), 100.0)
    share = _rectangle_tissue_share(tissue, lattice, 1000.0, 500.0)
    assert share[0, 0] == pytest.approx(0.5)


def test_rectangle_share_counts_pixel_fractions():
    tissue = _tissue(8000, 8000, (0, 0, 4000, 8000))
    # A quarter mask pixel right of the edge: the window loses that strip of tissue.
    lattice = _make_lattice((4008.0, 4000.0, 4008.0, 4000.0), 100.0)
    share = _rectangle_tissue_share(tissue, lattice, 1000.0, 500.0)
    assert share[0, 0] == pytest.approx(0.5 - 8.0 / 2000.0)


def test_circle_share_on_tissue_edge():
    tissue = _tissue(8000, 8000, (0, 0, 4000, 8000))
    lattice = _make_lattice((4000.0, 4000.0, 4000.0, 4000.0), 100.0)
    share = _circle_tissue_share(tissue, lattice, 1500.0)
    assert share[0, 0] == pytest.approx(0.5, abs=0.02)


def test_circle_share_inside_tissue():
    tissue = _tissue(8000, 8000)
    lattice = _make_lattice((4000.0, 4000.0, 4000.0, 4000.0), 100.0)
    assert _circle_tissue_share(tissue, lattice, 1500.0)[0, 0] == pytest.approx(1.0)


# Known point sets


@pytest.fixture(scope="module")
def dense_cluster():
    """25 points within 300 px of (20000, 15000) and 6 lone points, each over a window apart."""
    cluster = _cluster((20000, 15000), 25, 300, seed=1)
    singles = np.array(
        [[2000, 2000], [38000, 2000], [2000, 28000], [38000, 28000], [20000, 2000], [20000, 28000]]
    )
    points = np.concatenate([cluster, singles])
    return points, find_hotspot(points, MPP, _tissue(40000, 30000))


def test_dense_cluster_count(dense_cluster):
    _, hotspot = dense_cluster
    assert hotspot.count == 25


def test_dense_cluster_members(dense_cluster):
    _, hotspot = dense_cluster
    assert hotspot.figure_indices.tolist() == list(range(25))


def test_dense_cluster_centred(dense_cluster):
    points, hotspot = dense_cluster
    centroid = points[:25].mean(axis=0)
    assert np.hypot(*(np.array(hotspot.l0_centre_xy) - centroid)) <= STEP_PX


def test_dense_cluster_full_tissue(dense_cluster):
    _, hotspot = dense_cluster
    assert hotspot.tissue_share == pytest.approx(1.0)


def test_count_matches_reported_window(dense_cluster):
    points, hotspot = dense_cluster
    assert count_in_window(points, hotspot.l0_centre_xy, hotspot.l0_size_px, "rectangle") == hotspot.count


def test_tie_goes_to_top_cluster():
    lower = _cluster((10000, 25000), 20, 300, seed=2)
    upper = _cluster((30000, 8000), 20, 300, seed=3)
    hotspot = find_hotspot(np.concatenate([lower, upper]), MPP, _tissue(40000, 33000))
    assert np.hypot(hotspot.l0_centre_xy[0] - 30000, hotspot.l0_centre_xy[1] - 8000) <= 400


def test_tie_in_one_row_goes_left():
    right = _cluster((30000, 15000), 20, 300, seed=4)
    left = _cluster((8000, 15000), 20, 300, seed=5)
    hotspot = find_hotspot(np.concatenate([right, left]), MPP, _tissue(40000, 30000))
    assert np.hypot(hotspot.l0_centre_xy[0] - 8000, hotspot.l0_centre_xy[1] - 15000) <= 400


def test_tie_goes_to_more_tissue():
    # Tissue starts at y = 4000, so every window around the upper cluster
    # (reaching up to y = 3500) is at most 90 % tissue.
    upper = _cluster((10000, 3800), 20, 300, seed=6)
    lower = _cluster((30000, 20000), 20, 300, seed=7)
    tissue = _tissue(40000, 30016, (0, 4000, 40000, 26016))
    hotspot = find_hotspot(np.concatenate([upper, lower]), MPP, tissue)
    assert np.hypot(hotspot.l0_centre_xy[0] - 30000, hotspot.l0_centre_xy[1] - 20000) <= 400


def test_points_outside_tissue_ignored():
    on_glass = _cluster((35000, 15000), 50, 300, seed=8)
    on_tissue = _cluster((8000, 15000), 10, 300, seed=9)
    tissue = _tissue(40000, 30000, (0, 0, 20000, 30000))
    hotspot = find_hotspot(np.concatenate([on_glass, on_tissue]), MPP, tissue)
    assert hotspot.count == 10


def test_points_outside_tissue_members():
    on_glass = _cluster((35000, 15000), 50, 300, seed=8)
    on_tissue = _cluster((8000, 15000), 10, 300, seed=9)
    tissue = _tissue(40000, 30000, (0, 0, 20000, 30000))
    hotspot = find_hotspot(np.concatenate([on_glass, on_tissue]), MPP, tissue)
    assert hotspot.figure_indices.min() >= 50


def test_points_outside_tissue_counted_at_zero_share():
    on_glass = _cluster((35000, 15000), 50, 300, seed=8)
    tissue = _tissue(40000, 30000, (0, 0, 20000, 30000))
    hotspot = find_hotspot(on_glass, MPP, tissue, min_tissue_share=0.0)
    assert hotspot.count == 50


def test_no_tissue_gives_none():
    points = _cluster((8000, 8000), 10, 300, seed=10)
    assert find_hotspot(points, MPP, _tissue(16000, 16000, (0, 0, 0, 0))) is None


def test_small_tissue_below_min_share_gives_none():
    points = _cluster((8000, 8000), 10, 300, seed=11)
    # 1024 x 1024 px of tissue is 4 % of a 2 mm² window at 0.25 µm/px.
    tissue = _tissue(16000, 16000, (7488, 7488, 1024, 1024))
    assert find_hotspot(points, MPP, tissue, min_tissue_share=0.5) is None


def test_small_tissue_with_low_min_share():
    points = _cluster((8000, 8000), 10, 300, seed=11)
    tissue = _tissue(16000, 16000, (7488, 7488, 1024, 1024))
    assert find_hotspot(points, MPP, tissue, min_tissue_share=0.02).count == 10


def test_without_tissue_map():
    points = np.concatenate([_cluster((8000, 8000), 12, 300, seed=12), [[60000.0, 60000.0]]])
    assert find_hotspot(points, MPP).count == 12


def test_without_figures_places_window_on_tissue():
    hotspot = find_hotspot(np.zeros((0, 2)), MPP, _tissue(40000, 30000))
    assert hotspot.count == 0
    assert hotspot.tissue_share == pytest.approx(1.0)


def test_circle_dense_cluster():
    points = np.concatenate([_cluster((20000, 15000), 25, 300, seed=13), [[2000.0, 2000.0]]])
    hotspot = find_hotspot(points, MPP, _tissue(40000, 30000), HotspotShape("circle"))
    assert hotspot.count == 25


def test_circle_excludes_corner_of_square():
    # A point just inside the circle's bounding square, but outside the circle.
    radius_px = 1000.0
    corner = np.array([[radius_px * 0.8, radius_px * 0.8]])
    assert not figures_in_window(corner, (0.0, 0.0), (2 * radius_px, 2 * radius_px), "circle")[0]


def test_polygon_of_rectangle():
    points = _cluster((20000, 15000), 5, 100, seed=14)
    hotspot = find_hotspot(points, MPP, _tissue(40000, 30000))
    corners = hotspot.l0_polygon()
    width_px, height_px = hotspot.l0_size_px
    assert corners[2, 0] - corners[0, 0] == pytest.approx(width_px)
    assert corners[2, 1] - corners[0, 1] == pytest.approx(height_px)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mpp": 0.0}, "mpp must be a positive"),
        ({"min_tissue_share": 1.5}, r"minimum tissue share must be in \[0, 1\]"),
        ({"step_um": -1.0}, "hotspot step"),
    ],
)
def test_find_hotspot_rejects_invalid(kwargs, message):
    arguments = {"mpp": MPP, **kwargs}
    mpp = arguments.pop("mpp")
    with pytest.raises(ValueError, match=message):
        find_hotspot(np.zeros((3, 2)), mpp, **arguments)


def test_find_hotspot_rejects_bad_points():
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        find_hotspot(np.zeros((3, 3)), MPP)


# The real slide


@pytest.fixture(scope="module")
def real_overview(shared_data):
    from midog.inference.thumbnail import read_overview

    return read_overview(shared_data / "slides" / "cmu-1-small-region.svs")


def _uniform_block(mask: np.ndarray, value: bool, half_px: int) -> tuple[int, int]:
    """Return the ``(row, col)`` of the first mask pixel whose square neighbourhood is all ``value``."""
    target = mask == value
    integral = np.pad(np.cumsum(np.cumsum(target, axis=0), axis=1), ((1, 0), (1, 0)))
    size = 2 * half_px + 1
    sums = (
        integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size] + integral[:-size, :-size]
    )
    rows, cols = np.nonzero(sums == size * size)
    return int(rows[0]) + half_px, int(cols[0]) + half_px


def test_real_slide_glass_cluster_ignored(real_overview):
    tissue = real_overview.tissue
    scale = tissue.l0_per_mask_px
    shape = HotspotShape("circle", area_mm2=0.05)  # radius 126 µm, about 16 mask px on this slide
    glass_row, glass_col = _uniform_block(tissue.mask, False, 20)
    tissue_row, tissue_col = _uniform_block(tissue.mask, True, 8)
    on_glass = _cluster(((glass_col + 0.5) * scale, (glass_row + 0.5) * scale), 40, 60, seed=15)
    on_tissue = _cluster(((tissue_col + 0.5) * scale, (tissue_row + 0.5) * scale), 12, 60, seed=16)
    hotspot = find_hotspot(np.concatenate([on_glass, on_tissue]), real_overview.mpp, tissue, shape)
    assert hotspot.count == 12
    assert hotspot.figure_indices.min() >= 40


# GeoJSON


def test_geojson_polygon_closed(dense_cluster, tmp_path):
    _, hotspot = dense_cluster
    path = tmp_path / "slide.hotspot.geojson"
    write_hotspot_geojson(path, hotspot)
    ring = json.loads(path.read_text())["features"][0]["geometry"]["coordinates"][0]
    assert len(ring) == 5
    assert ring[0] == ring[-1]


def test_geojson_is_qupath_annotation(dense_cluster, tmp_path):
    _, hotspot = dense_cluster
    path = tmp_path / "slide.hotspot.geojson"
    write_hotspot_geojson(path, hotspot)
    properties = json.loads(path.read_text())["features"][0]["properties"]
    assert properties["objectType"] == "annotation"
    assert properties["measurements"]["mitotic count"] == 25


def test_geojson_round_trip(dense_cluster, tmp_path):
    _, hotspot = dense_cluster
    path = tmp_path / "slide.hotspot.geojson"
    write_hotspot_geojson(path, hotspot, search={"kind": "rectangle", "step_um": 25.0})
    properties, search = read_hotspot_geojson(path)
    assert properties["count"] == 25
    assert properties["l0_centre_xy"] == list(hotspot.l0_centre_xy)
    assert search == {"kind": "rectangle", "step_um": 25.0}


def test_geojson_without_hotspot(tmp_path):
    path = tmp_path / "slide.hotspot.geojson"
    write_hotspot_geojson(path, None)
    assert read_hotspot_geojson(path) == (None, None)


def test_geojson_rejects_other_file(tmp_path):
    path = tmp_path / "other.geojson"
    path.write_text('{"type": "Feature"}')
    with pytest.raises(ValueError, match="is not a GeoJSON FeatureCollection"):
        read_hotspot_geojson(path)


# Cost


def test_cost_of_100k_points():
    """Print the time for 100,000 figures on a 25 x 20 mm slide (not asserted, CPU-dependent)."""
    rng = np.random.default_rng(0)
    width_px, height_px = 100_000, 80_000  # 25 x 20 mm at 0.25 µm/px
    points = rng.uniform([0, 0], [width_px, height_px], size=(100_000, 2))
    tissue = _tissue(width_px, height_px)
    for kind in ("rectangle", "circle"):
        started = time.perf_counter()
        hotspot = find_hotspot(points, MPP, tissue, HotspotShape(kind))
        seconds = time.perf_counter() - started
        print(f"find_hotspot, 100,000 figures, 25 x 20 mm, {kind}: {seconds:.2f} s, count {hotspot.count}")
        assert count_in_window(points, hotspot.l0_centre_xy, hotspot.l0_size_px, kind) == hotspot.count
