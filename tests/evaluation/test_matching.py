"""Hand-computed cases of the MIDOG point matching."""

from __future__ import annotations

import numpy as np
import pytest

from midog.evaluation.matching import MIDOG_RADIUS_UM, match_counts_by_threshold, match_points, px_from_um

# 7.5 µm at 0.25 µm/px.
RADIUS_PX = 30.0


def counts(result: object) -> tuple[int, int, int]:
    return (result.tp, result.fp, result.fn)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("det_xy", "expected"),
    [
        ((30.0, 0.0), (1, 0, 0)),  # exactly 7.5 µm: a hit
        ((0.0, -30.0), (1, 0, 0)),
        ((18.0, 24.0), (1, 0, 0)),  # 3-4-5 triangle, distance exactly 30 px
        ((30.001, 0.0), (0, 1, 1)),  # just outside
        ((21.3, 21.3), (0, 1, 1)),  # 30.12 px
    ],
)
def test_match_boundary(det_xy: tuple[float, float], expected: tuple[int, int, int]) -> None:
    assert counts(match_points(np.array([[0.0, 0.0]]), np.array([det_xy]), RADIUS_PX)) == expected


def test_match_radius_from_um() -> None:
    assert px_from_um(MIDOG_RADIUS_UM, 0.25) == 30.0
    assert px_from_um(MIDOG_RADIUS_UM, 0.5) == 15.0


def test_match_radius_bad_mpp() -> None:
    with pytest.raises(ValueError, match="mpp"):
        px_from_um(7.5, 0.0)


def test_match_two_detections_one_figure() -> None:
    result = match_points(np.array([[100.0, 100.0]]), np.array([[110.0, 100.0], [105.0, 100.0]]), RADIUS_PX)
    assert counts(result) == (1, 1, 0)
    assert result.pairs.tolist() == [[0, 1]]  # the nearer detection
    assert result.distances_px.tolist() == [5.0]
    assert result.det_matched.tolist() == [False, True]


def test_match_one_detection_two_figures() -> None:
    result = match_points(np.array([[0.0, 0.0], [40.0, 0.0]]), np.array([[20.0, 0.0]]), RADIUS_PX)
    assert counts(result) == (1, 0, 1)
    assert result.gt_matched.tolist() == [True, False]  # the first figure in order takes it


def test_match_ground_truth_order() -> None:
    # The same points, the other order: the first figure visited still wins.
    result = match_points(np.array([[40.0, 0.0], [0.0, 0.0]]), np.array([[20.0, 0.0]]), RADIUS_PX)
    assert result.gt_matched.tolist() == [True, False]


def test_match_greedy_not_optimal() -> None:
    # A (0,0) takes its nearest detection (10,0) although (-25,0) is also within
    # its radius; B (38,0) then finds only the taken one. An optimal assignment
    # would match both.
    gt = np.array([[0.0, 0.0], [38.0, 0.0]])
    det = np.array([[10.0, 0.0], [-25.0, 0.0]])
    result = match_points(gt, det, RADIUS_PX)
    assert counts(result) == (1, 1, 1)
    assert result.pairs.tolist() == [[0, 0]]


def test_match_equal_distance_lower_index() -> None:
    # Both detections are 10 px away; x-sorting puts index 1 first, the lower index still wins.
    result = match_points(np.array([[0.0, 0.0]]), np.array([[10.0, 0.0], [-10.0, 0.0]]), RADIUS_PX)
    assert result.pairs.tolist() == [[0, 0]]


def test_match_nearest_unmatched() -> None:
    # Figure 0 takes detection 0 (distance 0); figure 1 then takes detection 1, its nearest free one.
    gt = np.array([[0.0, 0.0], [5.0, 0.0]])
    det = np.array([[0.0, 0.0], [25.0, 0.0]])
    result = match_points(gt, det, RADIUS_PX)
    assert result.pairs.tolist() == [[0, 0], [1, 1]]


@pytest.mark.parametrize(
    ("gt", "det", "expected"),
    [
        (np.zeros((0, 2)), np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), (0, 3, 0)),
        (np.array([[1.0, 2.0], [3.0, 4.0]]), np.zeros((0, 2)), (0, 0, 2)),
        (np.zeros((0, 2)), np.zeros((0, 2)), (0, 0, 0)),
        ([], [], (0, 0, 0)),
    ],
)
def test_match_empty(gt: np.ndarray, det: np.ndarray, expected: tuple[int, int, int]) -> None:
    result = match_points(gt, det, RADIUS_PX)
    assert counts(result) == expected
    assert result.pairs.shape == (0, 2)


def test_match_bad_shape() -> None:
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        match_points(np.array([1.0, 2.0, 3.0]), np.zeros((0, 2)), RADIUS_PX)


def test_match_negative_radius() -> None:
    with pytest.raises(ValueError, match="radius_px"):
        match_points(np.zeros((1, 2)), np.zeros((1, 2)), -1.0)


def test_match_nan_coordinates() -> None:
    with pytest.raises(ValueError, match="NaN"):
        match_points(np.array([[np.nan, 0.0]]), np.zeros((1, 2)), RADIUS_PX)


def test_counts_by_threshold_table() -> None:
    gt = np.array([[0.0, 0.0], [100.0, 0.0], [200.0, 0.0]])
    det = np.array([[0.0, 0.0], [100.0, 0.0], [500.0, 0.0], [200.0, 0.0]])
    scores = np.array([0.9, 0.6, 0.7, 0.3])
    table = match_counts_by_threshold(gt, det, scores, RADIUS_PX, np.array([0.3, 0.6, 0.65, 0.9, 0.95]))
    assert table.tolist() == [[3, 1, 0], [2, 1, 1], [1, 1, 2], [1, 0, 2], [0, 0, 3]]


def test_counts_by_threshold_agrees_with_match_points() -> None:
    rng = np.random.default_rng(7)
    thresholds = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    for _ in range(100):
        gt = rng.uniform(0, 200, (int(rng.integers(0, 15)), 2)).round()
        det = rng.uniform(0, 200, (int(rng.integers(0, 25)), 2)).round()
        scores = rng.uniform(0, 1, len(det)).round(1)
        table = match_counts_by_threshold(gt, det, scores, RADIUS_PX, thresholds)
        expected = [counts(match_points(gt, det[scores >= t], RADIUS_PX)) for t in thresholds]
        assert table.tolist() == [list(c) for c in expected]


def test_counts_by_threshold_score_length() -> None:
    with pytest.raises(ValueError, match="det_scores"):
        match_counts_by_threshold(np.zeros((1, 2)), np.zeros((2, 2)), np.zeros(3), RADIUS_PX, np.array([0.5]))
