"""Point matching between ground-truth mitotic figures and detections, as MIDOG scores it.

The rule follows ``score_detection`` of grand-challenge's ``evalutils``
(``evalutils/scorers.py``), which the MIDOG 2021, 2022 and 2025 evaluation
containers (DeepMicroscopy ``MIDOG_evaluation_docker``,
``MIDOG25_T1_evaluation_docker``) call with a radius of 7.5 µm:

1. A detection is a candidate for a ground-truth point when their distance
   is at most the radius. The boundary counts as a hit, because
   scikit-learn's ``BallTree.query_radius`` includes points on the sphere.
2. Ground-truth points are visited once, in their given order. Each takes
   the nearest candidate detection that no earlier point took. This is
   greedy, not an optimal (Hungarian) assignment.
3. Matched pairs are true positives, unmatched detections false positives,
   unmatched ground-truth points false negatives.

This module compares squared distances in pixels, ``d² <= r²``, where the
containers compare distances in millimetres, so results can differ only for
a distance within floating-point rounding of the radius. Among equally near
candidates the lower detection index wins. The containers leave that order
to the tree's sort.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

__all__ = ["MIDOG_RADIUS_UM", "MatchResult", "match_counts_by_threshold", "match_points", "px_from_um"]

logger = logging.getLogger(__name__)

# Hit radius of the MIDOG challenges: 7.5 µm, 30 px at 0.25 µm/px.
MIDOG_RADIUS_UM = 7.5


def px_from_um(length_um: float, mpp: float) -> float:
    """Convert a length from µm to level-0 pixels.

    Args:
        length_um: length in µm.
        mpp: the image's resolution in µm/px, > 0.

    Returns:
        The length in pixels.

    Raises:
        ValueError: ``mpp`` is not a positive finite number.
    """
    if not np.isfinite(mpp) or mpp <= 0:
        raise ValueError(f"mpp must be a positive number of µm/px, got {mpp}")
    return float(length_um) / float(mpp)


@dataclass(frozen=True)
class MatchResult:
    """Outcome of matching one image's ground truth to its detections.

    Attributes:
        tp: true positives, the number of matched pairs.
        fp: detections left unmatched.
        fn: ground-truth points left unmatched.
        pairs: ``(tp, 2)`` int64, rows ``(gt_index, det_index)`` in the order
            the ground-truth points were visited.
        distances_px: ``(tp,)`` float64, the distance of each pair in px.
        gt_matched: ``(G,)`` bool, whether each ground-truth point was matched.
        det_matched: ``(D,)`` bool, whether each detection was matched.
    """

    tp: int
    fp: int
    fn: int
    pairs: np.ndarray
    distances_px: np.ndarray
    gt_matched: np.ndarray
    det_matched: np.ndarray


def _as_points(xy: np.ndarray, name: str) -> np.ndarray:
    points = np.asarray(xy, dtype=np.float64)
    if points.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    return points


def match_points(gt_xy: np.ndarray, det_xy: np.ndarray, radius_px: float) -> MatchResult:
    """Match detections to ground-truth points with the MIDOG rule (module docstring).

    Args:
        gt_xy: ``(G, 2)`` float, ground-truth centres ``x, y`` in level-0 px,
            in the order they are visited.
        det_xy: ``(D, 2)`` float, detection centres ``x, y`` in level-0 px,
            already filtered to those that count (class and score threshold).
        radius_px: hit radius in px; a distance equal to it is a hit.

    Returns:
        The counts, the matched index pairs and per-point flags.

    Raises:
        ValueError: an array is not ``(N, 2)`` or has non-finite values, or
            the radius is negative or not finite.
    """
    gt = _as_points(gt_xy, "gt_xy")
    det = _as_points(det_xy, "det_xy")
    if not np.isfinite(radius_px) or radius_px < 0:
        raise ValueError(f"radius_px must be a non-negative number, got {radius_px}")

    gt_matched = np.zeros(len(gt), dtype=bool)
    det_matched = np.zeros(len(det), dtype=bool)
    pairs: list[tuple[int, int]] = []
    distances: list[float] = []
    radius_sq = float(radius_px) ** 2

    if len(gt) and len(det):
        # Sort detections by x so each ground-truth point only looks at the
        # strip |dx| <= radius. The stable sort keeps the lower index first
        # among equal x, and the argmin below keeps it first among equal distances.
        order = np.argsort(det[:, 0], kind="stable")
        det_x_sorted = det[order, 0]
        for gt_index, (gx, gy) in enumerate(gt):
            lo = np.searchsorted(det_x_sorted, gx - radius_px, side="left")
            hi = np.searchsorted(det_x_sorted, gx + radius_px, side="right")
            if lo == hi:
                continue
            candidates = order[lo:hi]
            candidates = candidates[~det_matched[candidates]]
            if len(candidates) == 0:
                continue
            d_sq = (det[candidates, 0] - gx) ** 2 + (det[candidates, 1] - gy) ** 2
            inside = d_sq <= radius_sq
            if not inside.any():
                continue
            candidates = candidates[inside]
            d_sq = d_sq[inside]
            # Nearest first; equal distances go to the lower detection index.
            best = np.lexsort((candidates, d_sq))[0]
            det_index = int(candidates[best])
            det_matched[det_index] = True
            gt_matched[gt_index] = True
            pairs.append((gt_index, det_index))
            distances.append(float(np.sqrt(d_sq[best])))

    tp = len(pairs)
    return MatchResult(
        tp=tp,
        fp=len(det) - tp,
        fn=len(gt) - tp,
        pairs=np.asarray(pairs, dtype=np.int64).reshape(-1, 2),
        distances_px=np.asarray(distances, dtype=np.float64),
        gt_matched=gt_matched,
        det_matched=det_matched,
    )


def _candidate_lists(gt: np.ndarray, det: np.ndarray, radius_px: float) -> list[list[int]]:
    """Return, per ground-truth point, the detections within the radius, nearest first."""
    order = np.argsort(det[:, 0], kind="stable")
    det_x_sorted = det[order, 0]
    radius_sq = float(radius_px) ** 2
    lists: list[list[int]] = []
    for gx, gy in gt:
        lo = np.searchsorted(det_x_sorted, gx - radius_px, side="left")
        hi = np.searchsorted(det_x_sorted, gx + radius_px, side="right")
        candidates = order[lo:hi]
        d_sq = (det[candidates, 0] - gx) ** 2 + (det[candidates, 1] - gy) ** 2
        inside = d_sq <= radius_sq
        candidates, d_sq = candidates[inside], d_sq[inside]
        lists.append(candidates[np.lexsort((candidates, d_sq))].tolist())
    return lists


def match_counts_by_threshold(
    gt_xy: np.ndarray,
    det_xy: np.ndarray,
    det_scores: np.ndarray,
    radius_px: float,
    thresholds: np.ndarray,
) -> np.ndarray:
    """Count TP, FP and FN of :func:`match_points` for many score thresholds at once.

    For each threshold ``t`` the result equals
    ``match_points(gt_xy, det_xy[det_scores >= t], radius_px)``, because the
    candidate lists (within the radius, nearest first, lower index first on
    ties) are built once and detections below ``t`` are skipped in them.

    Args:
        gt_xy: ``(G, 2)`` float, ground-truth centres in level-0 px, in visiting order.
        det_xy: ``(D, 2)`` float, detection centres in level-0 px.
        det_scores: ``(D,)`` float, detection scores.
        radius_px: hit radius in px; a distance equal to it is a hit.
        thresholds: ``(M,)`` float, score thresholds; a detection counts when
            its score is >= the threshold.

    Returns:
        ``(M, 3)`` int64, columns ``tp, fp, fn`` per threshold.

    Raises:
        ValueError: shapes disagree or values are not finite.
    """
    gt = _as_points(gt_xy, "gt_xy")
    det = _as_points(det_xy, "det_xy")
    scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if len(scores) != len(det):
        raise ValueError(f"det_scores has {len(scores)} entries for {len(det)} detections")
    if not np.all(np.isfinite(scores)):
        raise ValueError("det_scores contains NaN or infinite values")
    if not np.isfinite(radius_px) or radius_px < 0:
        raise ValueError(f"radius_px must be a non-negative number, got {radius_px}")

    counts = np.zeros((len(thresholds), 3), dtype=np.int64)
    kept_per_threshold = len(scores) - np.searchsorted(np.sort(scores), thresholds, side="left")
    if len(gt) == 0 or len(det) == 0:
        counts[:, 1] = kept_per_threshold
        counts[:, 2] = len(gt)
        return counts

    lists = _candidate_lists(gt, det, radius_px)
    tp_by_kept: dict[int, int] = {}
    for m, threshold in enumerate(thresholds):
        kept = int(kept_per_threshold[m])
        if kept not in tp_by_kept:
            alive = (scores >= threshold).tolist()
            det_taken = [False] * len(det)
            tp = 0
            for candidates in lists:
                for det_index in candidates:
                    if alive[det_index] and not det_taken[det_index]:
                        det_taken[det_index] = True
                        tp += 1
                        break
            tp_by_kept[kept] = tp
        tp = tp_by_kept[kept]
        counts[m] = (tp, kept - tp, len(gt) - tp)
    return counts
