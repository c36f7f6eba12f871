"""Hand-computed cases of F1, AP and the threshold sweep, and a run on the real MIDOG++ ground truth."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from midog.evaluation.metrics import (
    REPORT_COLUMNS,
    average_precision,
    box_iou,
    evaluate_detections,
    match_boxes_by_score,
    prf1,
)
from midog.io.annotations import IMPOSTER, MITOTIC_FIGURE, read_annotations


def make_tables(
    gt: dict[str, list[tuple[float, float]]],
    mpp: dict[str, float] | None = None,
    tumor: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Annotation and image tables with mitotic figures at the given points."""
    rows = [
        {"image": name, "x": x, "y": y, "label": MITOTIC_FIGURE}
        for name, points in gt.items()
        for x, y in points
    ]
    annotations = pd.DataFrame(rows, columns=["image", "x", "y", "label"])
    images = pd.DataFrame(
        {
            "image": list(gt),
            "mpp": [(mpp or {}).get(name, np.nan) for name in gt],
            "tumor": [(tumor or {}).get(name) for name in gt],
            "labelled": True,
        }
    )
    return annotations, images


def make_detections(rows: list[tuple[str, float, float, float]], label: str = MITOTIC_FIGURE) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["image", "x", "y", "score"])
    frame["label"] = label
    return frame


# ---------------------------------------------------------------------------
# prf1, IoU and AP
# ---------------------------------------------------------------------------


def test_prf1_hand_values() -> None:
    precision, recall, f1 = prf1(8, 2, 4)
    assert precision == pytest.approx(0.8)
    assert recall == pytest.approx(8 / 12)
    assert f1 == pytest.approx(16 / 22)


def test_prf1_undefined() -> None:
    precision, recall, f1 = prf1(0, 0, 3)
    assert math.isnan(precision)
    assert recall == 0.0
    assert f1 == 0.0
    assert all(math.isnan(v) for v in prf1(0, 0, 0))


def test_box_iou_half_at_radius() -> None:
    # Squares of ±45 px (11.25 µm at 0.25 µm/px) 30 px (7.5 µm) apart horizontally: IoU 0.5.
    iou = box_iou(np.array([[-45, -45, 45, 45]]), np.array([[-15, -45, 75, 45]]))
    assert iou[0, 0] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("det_xy", "expected"),
    [
        ((30.0, 0.0), True),  # IoU exactly 0.5
        ((31.0, 0.0), False),
        ((18.0, 24.0), False),  # 30 px away diagonally: IoU 0.415, a hit for F1 but not for AP
    ],
)
def test_box_match_threshold(det_xy: tuple[float, float], expected: bool) -> None:
    is_tp = match_boxes_by_score(np.array([[0.0, 0.0]]), np.array([det_xy]), np.array([0.9]), 45.0)
    assert is_tp.tolist() == [expected]


def test_box_match_score_order() -> None:
    # The higher-scoring detection takes the figure even though the other one is closer.
    is_tp = match_boxes_by_score(
        np.array([[0.0, 0.0]]), np.array([[0.0, 0.0], [20.0, 0.0]]), np.array([0.8, 0.9]), 45.0
    )
    assert is_tp.tolist() == [False, True]


def test_box_match_equal_iou_later_figure() -> None:
    # The first detection has equal IoU with both figures and takes the later one (pycocotools rule),
    # which leaves figure 0 for the second detection, 30 px to its left (IoU 0.5).
    gt = np.array([[-10.0, 0.0], [10.0, 0.0]])
    det = np.array([[0.0, 0.0], [-40.0, 0.0]])
    is_tp = match_boxes_by_score(gt, det, np.array([0.9, 0.8]), 45.0)
    assert is_tp.tolist() == [True, True]


def test_ap_hand_ranking() -> None:
    # Ranked: TP, FP, TP, FP with 3 figures. Precision 1, 1/2, 2/3, 1/2; recall 1/3, 1/3, 2/3, 2/3.
    scores = np.array([0.6, 0.9, 0.7, 0.8])
    is_tp = np.array([False, True, True, False])
    # All points: 1/3 * 1 + 1/3 * 2/3 = 5/9.
    assert average_precision(scores, is_tp, 3, "all_points") == pytest.approx(5 / 9)
    # 101 recall thresholds: 0.00-0.33 -> 1 (34), 0.34-0.66 -> 2/3 (33), 0.67-1.00 -> 0 (34).
    assert average_precision(scores, is_tp, 3, "coco101") == pytest.approx((34 + 33 * 2 / 3) / 101)


def test_ap_perfect() -> None:
    assert average_precision(np.array([0.9, 0.1]), np.array([True, True]), 2) == pytest.approx(1.0)


def test_ap_tied_scores_keep_order() -> None:
    # Equal scores are ranked in input order, as pycocotools' stable sort does.
    assert average_precision(np.array([0.5, 0.5]), np.array([True, False]), 1, "all_points") == 1.0
    assert average_precision(np.array([0.5, 0.5]), np.array([False, True]), 1, "all_points") == 0.5


def test_ap_no_ground_truth() -> None:
    assert math.isnan(average_precision(np.array([0.5]), np.array([False]), 0))


def test_ap_no_detections() -> None:
    assert average_precision(np.zeros(0), np.zeros(0, dtype=bool), 4) == 0.0


def test_ap_bad_interpolation() -> None:
    with pytest.raises(ValueError, match="interpolation"):
        average_precision(np.zeros(1), np.zeros(1, dtype=bool), 1, "eleven")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# evaluate_detections on small tables
# ---------------------------------------------------------------------------


def test_evaluate_micro_vs_macro() -> None:
    # Image a: 1 TP (F1 1). Image b: 0 TP, 1 FP, 3 FN (F1 0).
    annotations, images = make_tables({"a": [(0, 0)], "b": [(0, 0), (100, 0), (200, 0)]})
    detections = make_detections([("a", 5, 0, 0.9), ("b", 500, 500, 0.9)])
    overall = evaluate_detections(annotations, images, detections).overall()
    assert (overall["tp"], overall["fp"], overall["fn"]) == (1, 1, 3)
    assert overall["f1"] == pytest.approx(2 / 6)  # micro: 2 TP / (2 TP + FP + FN)
    assert overall["f1_image_mean"] == pytest.approx(0.5)  # macro over images


def test_evaluate_mpp_per_image() -> None:
    # A detection 20 px from its figure: a hit at 0.25 µm/px (radius 30 px), a miss at 0.5 (15 px).
    annotations, images = make_tables(
        {"fine": [(0, 0)], "coarse": [(0, 0)]}, mpp={"fine": 0.25, "coarse": 0.5}
    )
    detections = make_detections([("fine", 20, 0, 0.9), ("coarse", 20, 0, 0.9)])
    report = evaluate_detections(annotations, images, detections)
    per_image = report.per_image.set_index("image")
    assert per_image.loc["fine", "tp"] == 1
    assert per_image.loc["coarse", "tp"] == 0
    assert per_image["radius_px"].to_dict() == {"fine": 30.0, "coarse": 15.0}


def test_evaluate_default_mpp() -> None:
    annotations, images = make_tables({"a": [(0, 0)]})
    detections = make_detections([("a", 20, 0, 0.9)])
    assert evaluate_detections(annotations, images, detections, default_mpp=0.5).overall()["tp"] == 0
    assert evaluate_detections(annotations, images, detections, default_mpp=0.25).overall()["tp"] == 1


def test_evaluate_empty_images() -> None:
    # a: figures, no detections. b: detections, no figures. c: neither.
    annotations, images = make_tables({"a": [(0, 0), (50, 50)], "b": [], "c": []})
    detections = make_detections([("b", 10, 10, 0.9)])
    report = evaluate_detections(annotations, images, detections)
    per_image = report.per_image.set_index("image")
    assert per_image.loc["a", ["tp", "fp", "fn"]].tolist() == [0, 0, 2]
    assert per_image.loc["b", ["tp", "fp", "fn"]].tolist() == [0, 1, 0]
    assert per_image.loc["c", ["tp", "fp", "fn"]].tolist() == [0, 0, 0]
    assert math.isnan(per_image.loc["c", "f1"])
    assert report.overall()["images"] == 3
    assert report.overall()["f1_image_mean"] == 0.0  # c has no F1 and is left out


def test_evaluate_no_detections() -> None:
    annotations, images = make_tables({"a": [(0, 0)]})
    report = evaluate_detections(annotations, images, make_detections([]))
    assert report.overall()["f1"] == 0.0
    assert report.best_threshold == 0.5  # the fixed threshold is always swept
    assert report.overall()["ap"] == 0.0


def test_evaluate_threshold_and_label() -> None:
    annotations, images = make_tables({"a": [(0, 0), (100, 0), (200, 0)]})
    detections = pd.concat(
        [
            make_detections([("a", 0, 0, 0.5), ("a", 100, 0, 0.49)]),  # score == threshold counts
            make_detections([("a", 200, 0, 0.9)], label="non-mitotic figure"),
        ]
    )
    report = evaluate_detections(annotations, images, detections, threshold=0.5)
    overall = report.overall()
    assert (overall["tp"], overall["fp"], overall["fn"], overall["detections"]) == (1, 0, 2, 1)
    # AP ranks all three detections, whatever their label: all are true positives.
    assert overall["ap"] == pytest.approx(1.0)


def test_evaluate_label_spellings() -> None:
    annotations, images = make_tables({"a": [(0, 0), (100, 0)]})
    detections = pd.concat(
        [
            make_detections([("a", 0, 0, 0.9)], label="Mitosis"),
            make_detections([("a", 100, 0, 0.9)], label="Non-mitotic figure"),
        ]
    )
    overall = evaluate_detections(annotations, images, detections).overall()
    assert (overall["tp"], overall["fn"]) == (1, 1)


def test_evaluate_threshold_sweep() -> None:
    annotations, images = make_tables({"a": [(0, 0), (100, 0), (200, 0)]})
    detections = make_detections(
        [("a", 0, 0, 0.9), ("a", 100, 0, 0.6), ("a", 500, 0, 0.7), ("a", 200, 0, 0.3)]
    )
    report = evaluate_detections(annotations, images, detections, threshold=0.5)
    sweep = report.sweep.set_index("threshold")
    assert sweep.index.tolist() == [0.3, 0.5, 0.6, 0.7, 0.9]
    assert sweep["f1"].tolist() == pytest.approx([6 / 7, 4 / 6, 4 / 6, 2 / 5, 2 / 4])
    assert report.best_threshold == 0.3
    best = report.overall(at_best_threshold=True)
    assert (best["threshold"], best["tp"], best["fp"], best["fn"]) == (0.3, 3, 1, 0)
    assert report.overall()["f1"] == pytest.approx(sweep.loc[0.5, "f1"])


def test_evaluate_sweep_quantiles() -> None:
    annotations, images = make_tables({"a": [(0, 0)]})
    detections = make_detections([("a", 1000 + i, 0, s) for i, s in enumerate(np.linspace(0, 1, 50))])
    report = evaluate_detections(annotations, images, detections, max_thresholds=10)
    assert len(report.sweep) <= 11  # 10 quantiles plus the fixed threshold
    assert set(report.sweep["threshold"]) <= set(np.linspace(0, 1, 50)) | {0.5}


def test_evaluate_groups() -> None:
    annotations, images = make_tables(
        {"a": [(0, 0)], "b": [(0, 0)], "c": [(0, 0)]}, tumor={"a": "melanoma", "b": "melanoma"}
    )
    detections = make_detections([("a", 0, 0, 0.9), ("c", 0, 0, 0.9)])
    rows = evaluate_detections(annotations, images, detections).rows
    tumor = rows[rows["group_by"] == "tumor"].set_index("group")
    assert tumor.index.tolist() == ["(unknown)", "melanoma"]
    assert tumor.loc["melanoma", ["images", "tp", "fn"]].tolist() == [2, 1, 1]
    assert tumor.loc["(unknown)", "f1"] == 1.0
    assert list(rows.columns) == list(REPORT_COLUMNS)


def test_evaluate_unlabelled_skipped() -> None:
    annotations, images = make_tables({"a": [(0, 0)], "u": []})
    images.loc[images["image"] == "u", "labelled"] = False
    detections = make_detections([("a", 0, 0, 0.9), ("u", 0, 0, 0.9)])
    overall = evaluate_detections(annotations, images, detections).overall()
    assert (overall["images"], overall["fp"]) == (1, 0)


def test_evaluate_imposters_not_ground_truth() -> None:
    annotations, images = make_tables({"a": [(0, 0)]})
    annotations.loc[len(annotations)] = ["a", 100.0, 0.0, IMPOSTER]
    detections = make_detections([("a", 100, 0, 0.9)])
    overall = evaluate_detections(annotations, images, detections).overall()
    assert (overall["tp"], overall["fp"], overall["fn"]) == (0, 1, 1)


def test_evaluate_missing_column() -> None:
    annotations, images = make_tables({"a": [(0, 0)]})
    with pytest.raises(ValueError, match="score"):
        evaluate_detections(annotations, images, pd.DataFrame({"image": [], "x": [], "y": []}))


def test_report_markdown() -> None:
    annotations, images = make_tables({"a": [(0, 0)]})
    report = evaluate_detections(annotations, images, make_detections([("a", 0, 0, 0.9)]))
    lines = report.to_markdown().strip().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| " + " | ".join(REPORT_COLUMNS) + " |"
    assert len(table) == 2 + len(report.rows)
    assert "| overall | all | 0.5000 | 1 | 1 | 1 | 1 | 0 | 0 | 1.0000 |" in table[2]


def test_report_summary_line() -> None:
    annotations, images = make_tables({"a": [(0, 0)]})
    report = evaluate_detections(annotations, images, make_detections([("a", 0, 0, 0.9)]))
    assert report.summary_line().startswith("F1 1.0000 (precision 1.0000, recall 1.0000; TP 1, FP 0, FN 0)")


# ---------------------------------------------------------------------------
# Real MIDOG++ ground truth
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def midogpp(request: pytest.FixtureRequest) -> tuple[pd.DataFrame, pd.DataFrame]:
    shared: Path = request.getfixturevalue("shared_data")
    return read_annotations(
        shared / "midogpp" / "MIDOG++.json", domains_csv=shared / "midogpp" / "datasets_xvalidation.csv"
    )


def test_midogpp_ground_truth_as_detections(midogpp: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    annotations, images = midogpp
    detections = annotations.loc[annotations["label"] == MITOTIC_FIGURE, ["image", "x", "y"]].assign(
        label=MITOTIC_FIGURE, score=1.0
    )
    report = evaluate_detections(annotations, images, detections)
    overall = report.overall()
    assert (overall["images"], overall["tp"], overall["fp"], overall["fn"]) == (503, 11937, 0, 0)
    assert overall["ap"] == pytest.approx(1.0)
    tumor_rows = report.rows[report.rows["group_by"] == "tumor"]
    assert len(tumor_rows) == 7
    assert (tumor_rows["f1"] == 1.0).all()


def test_midogpp_imposters_as_detections(midogpp: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    # No imposter of MIDOG++ lies within 7.5 µm of a mitotic figure.
    annotations, images = midogpp
    detections = annotations.loc[annotations["label"] == IMPOSTER, ["image", "x", "y"]].assign(
        label=MITOTIC_FIGURE, score=0.9
    )
    overall = evaluate_detections(annotations, images, detections).overall()
    assert overall["tp"] + overall["fp"] == 14349
    assert overall["tp"] + overall["fn"] == 11937
    assert overall["tp"] == 0
