"""Region polygons from QuPath GeoJSON: holes, MultiPolygons, repairs, clipping and point queries."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from midog.errors import AnnotationError
from midog.io.regions import image_name_from_geojson, read_regions, sample_points_in_regions

SQUARE_WITH_HOLE = {
    "type": "Polygon",
    "coordinates": [
        [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]],
        [[40, 40], [60, 40], [60, 60], [40, 60], [40, 40]],
    ],
}
TWO_SQUARES = {
    "type": "MultiPolygon",
    "coordinates": [
        [[[200, 0], [220, 0], [220, 20], [200, 20], [200, 0]]],
        [[[300, 0], [320, 0], [320, 20], [300, 20], [300, 0]]],
    ],
}
# A figure-eight ring that crosses itself at (50, 250).
BOW_TIE = {
    "type": "Polygon",
    "coordinates": [[[0, 200], [100, 300], [100, 200], [0, 300], [0, 200]]],
}


def _feature(geometry: dict, name: str | None) -> dict:
    properties = {"objectType": "annotation"}
    if name is not None:
        properties["classification"] = {"name": name, "color": [255, 0, 0]}
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def _write(path: Path, features: list[dict], collection: bool = True) -> Path:
    data = {"type": "FeatureCollection", "features": features} if collection else features
    path.write_text(json.dumps(data))
    return path


def test_image_name_from_file():
    assert image_name_from_geojson("/data/001.tiff.geojson") == "001.tiff"


def test_hole_is_outside(tmp_path):
    regions = read_regions(_write(tmp_path / "a.tiff.geojson", [_feature(SQUARE_WITH_HOLE, "Necrosis")]))
    assert regions.contains(np.array([[50.0, 50.0], [20.0, 20.0]])).tolist() == [False, True]


def test_hole_area(tmp_path):
    regions = read_regions(_write(tmp_path / "a.tiff.geojson", [_feature(SQUARE_WITH_HOLE, "Necrosis")]))
    assert regions.area_px == pytest.approx(100 * 100 - 20 * 20)


def test_multipolygon_parts(tmp_path):
    regions = read_regions(_write(tmp_path / "a.tiff.geojson", [_feature(TWO_SQUARES, "Debris")]))
    inside = regions.contains(np.array([[210.0, 10.0], [310.0, 10.0], [260.0, 10.0]]))
    assert inside.tolist() == [True, True, False]


def test_bare_feature_list(tmp_path):
    path = _write(tmp_path / "a.tiff.geojson", [_feature(TWO_SQUARES, "Debris")], collection=False)
    assert len(read_regions(path)) == 1


def test_self_intersection_repaired(tmp_path, caplog):
    path = _write(tmp_path / "a.tiff.geojson", [_feature(BOW_TIE, "Necrosis")])
    with caplog.at_level(logging.WARNING, logger="midog.io.regions"):
        regions = read_regions(path)
    assert "repaired 1 invalid polygon" in caplog.text
    assert regions.polygons[0].is_valid


def test_self_intersection_keeps_both_lobes(tmp_path):
    regions = read_regions(_write(tmp_path / "a.tiff.geojson", [_feature(BOW_TIE, "Necrosis")]))
    # The two triangles of the bow tie, left (x < 50) and right (x > 50) of the crossing.
    assert regions.contains(np.array([[10.0, 250.0], [90.0, 250.0]])).tolist() == [True, True]
    assert regions.area_px == pytest.approx(2 * 0.5 * 100 * 50)


def test_class_filter(tmp_path):
    features = [_feature(SQUARE_WITH_HOLE, "Necrosis"), _feature(TWO_SQUARES, "Tumor")]
    regions = read_regions(_write(tmp_path / "a.tiff.geojson", features), classes=["necrosis", "debris"])
    assert regions.classes == ["Necrosis"]


def test_unclassified_skipped(tmp_path):
    regions = read_regions(_write(tmp_path / "a.tiff.geojson", [_feature(SQUARE_WITH_HOLE, None)]))
    assert len(regions) == 0


def test_points_ignored(tmp_path):
    point = _feature({"type": "Point", "coordinates": [5, 5]}, "Mitotic figure")
    regions = read_regions(_write(tmp_path / "a.tiff.geojson", [point, _feature(TWO_SQUARES, "Debris")]))
    assert regions.classes == ["Debris"]


def test_border_counts_as_inside(tmp_path):
    regions = read_regions(_write(tmp_path / "a.tiff.geojson", [_feature(SQUARE_WITH_HOLE, "Necrosis")]))
    # On the outer edge, on a corner, and on the hole's edge.
    on_border = np.array([[100.0, 50.0], [0.0, 0.0], [40.0, 50.0]])
    assert regions.contains(on_border).all()


def test_just_outside_border(tmp_path):
    regions = read_regions(_write(tmp_path / "a.tiff.geojson", [_feature(SQUARE_WITH_HOLE, "Necrosis")]))
    assert not regions.contains(np.array([[100.001, 50.0]]))[0]


def test_class_of_points(tmp_path):
    features = [_feature(SQUARE_WITH_HOLE, "Necrosis"), _feature(TWO_SQUARES, "Debris")]
    regions = read_regions(_write(tmp_path / "a.tiff.geojson", features))
    assert regions.class_of(np.array([[10.0, 10.0], [210.0, 10.0], [500.0, 500.0]])).tolist() == [
        "Necrosis",
        "Debris",
        None,
    ]


def test_clipped_to_image(tmp_path):
    path = _write(
        tmp_path / "a.tiff.geojson", [_feature(SQUARE_WITH_HOLE, "Necrosis"), _feature(TWO_SQUARES, "Debris")]
    )
    # A 80x80 px image: the square is cut to 80x80 (less the hole), the MultiPolygon lies outside.
    regions = read_regions(path, image_size_px=(80, 80))
    assert regions.area_px == pytest.approx(80 * 80 - 20 * 20)
    assert regions.classes == ["Necrosis"]


def test_many_polygons_query(tmp_path):
    squares = [
        _feature(
            {"type": "Polygon", "coordinates": [[[x, y], [x + 5, y], [x + 5, y + 5], [x, y + 5], [x, y]]]},
            "Debris",
        )
        for x in range(0, 1000, 10)
        for y in range(0, 1000, 10)
    ]
    regions = read_regions(_write(tmp_path / "a.tiff.geojson", squares))
    points = np.array([[2.5 + 10 * i, 2.5 + 10 * j] for i in range(100) for j in range(100)] + [[7.5, 7.5]])
    inside = regions.contains(points)
    assert inside[:-1].all()
    assert not inside[-1]


def test_not_geojson(tmp_path):
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(AnnotationError, match="not QuPath GeoJSON"):
        read_regions(path)


def test_missing_file(tmp_path):
    with pytest.raises(AnnotationError, match="not found"):
        read_regions(tmp_path / "missing.geojson")


def test_sampled_points_inside(tmp_path):
    features = [_feature(SQUARE_WITH_HOLE, "Necrosis"), _feature(TWO_SQUARES, "Debris")]
    regions = read_regions(_write(tmp_path / "a.tiff.geojson", features))
    points = sample_points_in_regions(regions, 500, np.random.default_rng(0))
    assert regions.contains(points).all()


def test_sampled_points_follow_area(tmp_path):
    features = [_feature(SQUARE_WITH_HOLE, "Necrosis"), _feature(TWO_SQUARES, "Debris")]
    regions = read_regions(_write(tmp_path / "a.tiff.geojson", features))
    points = sample_points_in_regions(regions, 2000, np.random.default_rng(0))
    # The hole-less share of the first region is 9600 of 10400 px².
    share = float(np.mean(points[:, 0] <= 100))
    assert share == pytest.approx(9600 / 10400, abs=0.03)
