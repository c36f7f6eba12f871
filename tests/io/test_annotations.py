"""Tests of the annotation readers on the real MIDOG++ database and on small files made here."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from midog.errors import AnnotationError
from midog.io.annotations import (
    ANNOTATION_COLUMNS,
    IMAGE_COLUMNS,
    IMPOSTER,
    MIDOGPP_TUMOR_TYPES,
    MITOTIC_FIGURE,
    infer_box_layout,
    normalize_label,
    read_annotations,
    read_domains_csv,
)

# Mitotic figures per tumour type in MIDOG++.json; breast cancer comes from three scanners.
MIDOGPP_FIGURES_PER_TUMOR = {
    "human breast cancer": 451 + 582 + 688,
    "canine lung cancer": 855,
    "canine lymphosarcoma": 3959,
    "canine cutaneous mast cell tumor": 2327,
    "human neuroendocrine tumor": 639,
    "canine soft tissue sarcoma": 1286,
    "human melanoma": 1150,
}


@pytest.fixture(scope="module")
def midogpp_paths(request: pytest.FixtureRequest) -> tuple[Path, Path]:
    shared = request.getfixturevalue("shared_data")
    return shared / "midogpp" / "MIDOG++.json", shared / "midogpp" / "datasets_xvalidation.csv"


@pytest.fixture(scope="module")
def midogpp(midogpp_paths: tuple[Path, Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    json_path, csv_path = midogpp_paths
    return read_annotations(json_path, domains_csv=csv_path)


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def coco_like(boxes: list[list[float]], categories: list[dict], **image_fields: object) -> dict:
    """Build a small COCO-like file: two 1000x800 images, all boxes on image 1."""
    return {
        "images": [
            {"id": 1, "file_name": "a.tiff", "width": 1000, "height": 800, **image_fields},
            {"id": 2, "file_name": "b.tiff", "width": 1000, "height": 800, **image_fields},
        ],
        "categories": categories,
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": 1 if i % 2 == 0 else 2, "bbox": box}
            for i, box in enumerate(boxes)
        ],
    }


MIDOG_CATEGORIES = [{"id": 1, "name": "mitotic figure"}, {"id": 2, "name": "not mitotic figure"}]
MIDOG_BOXES = [[100, 200, 150, 250], [500, 300, 550, 350], [975, 10, 1025, 60]]
COCO_BOXES = [[100, 200, 50, 50], [500, 300, 50, 50], [700, 20, 50, 50]]


# ---------------------------------------------------------------------------
# Real MIDOG++ database
# ---------------------------------------------------------------------------


def test_midogpp_mitotic_figure_count(midogpp: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    annotations, _ = midogpp
    assert (annotations["label"] == MITOTIC_FIGURE).sum() == 11937


def test_midogpp_imposter_count(midogpp: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    annotations, _ = midogpp
    assert (annotations["label"] == IMPOSTER).sum() == 14349


def test_midogpp_labelled_images(midogpp: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    _, images = midogpp
    assert len(images) == 553
    assert images["labelled"].sum() == 503


def test_midogpp_unlabelled_ids(midogpp: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    _, images = midogpp
    unlabelled = images.loc[~images["labelled"], "image_id"].tolist()
    assert unlabelled == list(range(151, 201))


def test_midogpp_tumor_types(midogpp: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    _, images = midogpp
    tumors = set(images.loc[images["labelled"], "tumor"])
    assert tumors == set(MIDOGPP_TUMOR_TYPES)
    assert len(tumors) == 7


def test_midogpp_figures_per_tumor(midogpp: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    annotations, _ = midogpp
    counts = annotations[annotations["label"] == MITOTIC_FIGURE].groupby("tumor").size().to_dict()
    assert counts == MIDOGPP_FIGURES_PER_TUMOR


def test_midogpp_domains_from_csv(midogpp: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    _, images = midogpp
    labelled = images[images["labelled"]]
    assert labelled[["scanner", "lab", "species", "split"]].notna().all().all()
    assert set(labelled["scanner"]) == {"3D Histech", "Aperio CS2", "Hamamatsu S360", "Hamamatsu XR"}
    assert labelled["split"].value_counts().to_dict() == {"train": 392, "test": 111}
    assert labelled["species"].value_counts().to_dict() == {"Human": 254, "Canine": 249}


def test_midogpp_domains_on_annotations(midogpp: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    annotations, _ = midogpp
    first = annotations.iloc[0]
    assert list(annotations.columns) == list(ANNOTATION_COLUMNS)
    assert (first["image"], first["tumor"], first["scanner"], first["split"]) == (
        "001.tiff",
        "human breast cancer",
        "Hamamatsu XR",
        "train",
    )


def test_midogpp_votes_and_centre(midogpp: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    annotations, _ = midogpp
    # The first annotation has bbox [4336, 346, 4386, 396] and votes [2, 2].
    first = annotations.iloc[0]
    assert (first["x"], first["y"]) == (4361.0, 371.0)
    assert first["votes"] == (2, 2)
    assert first["label"] == IMPOSTER


def test_midogpp_clips_outside_centres(
    midogpp_paths: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    json_path, _ = midogpp_paths
    with caplog.at_level(logging.WARNING, logger="midog.io.annotations"):
        annotations, _ = read_annotations(json_path)
    assert "clipped 2 annotation centres" in caplog.text
    assert "305.tiff" in caplog.text
    assert (annotations["x"] >= 0).all() and (annotations["y"] >= 0).all()
    # Image 305 has a figure with bbox [-27, 2391, 23, 2441], centre x = -2.
    clipped = annotations[(annotations["image"] == "305.tiff") & (annotations["y"] == 2416.0)]
    assert clipped["x"].tolist() == [0.0]


def test_midogpp_without_domains_csv(midogpp_paths: tuple[Path, Path]) -> None:
    json_path, _ = midogpp_paths
    _, images = read_annotations(json_path)
    assert images["scanner"].isna().all()
    assert images["tumor"].notna().all()


def test_midogpp_read_as_coco_rejected(midogpp_paths: tuple[Path, Path]) -> None:
    json_path, _ = midogpp_paths
    with pytest.raises(AnnotationError, match="MIDOG.*format='midogpp'") as info:
        read_annotations(json_path, format="coco")
    assert str(json_path) in str(info.value)


def test_domains_csv_aliases(midogpp_paths: tuple[Path, Path]) -> None:
    _, csv_path = midogpp_paths
    domains = read_domains_csv(csv_path)
    assert len(domains) == 503
    assert "Hamammatsu XR" not in set(domains["scanner"])
    assert "canine lymphoma" not in set(domains["tumor"])
    assert set(domains.columns) == {"key", "split", "tumor", "scanner", "lab", "species"}


def test_domains_csv_as_ground_truth_rejected(midogpp_paths: tuple[Path, Path]) -> None:
    _, csv_path = midogpp_paths
    with pytest.raises(AnnotationError, match="domains table"):
        read_annotations(csv_path)


# ---------------------------------------------------------------------------
# Small COCO-like files
# ---------------------------------------------------------------------------


def test_midog21_auto(tmp_path: Path) -> None:
    path = write_json(tmp_path / "midog21.json", coco_like(MIDOG_BOXES, MIDOG_CATEGORIES))
    annotations, images = read_annotations(path)
    assert annotations[["x", "y"]].to_numpy().tolist() == [[125, 225], [525, 325], [999, 35]]
    assert annotations["label"].tolist() == [MITOTIC_FIGURE, IMPOSTER, MITOTIC_FIGURE]
    assert set(images["tumor"]) == {"human breast cancer"}
    assert images["labelled"].tolist() == [True, False]


def test_midog21_clip_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_json(tmp_path / "midog21.json", coco_like(MIDOG_BOXES, MIDOG_CATEGORIES))
    with caplog.at_level(logging.WARNING, logger="midog.io.annotations"):
        annotations, _ = read_annotations(path, format="midog21")
    # Centre x 1000 lies past the last pixel column 999 of the 1000 px wide image.
    assert "clipped 1 annotation centres" in caplog.text
    assert annotations["x"].max() == 999.0


def test_coco_centres(tmp_path: Path) -> None:
    path = write_json(tmp_path / "coco.json", coco_like(COCO_BOXES, MIDOG_CATEGORIES))
    annotations, images = read_annotations(path)
    assert annotations[["x", "y"]].to_numpy().tolist() == [[125, 225], [525, 325], [725, 45]]
    assert images["tumor"].isna().all()
    assert images["labelled"].all()


def test_coco_read_as_midogpp_rejected(tmp_path: Path) -> None:
    path = write_json(tmp_path / "coco.json", coco_like(COCO_BOXES, MIDOG_CATEGORIES))
    with pytest.raises(AnnotationError, match=r"COCO \[x, y, width, height\].*format='coco'") as info:
        read_annotations(path, format="midogpp")
    assert str(path) in str(info.value)


def test_midog_read_as_coco_rejected(tmp_path: Path) -> None:
    path = write_json(tmp_path / "midog.json", coco_like(MIDOG_BOXES, MIDOG_CATEGORIES))
    with pytest.raises(AnnotationError, match="format='midogpp' or format='midog21'"):
        read_annotations(path, format="coco")


def test_coco_unknown_category_id(tmp_path: Path) -> None:
    data = coco_like(COCO_BOXES, [{"id": 1, "name": "mitotic figure"}])
    with pytest.raises(AnnotationError, match=r"category ids not listed.*2 \(1\)"):
        read_annotations(write_json(tmp_path / "coco.json", data), format="coco")


def test_coco_unknown_image_id(tmp_path: Path) -> None:
    data = coco_like(COCO_BOXES, MIDOG_CATEGORIES)
    data["annotations"][0]["image_id"] = 9
    with pytest.raises(AnnotationError, match=r"image ids not listed.*9 \(1\)"):
        read_annotations(write_json(tmp_path / "coco.json", data), format="coco")


def test_coco_unknown_label_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = coco_like(COCO_BOXES, [{"id": 1, "name": "Mitosis"}, {"id": 2, "name": "tumor cell"}])
    with caplog.at_level(logging.WARNING, logger="midog.io.annotations"):
        annotations, _ = read_annotations(write_json(tmp_path / "coco.json", data))
    assert annotations["label"].tolist() == [MITOTIC_FIGURE, "tumor cell", MITOTIC_FIGURE]
    assert "1 annotations have labels other than" in caplog.text
    assert "tumor cell (1)" in caplog.text


def test_coco_single_box_ambiguous(tmp_path: Path) -> None:
    data = coco_like([[10, 10, 40, 40]], MIDOG_CATEGORIES)
    with pytest.raises(AnnotationError, match="cannot tell"):
        read_annotations(write_json(tmp_path / "one.json", data))


def test_coco_single_box_declared(tmp_path: Path) -> None:
    data = coco_like([[10, 10, 40, 40]], MIDOG_CATEGORIES)
    annotations, _ = read_annotations(write_json(tmp_path / "one.json", data), format="coco")
    assert annotations[["x", "y"]].to_numpy().tolist() == [[30, 30]]


def test_midogpp_small_file_tumors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = coco_like(MIDOG_BOXES[:2], MIDOG_CATEGORIES, tumor_type="feline osteosarcoma")
    with caplog.at_level(logging.WARNING, logger="midog.io.annotations"):
        _, images = read_annotations(write_json(tmp_path / "pp.json", data))
    assert set(images["tumor"]) == {"feline osteosarcoma"}
    assert "outside the MIDOG++ set: feline osteosarcoma (1)" in caplog.text


# ---------------------------------------------------------------------------
# Domains CSV joined to a small file
# ---------------------------------------------------------------------------


def test_domains_csv_partial(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = coco_like(COCO_BOXES, MIDOG_CATEGORIES)
    data["annotations"].append({"id": 9, "image_id": 2, "category_id": 1, "bbox": [10, 10, 50, 50]})
    path = write_json(tmp_path / "coco.json", data)
    domains = tmp_path / "domains.csv"
    domains.write_text(
        "Slide;Dataset;Tumor;Scanner;Origin;Species\n1;test;canine lymphoma;Hamammatsu XR;X;Canine\n"
        "7;train;human melanoma;Aperio CS2;Y;Human\n",
        encoding="utf-8",
    )
    with caplog.at_level(logging.WARNING, logger="midog.io.annotations"):
        annotations, images = read_annotations(path, format="coco", domains_csv=domains)
    assert images.loc[0, ["tumor", "scanner", "split"]].tolist() == [
        "canine lymphosarcoma",
        "Hamamatsu XR",
        "test",
    ]
    assert images.loc[1, ["tumor", "scanner"]].isna().all()
    assert "1 labelled images of" in caplog.text
    assert "1 rows of" in caplog.text
    assert annotations.loc[0, "lab"] == "X"


# ---------------------------------------------------------------------------
# Point CSV, QuPath GeoJSON and MIDOG ground truth
# ---------------------------------------------------------------------------


def test_points_csv(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "points.csv"
    path.write_text(
        "image,x,y,label,tumor\n001.tiff,10.5,20,Mitosis,human melanoma\n"
        "001.tiff,30,40,hard negative,human melanoma\nsub/002.tiff,5,6,lymphocyte,\n",
        encoding="utf-8",
    )
    with caplog.at_level(logging.WARNING, logger="midog.io.annotations"):
        annotations, images = read_annotations(path)
    assert annotations["label"].tolist() == [MITOTIC_FIGURE, IMPOSTER, "lymphocyte"]
    assert annotations["image"].tolist() == ["001.tiff", "001.tiff", "002.tiff"]
    assert annotations.loc[0, ["x", "y"]].tolist() == [10.5, 20.0]
    assert images["tumor"].tolist() == ["human melanoma", None]
    assert list(images.columns) == list(IMAGE_COLUMNS)
    assert "lymphocyte (1)" in caplog.text


def test_points_csv_without_label(tmp_path: Path) -> None:
    path = tmp_path / "points.csv"
    path.write_text("image,x,y\na.png,1,2\na.png,3,4\n", encoding="utf-8")
    annotations, images = read_annotations(path)
    assert set(annotations["label"]) == {MITOTIC_FIGURE}
    assert np.isnan(images.loc[0, "mpp"])


def test_points_csv_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "points.csv"
    path.write_text("image,x\na.png,1\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match="lacks column"):
        read_annotations(path)


def test_points_csv_bad_number(tmp_path: Path) -> None:
    path = tmp_path / "points.csv"
    path.write_text("image,x,y\na.png,1,two\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match="x and y must be numbers"):
        read_annotations(path)


def test_geojson_points(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [10, 20]},
            "properties": {
                "objectType": "annotation",
                "classification": {"name": "Mitotic figure", "color": [1, 2, 3]},
            },
        },
        {
            "type": "Feature",
            "geometry": {"type": "MultiPoint", "coordinates": [[30, 40], [50, 60]]},
            "properties": {"classification": {"name": "Imposter"}},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 2], [0, 2], [0, 0]]]},
            "properties": {"classification": {"name": "Mitosis"}},
        },
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [7, 8]}, "properties": {}},
    ]
    path = write_json(tmp_path / "001.tiff.geojson", {"type": "FeatureCollection", "features": features})
    with caplog.at_level(logging.WARNING, logger="midog.io.annotations"):
        annotations, images = read_annotations(path)
    assert annotations[["x", "y"]].to_numpy().tolist() == [[10, 20], [30, 40], [50, 60], [2, 1], [7, 8]]
    assert annotations["label"].tolist() == [
        MITOTIC_FIGURE,
        IMPOSTER,
        IMPOSTER,
        MITOTIC_FIGURE,
        "unclassified",
    ]
    assert images["image"].tolist() == ["001.tiff"]
    assert "1 features are not points (Polygon (1))" in caplog.text
    assert "unclassified (1)" in caplog.text


def test_geojson_feature_list(tmp_path: Path) -> None:
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [1, 2]},
            "properties": {"classification": {"name": "Mitotic figure"}},
        }
    ]
    annotations, _ = read_annotations(write_json(tmp_path / "x.json", features))
    assert annotations["image"].tolist() == ["x"]


def test_midog_gt_millimetres(tmp_path: Path) -> None:
    data = {"007.tiff": {"annotations": [[0.1, 0.25, 0]], "tumor domain": 0, "roi type": "hotspot"}}
    path = write_json(tmp_path / "ground_truth.json", data)
    annotations, images = read_annotations(path, mpp=0.25)
    assert annotations[["x", "y"]].to_numpy().tolist() == [[400.0, 1000.0]]
    assert images.loc[0, ["tumor", "roi_type", "mpp"]].tolist() == ["0", "hotspot", 0.25]


def test_midog_gt_needs_mpp(tmp_path: Path) -> None:
    data = {"007.tiff": {"annotations": [[0.1, 0.25, 0]]}}
    with pytest.raises(AnnotationError, match="pass mpp"):
        read_annotations(write_json(tmp_path / "gt.json", data))


# ---------------------------------------------------------------------------
# Errors and pure helpers
# ---------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="not found"):
        read_annotations(tmp_path / "nope.json")


def test_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"images": [', encoding="utf-8")
    with pytest.raises(AnnotationError, match="invalid JSON at line 1"):
        read_annotations(path)


def test_detection_file_as_ground_truth(tmp_path: Path) -> None:
    data = {"type": "Multiple points", "points": [{"point": [0.1, 0.1, 0], "probability": 0.9}]}
    with pytest.raises(AnnotationError, match="detection file"):
        read_annotations(write_json(tmp_path / "det.json", data))


def test_unknown_format_name(tmp_path: Path) -> None:
    path = write_json(tmp_path / "coco.json", coco_like(COCO_BOXES, MIDOG_CATEGORIES))
    with pytest.raises(AnnotationError, match="unknown annotation format 'yolo'"):
        read_annotations(path, format="yolo")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("boxes", "expected"),
    [
        ([[4336, 346, 4386, 396], [756, 872, 806, 922]], "xyxy"),  # MIDOG++, 50 px
        ([[-27, 2391, 23, 2441], [100, 100, 150, 150]], "xyxy"),  # MIDOG++, past the left edge
        ([[4336, 346, 50, 50], [756, 872, 50, 50]], "xywh"),  # COCO far from the origin
        ([[10, 10, 40, 40], [20, 25, 30, 30]], "xywh"),  # both valid, COCO sizes vary less
        ([[10, 10, 40, 40]], None),  # one box: both layouts plausible
        ([], None),
        ([[10, 10, -5, 40]], None),  # valid in neither layout
    ],
)
def test_infer_box_layout(boxes: list[list[float]], expected: str | None) -> None:
    assert infer_box_layout(np.array(boxes, dtype=float).reshape(-1, 4)) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mitotic figure", MITOTIC_FIGURE),
        ("Mitotic_Figure", MITOTIC_FIGURE),
        ("Mitose", MITOTIC_FIGURE),
        ("not mitotic figure", IMPOSTER),
        ("Hard negative", IMPOSTER),
        ("non-mitotic figure", IMPOSTER),
        (" lymphocyte ", "lymphocyte"),
    ],
)
def test_normalize_label(name: str, expected: str) -> None:
    assert normalize_label(name) == expected


def test_domains_csv_by_file_name(tmp_path: Path) -> None:
    # GeoJSON images have no id, so the key is the image name.
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [1, 2]},
            "properties": {"classification": {"name": "Mitotic figure"}},
        }
    ]
    path = write_json(tmp_path / "001.tiff.geojson", {"type": "FeatureCollection", "features": features})
    domains = tmp_path / "domains.csv"
    domains.write_text("image,scanner,roi_type\n001.tiff,Aperio CS2,hotspot\n", encoding="utf-8")
    annotations, images = read_annotations(path, domains_csv=domains)
    assert images.loc[0, ["scanner", "roi_type"]].tolist() == ["Aperio CS2", "hotspot"]
    assert annotations.loc[0, "scanner"] == "Aperio CS2"


def test_coco_without_annotations(tmp_path: Path) -> None:
    annotations, images = read_annotations(
        write_json(tmp_path / "empty.json", coco_like([], MIDOG_CATEGORIES))
    )
    assert len(annotations) == 0
    assert images["labelled"].tolist() == [True, True]
