"""Tests for midog.io.writers: CSV, QuPath GeoJSON, MIDOG JSON and atomic writes."""

from __future__ import annotations

import copy
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from midog.errors import AnnotationError, OutputError
from midog.io.writers import (
    CSV_COLUMNS,
    MAX_MIDOG_COORDINATE_MM,
    atomic_output,
    mm_from_px,
    px_from_mm,
    read_detections_csv,
    read_midog_json,
    validate_midog_json,
    write_detections_csv,
    write_midog_json,
    write_qupath_geojson,
)
from midog.structures import Detections

TWO_CLASSES = ("mitotic figure", "imposter")


def _numpy_detections() -> Detections:
    """Three detections whose x, y and score are numpy float32 and labels numpy int64."""
    xy = np.array([[10.5, 20.25], [300.0, 40.0], [5.0, 6.0]], dtype=np.float32)
    scores = np.array([0.91, 0.3, 0.5], dtype=np.float32)
    labels = np.array([0, 1, 0], dtype=np.int64)
    return Detections(xy, scores, labels, TWO_CLASSES)


def _challenge_detections() -> Detections:
    return Detections(np.array([[400.0, 800.0], [1200.0, 40.0]]), np.array([0.91, 0.30]), np.array([0, 0]))


def _valid_midog_object() -> dict:
    return {
        "name": "Points of interest",
        "type": "Multiple points",
        "points": [
            {"name": "mitotic figure", "point": [0.1, 0.2, 0], "probability": 0.91},
            {"name": "non-mitotic figure", "point": [0.3, 0.01, 0], "probability": 0.3},
        ],
        "version": {"major": 1, "minor": 0},
    }


# Unit converters


def test_mm_from_px():
    assert mm_from_px(400.0, 0.25) == pytest.approx(0.1)


def test_px_from_mm():
    assert px_from_mm(0.1, 0.25) == pytest.approx(400.0)


def test_mm_px_round_trip_array():
    l0_xy = np.array([[400.0, 800.0], [1200.0, 40.0]])

    assert np.allclose(px_from_mm(mm_from_px(l0_xy, 0.499), 0.499), l0_xy)


# Atomic writes


def test_atomic_success_leaves_only_file(tmp_path):
    path = tmp_path / "out.txt"

    with atomic_output(path) as temporary_path:
        assert temporary_path.parent == tmp_path
        temporary_path.write_text("done")

    assert path.read_text() == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_failure_leaves_nothing(tmp_path):
    path = tmp_path / "out.txt"

    with pytest.raises(RuntimeError, match="disk gone"), atomic_output(path) as temporary_path:
        temporary_path.write_text("half a fi")
        raise RuntimeError("disk gone")

    assert list(tmp_path.iterdir()) == []


def test_atomic_failure_keeps_old_file(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("previous run")

    with pytest.raises(RuntimeError), atomic_output(path) as temporary_path:
        temporary_path.write_text("half")
        raise RuntimeError("interrupted")

    assert path.read_text() == "previous run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_file_mode_follows_umask(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    path = tmp_path / "out.txt"

    with atomic_output(path) as temporary_path:
        temporary_path.write_text("x")

    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_folder_is_file(tmp_path):
    not_a_folder = tmp_path / "results.txt"
    not_a_folder.write_text("")

    with pytest.raises(OutputError, match=f"folder {not_a_folder}"), atomic_output(not_a_folder / "out.csv"):
        pass


def test_atomic_folder_missing(tmp_path):
    folder = tmp_path / "missing"

    with pytest.raises(OutputError, match=f"folder {folder}"), atomic_output(folder / "out.csv"):
        pass


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only folders")
def test_atomic_folder_read_only(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match=f"folder {folder}"), atomic_output(folder / "out.csv"):
            pass
    finally:
        folder.chmod(0o700)


def test_atomic_target_is_directory(tmp_path):
    (tmp_path / "out.csv").mkdir()

    with pytest.raises(OutputError, match="out.csv"), atomic_output(tmp_path / "out.csv") as temporary_path:
        temporary_path.write_text("x")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_writer_failure_leaves_nothing(tmp_path):
    detections = Detections(np.array([[1.0, 2.0]]), np.array([np.nan]), np.array([0]))

    with pytest.raises(OutputError, match="non-finite"):
        write_qupath_geojson(tmp_path / "out.geojson", detections, mpp=0.25)
    assert list(tmp_path.iterdir()) == []


# CSV


def test_csv_round_trip(tmp_path):
    path = tmp_path / "detections.csv"
    write_detections_csv(path, _numpy_detections(), image="slide 1, scan 2.svs")

    table = read_detections_csv(path)

    assert list(table.columns) == list(CSV_COLUMNS)
    assert table["image"].tolist() == ["slide 1, scan 2.svs"] * 3
    assert table["x"].tolist() == [10.5, 300.0, 5.0]
    assert table["y"].tolist() == [20.25, 40.0, 6.0]
    assert table["label"].tolist() == ["mitotic figure", "imposter", "mitotic figure"]
    assert table["score"].tolist() == pytest.approx([0.91, 0.3, 0.5])


def test_csv_header_and_short_scores(tmp_path):
    path = tmp_path / "detections.csv"
    write_detections_csv(path, _numpy_detections(), image="a.svs")

    lines = path.read_text().splitlines()

    assert lines[0] == "image,x,y,label,score"
    assert lines[1] == "a.svs,10.5,20.25,mitotic figure,0.91"


def test_csv_empty(tmp_path):
    path = tmp_path / "detections.csv"
    write_detections_csv(path, Detections.empty(), image="a.svs")

    table = read_detections_csv(path)

    assert len(table) == 0
    assert list(table.columns) == list(CSV_COLUMNS)


def test_csv_rejects_unnamed_label(tmp_path):
    detections = Detections(np.array([[1.0, 2.0]]), np.array([0.5]), np.array([3]))

    with pytest.raises(OutputError, match="label 3 has no class name"):
        write_detections_csv(tmp_path / "out.csv", detections, image="a.svs")


def test_csv_read_missing_column(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("image,x,y,label\na.svs,1,2,mitotic figure\n")

    with pytest.raises(AnnotationError, match=r"lacks columns \['score'\]"):
        read_detections_csv(path)


def test_csv_read_not_a_number(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("image,x,y,label,score\na.svs,1,two,mitotic figure,0.5\n")

    with pytest.raises(AnnotationError, match="column y in data row 1 is 'two'"):
        read_detections_csv(path)


def test_csv_read_missing_file(tmp_path):
    with pytest.raises(AnnotationError, match="not found"):
        read_detections_csv(tmp_path / "missing.csv")


# QuPath GeoJSON


def test_geojson_numpy_scalars(tmp_path):
    path = tmp_path / "detections.geojson"
    write_qupath_geojson(path, _numpy_detections(), mpp=0.25)
    text = path.read_text()

    collection = json.loads(text)

    assert "np." not in text
    assert "NaN" not in text
    assert collection["type"] == "FeatureCollection"
    assert len(collection["features"]) == 3


def test_geojson_feature_layout(tmp_path):
    path = tmp_path / "detections.geojson"
    write_qupath_geojson(path, _numpy_detections(), mpp=0.25)

    features = json.loads(path.read_text())["features"]

    expected = [
        ((10.5, 20.25), 0.91, "mitotic figure"),
        ((300.0, 40.0), 0.3, "imposter"),
        ((5.0, 6.0), 0.5, "mitotic figure"),
    ]
    for feature, ((l0_x, l0_y), score, class_name) in zip(features, expected, strict=True):
        assert feature["type"] == "Feature"
        assert uuid.UUID(feature["id"]).version == 4
        assert feature["geometry"] == {"type": "Point", "coordinates": [l0_x, l0_y]}
        assert feature["properties"]["objectType"] == "detection"
        assert feature["properties"]["classification"]["name"] == class_name
        assert feature["properties"]["measurements"] == {"score": score}


def test_geojson_colors_plain_ints(tmp_path):
    path = tmp_path / "detections.geojson"
    write_qupath_geojson(path, _numpy_detections(), mpp=0.25)

    features = json.loads(path.read_text())["features"]

    for feature in features:
        color = feature["properties"]["classification"]["color"]
        assert len(color) == 3
        assert all(type(value) is int and 0 <= value <= 255 for value in color)


def test_geojson_ids_unique(tmp_path):
    path = tmp_path / "detections.geojson"
    write_qupath_geojson(path, _numpy_detections(), mpp=0.25)

    ids = [feature["id"] for feature in json.loads(path.read_text())["features"]]

    assert len(set(ids)) == 3


def test_geojson_rejects_infinite_coordinate(tmp_path):
    detections = Detections(np.array([[np.inf, 2.0]]), np.array([0.5]), np.array([0]))

    with pytest.raises(OutputError, match="detection 0 at x=inf"):
        write_qupath_geojson(tmp_path / "out.geojson", detections, mpp=0.25)


# MIDOG challenge JSON


def test_midog_challenge_points(tmp_path):
    path = tmp_path / "mitotic-figures.json"
    write_midog_json(path, _challenge_detections(), mpp=0.25, threshold=0.5)

    result = json.loads(path.read_text())

    assert result["name"] == "Points of interest"
    assert result["type"] == "Multiple points"
    assert result["version"] == {"major": 1, "minor": 0}
    first, second = result["points"]
    assert first["name"] == "mitotic figure"
    assert first["point"] == pytest.approx([0.1, 0.2, 0])
    assert first["probability"] == 0.91
    assert second["name"] == "non-mitotic figure"
    assert second["point"] == pytest.approx([0.3, 0.01, 0])
    assert second["probability"] == 0.3


def test_midog_output_validates(tmp_path):
    path = tmp_path / "mitotic-figures.json"
    write_midog_json(path, _challenge_detections(), mpp=0.25, threshold=0.5)

    validate_midog_json(json.loads(path.read_text()))


def test_midog_round_trip(tmp_path):
    path = tmp_path / "mitotic-figures.json"
    write_midog_json(path, _challenge_detections(), mpp=0.25, threshold=0.5)

    detections = read_midog_json(path, mpp=0.25)

    assert np.allclose(detections.xy, [[400.0, 800.0], [1200.0, 40.0]])
    assert np.allclose(detections.scores, [0.91, 0.30])
    assert detections.labels.tolist() == [0, 1]
    assert detections.class_names == ("mitotic figure", "non-mitotic figure")


def test_midog_threshold_inclusive(tmp_path):
    path = tmp_path / "mitotic-figures.json"
    detections = Detections(np.array([[10.0, 10.0]]), np.array([0.5]), np.array([0]))
    write_midog_json(path, detections, mpp=0.25, threshold=0.5)

    assert json.loads(path.read_text())["points"][0]["name"] == "mitotic figure"


def test_midog_empty(tmp_path):
    path = tmp_path / "mitotic-figures.json"
    write_midog_json(path, Detections.empty(), mpp=0.25, threshold=0.5)

    assert json.loads(path.read_text())["points"] == []


def test_midog_keeps_mitotic_class_only(tmp_path):
    path = tmp_path / "mitotic-figures.json"
    write_midog_json(path, _numpy_detections(), mpp=0.25, threshold=0.5)

    probabilities = [point["probability"] for point in json.loads(path.read_text())["points"]]

    assert probabilities == [0.91, 0.5]


def test_midog_needs_mitotic_class(tmp_path):
    detections = Detections(np.array([[1.0, 2.0]]), np.array([0.5]), np.array([0]), ("mitosis", "imposter"))

    with pytest.raises(OutputError, match="none of the classes"):
        write_midog_json(tmp_path / "out.json", detections, mpp=0.25, threshold=0.5)


def test_midog_rejects_nan_score(tmp_path):
    detections = Detections(np.array([[400.0, 800.0]]), np.array([np.nan]), np.array([0]))

    with pytest.raises(OutputError, match="probability nan"):
        write_midog_json(tmp_path / "out.json", detections, mpp=0.25, threshold=0.5)
    assert list(tmp_path.iterdir()) == []


def test_midog_rejects_far_point(tmp_path):
    # 50,000 px at 0.25 µm/px is 12.5 mm, beyond MAX_MIDOG_COORDINATE_MM.
    detections = Detections(np.array([[50000.0, 800.0]]), np.array([0.9]), np.array([0]))

    with pytest.raises(OutputError, match="above 10 mm"):
        write_midog_json(tmp_path / "out.json", detections, mpp=0.25, threshold=0.5)
    assert list(tmp_path.iterdir()) == []


def _set_point(obj: dict, key: str, value: object) -> None:
    obj["points"][0][key] = value


INVALID_MIDOG = {
    "pixel coordinates": (lambda obj: _set_point(obj, "point", [400, 800, 0]), "not pixels"),
    "missing probability": (lambda obj: obj["points"][0].pop("probability"), "point 0 must have exactly"),
    "wrong type": (lambda obj: obj.update(type="Multiple Points"), "type must be 'Multiple points'"),
    "nan probability": (lambda obj: _set_point(obj, "probability", float("nan")), "probability nan"),
    "probability above 1": (lambda obj: _set_point(obj, "probability", 1.5), "probability 1.5"),
    "probability as string": (lambda obj: _set_point(obj, "probability", "0.9"), "probability '0.9'"),
    "probability as bool": (lambda obj: _set_point(obj, "probability", True), "probability True"),
    "nan coordinate": (lambda obj: _set_point(obj, "point", [float("nan"), 0.2, 0]), "three finite numbers"),
    "two coordinates": (lambda obj: _set_point(obj, "point", [0.1, 0.2]), "three finite numbers"),
    "z not zero": (lambda obj: _set_point(obj, "point", [0.1, 0.2, 1]), "z = 1"),
    "other name": (lambda obj: _set_point(obj, "name", "mitosis"), "name 'mitosis'"),
    "extra key": (lambda obj: obj.update(extra=1), "exactly the keys"),
    "missing version": (lambda obj: obj.pop("version"), "exactly the keys"),
    "version not dict": (lambda obj: obj.update(version="1.0"), "version must be"),
    "points not list": (lambda obj: obj.update(points={}), "points must be a list"),
}


@pytest.mark.parametrize("case", list(INVALID_MIDOG))
def test_midog_validation_rejects(case):
    obj = copy.deepcopy(_valid_midog_object())
    mutate, message = INVALID_MIDOG[case]
    mutate(obj)

    with pytest.raises(OutputError, match=message):
        validate_midog_json(obj)


def test_midog_validation_accepts_valid():
    validate_midog_json(_valid_midog_object())


def test_midog_bound_constant():
    point = {"name": "mitotic figure", "point": [MAX_MIDOG_COORDINATE_MM, 0.0, 0], "probability": 0.5}
    obj = {**_valid_midog_object(), "points": [point]}

    validate_midog_json(obj)


def test_midog_read_invalid_file(tmp_path):
    path = tmp_path / "pixels.json"
    obj = _valid_midog_object()
    obj["points"][0]["point"] = [400, 800, 0]
    path.write_text(json.dumps(obj))

    with pytest.raises(AnnotationError, match="pixels.json.*not pixels"):
        read_midog_json(path, mpp=0.25)


def test_midog_read_not_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{")

    with pytest.raises(AnnotationError, match="broken.json"):
        read_midog_json(path, mpp=0.25)


def test_midog_read_missing(tmp_path):
    with pytest.raises(AnnotationError, match="not found"):
        read_midog_json(tmp_path / "missing.json", mpp=0.25)


@pytest.mark.parametrize("count", [0, 1, 5000])
def test_streamed_json_matches_plain_dump(tmp_path, count):
    # The JSON writers write one point at a time, in chunks of rows; the text
    # must be what json.dumps(indent=1) gives for the whole object.
    rng = np.random.default_rng(count)
    detections = Detections(
        xy=rng.uniform(0, 30000, (count, 2)),
        scores=rng.uniform(0, 1, count).astype(np.float32),
        labels=np.zeros(count, dtype=np.int64),
    )
    midog_path, geojson_path = tmp_path / "points.json", tmp_path / "points.geojson"
    write_midog_json(midog_path, detections, mpp=0.25, threshold=0.5, max_coordinate_mm=None)
    write_qupath_geojson(geojson_path, detections, mpp=0.25)
    for path, key in ((midog_path, "points"), (geojson_path, "features")):
        text = path.read_text(encoding="utf-8")
        loaded = json.loads(text)
        assert text == json.dumps(loaded, indent=1) + "\n"
        assert len(loaded[key]) == count
    scores = [point["probability"] for point in json.loads(midog_path.read_text())["points"]]
    np.testing.assert_array_equal(np.float32(scores), detections.scores)


def test_midog_late_invalid_point_leaves_nothing(tmp_path):
    count = 10000
    xy = np.full((count, 2), 100.0)
    xy[-1] = (1e6, 100.0)  # 250 mm at 0.25 µm/px, past the bound
    detections = Detections(
        xy=xy, scores=np.full(count, 0.9, dtype=np.float32), labels=np.zeros(count, dtype=np.int64)
    )
    path = tmp_path / "points.json"
    with pytest.raises(OutputError, match=f"point {count - 1} "):
        write_midog_json(path, detections, mpp=0.25, threshold=0.5)
    assert list(tmp_path.iterdir()) == []
