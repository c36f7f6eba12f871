"""Seam merging: ownership, duplicate suppression and the bounds check."""

from __future__ import annotations

import math

import numpy as np
import pytest

from midog.inference.merge import drop_outside_bounds, keep_owned, neighbour_pairs, suppress_duplicates
from midog.structures import Detections

CLASS_NAMES = ("mitotic figure", "non-mitotic figure")


def detections(xy, scores, labels=None) -> Detections:
    labels = np.zeros(len(scores)) if labels is None else labels
    return Detections(np.array(xy, dtype=np.float64).reshape(-1, 2), scores, labels, CLASS_NAMES)


def test_neighbour_pairs_table():
    xy = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0], [10.0, 5.0], [100.0, 100.0]])
    first, second = neighbour_pairs(xy, radius=5.0)
    assert sorted(zip(first.tolist(), second.tolist(), strict=True)) == [(0, 1), (2, 3)]


def test_neighbour_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, size=(400, 2))
    first, second = neighbour_pairs(xy, radius=7.0)
    distances = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    expected = {(i, j) for i, j in zip(*np.nonzero(distances <= 7.0), strict=True) if i < j}
    assert set(zip(first.tolist(), second.tolist(), strict=True)) == expected


def test_neighbour_pairs_negative_coordinates():
    first, second = neighbour_pairs(np.array([[-3.0, -3.0], [-1.0, -3.0]]), radius=4.0)
    assert list(zip(first.tolist(), second.tolist(), strict=True)) == [(0, 1)]


def test_neighbour_pairs_reject_zero_radius():
    with pytest.raises(ValueError, match="radius must be positive"):
        neighbour_pairs(np.zeros((2, 2)), radius=0.0)


def test_suppress_keeps_highest_score():
    merged = suppress_duplicates(detections([[100, 100], [104, 100]], [0.6, 0.9]), l0_radius=16.0)
    assert merged.xy.tolist() == [[104.0, 100.0]]


def test_suppress_keeps_distant_pair():
    merged = suppress_duplicates(detections([[100, 100], [117, 100]], [0.6, 0.9]), l0_radius=16.0)
    assert len(merged) == 2


def test_suppress_keeps_other_class():
    merged = suppress_duplicates(detections([[100, 100], [101, 100]], [0.6, 0.9], [0, 1]), l0_radius=16.0)
    assert len(merged) == 2


def test_suppress_chain_is_greedy():
    # A (0.9) suppresses B (0.8); C (0.7) is 12 px from B but 24 px from A, so it stays.
    merged = suppress_duplicates(detections([[0, 0], [12, 0], [24, 0]], [0.9, 0.8, 0.7]), l0_radius=16.0)
    assert merged.xy[:, 0].tolist() == [0.0, 24.0]


def test_suppress_empty():
    merged = suppress_duplicates(Detections.empty(CLASS_NAMES), l0_radius=16.0)
    assert len(merged) == 0


def test_keep_owned_half_open_rect():
    owned = keep_owned(
        detections([[479.9, 10], [480, 10], [10, 10]], [0.9, 0.9, 0.9]),
        np.array([-math.inf, -math.inf, 480.0, math.inf]),
    )
    assert owned.xy[:, 0].tolist() == [479.9, 10.0]


def test_drop_outside_bounds_table():
    # Bounds x in [3000, 5000), y in [2000, 3500).
    xy = [[3000, 2000], [4999.9, 3499.9], [2999.9, 2500], [5000, 2500], [4000, 1999.9], [4000, 3500]]
    inside = drop_outside_bounds(detections(xy, [0.9] * 6), (3000, 2000, 2000, 1500))
    assert inside.xy.tolist() == [[3000.0, 2000.0], [4999.9, 3499.9]]
