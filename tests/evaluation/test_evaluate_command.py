"""Tests of ``midog evaluate`` on detection files written by midog's own writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from midog.cli import main
from midog.commands.evaluate import resolve_image_names
from midog.io.annotations import MITOTIC_FIGURE, read_annotations
from midog.io.writers import write_detections_csv, write_midog_json
from midog.structures import Detections


def write_ground_truth(path: Path) -> Path:
    """Three mitotic figures on a.tiff, one on b.tiff, none on c.tiff."""
    path.write_text(
        "image,x,y,label\na.tiff,100,100,mitotic figure\na.tiff,300,100,mitotic figure\n"
        "a.tiff,500,100,mitotic figure\nb.tiff,100,100,mitotic figure\nc.tiff,10,10,imposter\n",
        encoding="utf-8",
    )
    return path


def detections(xy: list[tuple[float, float]], scores: list[float]) -> Detections:
    return Detections(np.array(xy, dtype=float).reshape(-1, 2), np.array(scores), np.zeros(len(xy)))


def test_evaluate_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ground_truth = write_ground_truth(tmp_path / "gt.csv")
    # a.tiff: 2 hits (one 30 px away, at the 7.5 µm boundary), 1 low score; b.tiff: nothing.
    detection_csv = tmp_path / "a.csv"
    write_detections_csv(
        detection_csv,
        detections([(100, 100), (330, 100), (500, 100), (900, 900)], [0.9, 0.8, 0.3, 0.7]),
        "a.tiff",
    )
    out = tmp_path / "report"
    code = main(
        [
            "evaluate",
            "--ground-truth",
            str(ground_truth),
            "--detections",
            str(detection_csv),
            "--output",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    # TP 2, FP 1 (900, 900), FN 2 (a.tiff's low-score figure and b.tiff's): F1 = 4 / 7.
    assert printed.startswith("F1 0.5714 (precision 0.6667, recall 0.5000; TP 2, FP 1, FN 2)")
    assert sorted(p.name for p in out.iterdir()) == [
        "per_image.csv",
        "report.csv",
        "report.md",
        "threshold_sweep.csv",
    ]
    report = pd.read_csv(out / "report.csv")
    assert report.loc[0, ["group_by", "tp", "fp", "fn"]].tolist() == ["overall", 2, 1, 2]
    assert report.iloc[-1]["threshold"] == 0.3  # F1-optimal: all three figures of a.tiff
    per_image = pd.read_csv(out / "per_image.csv")
    assert per_image["image"].tolist() == ["a.tiff", "b.tiff", "c.tiff"]


def test_evaluate_json_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ground_truth = write_ground_truth(tmp_path / "gt.csv")
    folder = tmp_path / "detections"
    folder.mkdir()
    write_midog_json(folder / "a.tiff.json", detections([(100, 100), (300, 100)], [0.9, 0.4]), 0.25, 0.5)
    write_midog_json(folder / "c.json", detections([], []), 0.25, 0.5)
    code = main(["evaluate", "--ground-truth", str(ground_truth), "--detections", str(folder)])
    printed = capsys.readouterr().out
    assert code == 0
    # b.tiff has no file and is skipped; the 0.4 point is a "non-mitotic figure" and does not count.
    assert "TP 1, FP 0, FN 2) at threshold 0.5 on 2 images" in printed


def test_evaluate_midogpp_self(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt_path = shared_data / "midogpp" / "MIDOG++.json"
    domains = shared_data / "midogpp" / "datasets_xvalidation.csv"
    annotations, _ = read_annotations(gt_path)
    figures = annotations[annotations["label"] == MITOTIC_FIGURE]
    rows = figures.assign(label=MITOTIC_FIGURE, score=1.0)[["image", "x", "y", "label", "score"]]
    detection_csv = tmp_path / "detections.csv"
    rows.to_csv(detection_csv, index=False)
    code = main(
        [
            "evaluate",
            "--ground-truth",
            str(gt_path),
            "--domains",
            str(domains),
            "--detections",
            str(detection_csv),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.startswith(
        "F1 1.0000 (precision 1.0000, recall 1.0000; TP 11937, FP 0, FN 0)"
    )
    report = pd.read_csv(tmp_path / "out" / "report.csv")
    assert sorted(report.loc[report["group_by"] == "scanner", "group"]) == [
        "3D Histech",
        "Aperio CS2",
        "Hamamatsu S360",
        "Hamamatsu XR",
    ]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--threshold", "1.5", "--threshold must be between 0 and 1, got 1.5"),
        ("--radius-um", "0", "--radius-um must be a positive length"),
        ("--mpp", "-1", "--mpp must be a positive number"),
    ],
)
def test_evaluate_bad_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    ground_truth = write_ground_truth(tmp_path / "gt.csv")
    code = main(
        ["evaluate", "--ground-truth", str(ground_truth), "--detections", str(tmp_path), option, value]
    )
    assert code == 1
    assert message in capsys.readouterr().err


def test_evaluate_missing_detections(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ground_truth = write_ground_truth(tmp_path / "gt.csv")
    code = main(["evaluate", "--ground-truth", str(ground_truth), "--detections", str(tmp_path / "none.csv")])
    assert code == 1
    assert "none.csv not found" in capsys.readouterr().err


def test_evaluate_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ground_truth = write_ground_truth(tmp_path / "gt.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["evaluate", "--ground-truth", str(ground_truth), "--detections", str(empty)])
    assert code == 1
    assert "contains no .csv or .json detection files" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("001.tiff", "001.tiff"),
        ("/slides/001.tiff", "001.tiff"),
        ("001", "001.tiff"),
        ("001.tiff.json", "001.tiff"),
        ("001_detections", "001.tiff"),
        ("0011", "0011"),  # no match: kept
    ],
)
def test_resolve_image_names(name: str, expected: str) -> None:
    resolved = resolve_image_names(pd.Series([name]), pd.Series(["001.tiff", "002.tiff"]))
    assert resolved.tolist() == [expected]


def test_evaluate_unmatched_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ground_truth = write_ground_truth(tmp_path / "gt.csv")
    detection_csv = tmp_path / "slide.csv"
    write_detections_csv(detection_csv, detections([(100, 100)], [0.9]), "slide.svs")
    code = main(["evaluate", "--ground-truth", str(ground_truth), "--detections", str(detection_csv)])
    assert code == 1
    assert "no image of" in capsys.readouterr().err
