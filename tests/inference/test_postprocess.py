"""Decoding and NMS of raw RTMDet head outputs, against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from midog.inference.postprocess import PostprocessConfig, decode_points, level_shapes, nms, postprocess


def test_level_shapes_ceil():
    assert level_shapes(64, 96, (8, 16, 32)) == [(8, 12), (4, 6), (2, 3)]
    assert level_shapes(100, 100, (8, 16, 32)) == [(13, 13), (7, 7), (4, 4)]


def test_decode_points_order():
    points, strides = decode_points(32, 64, (16, 32))
    # Level stride 16: 2 rows x 4 cols, row-major; then stride 32: 1 row x 2 cols.
    expected = [(0, 0), (16, 0), (32, 0), (48, 0), (0, 16), (16, 16), (32, 16), (48, 16), (0, 0), (32, 0)]
    assert points.tolist() == [list(map(float, p)) for p in expected]
    assert strides.tolist() == [16] * 8 + [32] * 2


def test_nms_drops_overlap_above_thresh():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    # IoU of the first two: 90 / 110 = 0.818.
    assert nms(boxes, scores, 0.8).tolist() == [0, 2]
    assert nms(boxes, scores, 0.82).tolist() == [0, 1, 2]


def test_nms_empty():
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).tolist() == []


def _head_outputs(height: int, width: int, num_classes: int = 1):
    count = sum(r * c for r, c in level_shapes(height, width, (8, 16, 32)))
    logits = np.full((count, num_classes), -10.0, dtype=np.float32)
    distances = np.full((count, 4), 25.0, dtype=np.float32)
    return logits, distances


def test_postprocess_decodes_one_box():
    logits, distances = _head_outputs(64, 64)
    # Point 9 of stride 8 (row 1, col 1) is at (8, 8).
    logits[9, 0] = 2.0
    boxes, scores, labels = postprocess(logits, distances, 64, 64, PostprocessConfig())
    assert boxes.tolist() == [[0.0, 0.0, 33.0, 33.0]]  # clamped at the image's top-left
    assert scores[0] == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert labels.tolist() == [0]


def test_postprocess_clamps_to_image():
    logits, distances = _head_outputs(64, 64)
    logits[63, 0] = 3.0  # stride 8, row 7, col 7: point (56, 56)
    boxes, _, _ = postprocess(logits, distances, 64, 64, PostprocessConfig())
    assert boxes.tolist() == [[31.0, 31.0, 64.0, 64.0]]


def test_postprocess_score_thresh_and_empty():
    logits, distances = _head_outputs(64, 64)
    boxes, scores, labels = postprocess(logits, distances, 64, 64, PostprocessConfig(score_thresh=0.05))
    assert boxes.shape == (0, 4)
    assert scores.shape == (0,)
    assert labels.shape == (0,)


def test_postprocess_class_aware_nms():
    logits, distances = _head_outputs(64, 64, num_classes=2)
    logits[9, 0] = 2.0
    logits[9, 1] = 1.0  # the same box in the other class survives NMS
    logits[10, 0] = 1.5  # point (16, 8), IoU with the first box above 0.65: suppressed
    boxes, scores, labels = postprocess(logits, distances, 64, 64, PostprocessConfig())
    assert sorted(labels.tolist()) == [0, 1]
    assert len(boxes) == 2


def test_postprocess_drops_degenerate_boxes():
    logits, distances = _head_outputs(64, 64)
    logits[9, 0] = 2.0
    distances[9] = [-5.0, 1.0, 2.0, 1.0]  # width -3 px after decoding
    boxes, _, _ = postprocess(logits, distances, 64, 64, PostprocessConfig())
    assert len(boxes) == 0


def test_postprocess_topk_per_level():
    logits, distances = _head_outputs(64, 64)
    logits[:64, 0] = np.linspace(0.0, 1.0, 64)  # all stride-8 points above the score
    distances[:] = 2.0  # small boxes that never overlap
    boxes, scores, _ = postprocess(logits, distances, 64, 64, PostprocessConfig(topk_candidates=5))
    assert len(boxes) == 5
    assert scores[0] == pytest.approx(1 / (1 + np.exp(-1.0)))


def test_postprocess_rejects_wrong_point_count():
    logits, distances = _head_outputs(64, 64)
    with pytest.raises(ValueError, match="head outputs have"):
        postprocess(logits, distances, 96, 64, PostprocessConfig())


def _reference_nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> list[int]:
    """Greedy NMS written out box by box in plain Python."""

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = width * height
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    keep: list[int] = []
    for index in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        if all(iou(boxes[index], boxes[kept]) <= iou_thresh for kept in keep):
            keep.append(index)
    return keep


@pytest.mark.parametrize("count", [2, 40, 400, 1100])
def test_nms_matches_reference(count, monkeypatch):
    # NMS compares all pairs at once up to 1024 boxes and row by row above.
    # Both ways must keep what plain greedy NMS keeps, ties included.
    rng = np.random.default_rng(count)
    corners = rng.uniform(0, 200, (count, 2))
    sizes = rng.uniform(0, 30, (count, 2))
    boxes = np.concatenate([corners, corners + sizes], axis=1).astype(np.float64)
    scores = rng.choice(np.linspace(0.1, 0.9, 9), count)
    expected = _reference_nms(boxes, scores, 0.3)

    assert nms(boxes, scores, 0.3).tolist() == expected
    monkeypatch.setattr("midog.inference.postprocess._PAIRWISE_NMS_MAX_BOXES", 0)
    assert nms(boxes, scores, 0.3).tolist() == expected
