"""Decoding and non-maximum suppression of RTMDet head outputs, in numpy.

The exported ONNX graph stops at the raw head outputs so that post-processing
is the same code on every runtime and can be tested without a model. The
steps follow mmdet 3.3 ``RTMDetHead.predict_by_feat``: per-level top-k of
(point, class) pairs above a score, distance decoding with clamping to the
image, class-aware NMS, and a cap on detections per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PostprocessConfig", "decode_points", "nms", "postprocess"]


@dataclass(frozen=True)
class PostprocessConfig:
    """Settings of the post-processing, with mmdet's names.

    Attributes:
        strides: feature strides in input px, finest first.
        score_thresh: lowest sigmoid score a candidate may have.
        topk_candidates: candidates kept per level before NMS (mmdet ``nms_pre``).
        nms_iou_thresh: IoU above which the lower-scored box of a class is dropped.
        detections_per_img: cap after NMS (mmdet ``max_per_img``).
        min_bbox_size: boxes whose width or height is not above this (px) are
            dropped before NMS, as mmdet does when ``min_bbox_size >= 0``.
    """

    strides: tuple[int, ...] = (8, 16, 32)
    score_thresh: float = 0.05
    topk_candidates: int = 1000
    nms_iou_thresh: float = 0.65
    detections_per_img: int = 300
    min_bbox_size: float = 0.0


def level_shapes(height: int, width: int, strides: tuple[int, ...]) -> list[tuple[int, int]]:
    """Return the ``(rows, cols)`` of each feature level for an input size (ceil, as strided convs give)."""
    return [(-(-height // s), -(-width // s)) for s in strides]


def decode_points(height: int, width: int, strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Build the prior points of all levels in the order of the flattened head outputs.

    Returns:
        ``(points, stride_per_point)``: ``(N, 2)`` float32 ``x, y`` in input px
        (offset 0, as mmdet's ``MlvlPointGenerator(offset=0)``) and ``(N,)``
        int32.
    """
    points, point_strides = [], []
    for (rows, cols), stride in zip(level_shapes(height, width, strides), strides):
        ys, xs = np.meshgrid(np.arange(rows, dtype=np.float32), np.arange(cols, dtype=np.float32), indexing="ij")
        points.append(np.stack([xs.ravel() * stride, ys.ravel() * stride], axis=1))
        point_strides.append(np.full(rows * cols, stride, dtype=np.int32))
    return np.concatenate(points), np.concatenate(point_strides)


# Up to this many boxes, NMS computes all pairwise IoUs at once, which takes
# about 30 MiB of temporary float32 arrays at 1024 boxes. More boxes are
# compared with the kept box one row at a time.
_PAIRWISE_NMS_MAX_BOXES = 1024


def _pairwise_iou(boxes: np.ndarray, areas: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Return the IoU of ``boxes[rows]`` with every box, ``(len(rows), N)``; 0 where the union is empty."""
    x1 = np.maximum(boxes[rows, None, 0], boxes[None, :, 0])
    y1 = np.maximum(boxes[rows, None, 1], boxes[None, :, 1])
    x2 = np.minimum(boxes[rows, None, 2], boxes[None, :, 2])
    y2 = np.minimum(boxes[rows, None, 3], boxes[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = areas[rows, None] + areas[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy NMS; return the kept indices, highest score first.

    Args:
        boxes: ``(N, 4)`` float, ``x1, y1, x2, y2``.
        scores: ``(N,)`` float.
        iou_thresh: a box whose IoU with a kept box exceeds this is dropped.
    """
    order = np.argsort(-scores, kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep = []
    if len(order) <= _PAIRWISE_NMS_MAX_BOXES:
        overlapping = _pairwise_iou(boxes, areas, np.arange(len(order))) > iou_thresh
        suppressed = np.zeros(len(order), dtype=bool)
        for i in order.tolist():
            if suppressed[i]:
                continue
            keep.append(i)
            suppressed |= overlapping[i]
        return np.asarray(keep, dtype=np.int64)

    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iou = _pairwise_iou(boxes, areas, np.asarray([i]))[0, rest]
        order = rest[iou <= iou_thresh]
    return np.asarray(keep, dtype=np.int64)


def postprocess(
    cls_logits: np.ndarray,
    bbox_distances: np.ndarray,
    image_height: int,
    image_width: int,
    config: PostprocessConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn one image's raw head outputs into boxes, scores and labels.

    Args:
        cls_logits: ``(N, C)`` float32 class logits of all levels, finest level
            first, row-major within a level.
        bbox_distances: ``(N, 4)`` float32 distances ``left, top, right, bottom``
            from each prior point, in input px.
        image_height: input height in px; boxes are clamped to it.
        image_width: input width in px.
        config: post-processing settings.

    Returns:
        ``(boxes (K, 4) float32 x1 y1 x2 y2 input px, scores (K,) float32,
        labels (K,) int64)``, sorted by descending score.
    """
    points, _ = decode_points(image_height, image_width, config.strides)
    if len(points) != len(cls_logits):
        raise ValueError(
            f"head outputs have {len(cls_logits)} points but an input of {image_width}x{image_height} px "
            f"with strides {config.strides} has {len(points)}"
        )
    scores_all = 1.0 / (1.0 + np.exp(-cls_logits.astype(np.float32)))
    num_classes = scores_all.shape[1]

    # Per level: (point, class) pairs above the score, then the top-k of them.
    picked_points, picked_scores, picked_labels = [], [], []
    start = 0
    for rows, cols in level_shapes(image_height, image_width, config.strides):
        stop = start + rows * cols
        level_scores = scores_all[start:stop].ravel()
        candidates = np.flatnonzero(level_scores > config.score_thresh)
        if candidates.size > config.topk_candidates:
            top = np.argsort(-level_scores[candidates], kind="stable")[: config.topk_candidates]
            candidates = candidates[top]
        picked_points.append(start + candidates // num_classes)
        picked_labels.append(candidates % num_classes)
        picked_scores.append(level_scores[candidates])
        start = stop
    point_index = np.concatenate(picked_points)
    labels = np.concatenate(picked_labels).astype(np.int64)
    scores = np.concatenate(picked_scores).astype(np.float32)
    if point_index.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)

    # Distance decoding, clamped to the image as mmdet's distance2bbox does.
    px, py = points[point_index, 0], points[point_index, 1]
    dist = bbox_distances[point_index].astype(np.float32)
    boxes = np.stack([px - dist[:, 0], py - dist[:, 1], px + dist[:, 2], py + dist[:, 3]], axis=1)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, image_width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, image_height)

    valid = (boxes[:, 2] - boxes[:, 0] > config.min_bbox_size) & (boxes[:, 3] - boxes[:, 1] > config.min_bbox_size)
    boxes, scores, labels = boxes[valid], scores[valid], labels[valid]

    # Class-aware NMS: offset each class's boxes so that classes never overlap.
    offsets = labels.astype(np.float32)[:, None] * (max(image_height, image_width) + 1.0)
    keep = nms(boxes + offsets, scores, config.nms_iou_thresh)[: config.detections_per_img]
    return boxes[keep], scores[keep], labels[keep]
