"""Detection metrics of the MIDOG challenges: micro F1, average precision and a threshold sweep.

Definitions, as in the MIDOG 2021, 2022 and 2025 evaluation containers:

* **F1** is micro-averaged: TP, FP and FN of all images (of a group) are
  summed before ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``
  and ``F1 = 2 TP / (2 TP + FP + FN)``. Only detections labelled
  ``"mitotic figure"`` with ``score >= threshold`` count; the matching is
  :func:`midog.evaluation.matching.match_points` with a 7.5 µm radius.
  The containers add 1e-6 to numerators and denominators. Here an
  undefined ratio (for example precision without detections) is NaN.
* **AP** ranks all detections of all images by score, whatever their label
  and threshold. Every point becomes a square of ±11.25 µm, the size at
  which two points 7.5 µm apart horizontally have IoU 0.5. Per image,
  detections in descending score order take the unmatched ground-truth box
  of highest IoU >= 0.5 (COCO rule; equal IoU goes to the later
  ground-truth box). The default ``"coco101"`` interpolation is COCO's
  ``map_50``: the mean over the recall thresholds ``0, 0.01, ..., 1`` of the
  maximum precision at recall >= the threshold (0 where that recall is never
  reached), which is what the containers compute with torchmetrics
  ``MeanAveragePrecision``. ``"all_points"`` integrates the same monotone
  precision envelope over every recall step instead (Pascal VOC 2010 and later).
* The **F1-optimal threshold** comes from a sweep over the scores of the
  detections labelled ``"mitotic figure"``, at most ``max_thresholds``
  of them (quantiles when there are more), plus the fixed threshold.

NOTE: the sweep keeps the label filter, so on MIDOG JSON, whose points below
the detector's own threshold are named "non-mitotic figure", it cannot go
below that threshold. A detection CSV with all candidates has no such limit.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from midog.evaluation.matching import MIDOG_RADIUS_UM, match_counts_by_threshold, match_points, px_from_um
from midog.io.annotations import MITOTIC_FIGURE, normalize_label

__all__ = [
    "AP_BOX_HALF_SIZE_UM",
    "COCO_RECALL_THRESHOLDS",
    "DEFAULT_GROUP_COLUMNS",
    "NON_MITOTIC_FIGURE",
    "REPORT_COLUMNS",
    "EvaluationReport",
    "average_precision",
    "box_iou",
    "counted_mask",
    "evaluate_detections",
    "match_boxes_by_score",
    "prf1",
]

logger = logging.getLogger(__name__)

# Class name of detections below the detector's own threshold in MIDOG output files.
NON_MITOTIC_FIGURE = "non-mitotic figure"

# Half side of the square around each point for AP: 0.01125 mm in the MIDOG containers.
AP_BOX_HALF_SIZE_UM = 11.25

# Recall thresholds of the MIDOG containers (np.arange, not np.linspace, as they pass it).
COCO_RECALL_THRESHOLDS = np.arange(0, 1.01, 0.01)

DEFAULT_GROUP_COLUMNS: tuple[str, ...] = ("tumor", "scanner", "species", "split", "roi_type")

REPORT_COLUMNS: tuple[str, ...] = (
    "group_by",
    "group",
    "threshold",
    "images",
    "ground_truth",
    "detections",
    "tp",
    "fp",
    "fn",
    "precision",
    "recall",
    "f1",
    "f1_image_mean",
    "ap",
    "ap_all_points",
)

_UNKNOWN_GROUP = "(unknown)"


# ---------------------------------------------------------------------------
# Pure metric functions
# ---------------------------------------------------------------------------


def prf1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Return precision, recall and F1 from counts.

    Args:
        tp: true positives.
        fp: false positives.
        fn: false negatives.

    Returns:
        ``(precision, recall, f1)``; each is NaN when its denominator is 0.
    """
    precision = tp / (tp + fp) if tp + fp > 0 else math.nan
    recall = tp / (tp + fn) if tp + fn > 0 else math.nan
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn > 0 else math.nan
    return precision, recall, f1


def counted_mask(labels: Sequence[str] | np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Select the detections that count for F1.

    Args:
        labels: ``(D,)`` class names.
        scores: ``(D,)`` float scores.
        threshold: minimum score.

    Returns:
        ``(D,)`` bool: label is ``"mitotic figure"`` and ``score >= threshold``.
    """
    labels = np.asarray(labels, dtype=object)
    scores = np.asarray(scores, dtype=np.float64)
    return (labels == MITOTIC_FIGURE) & (scores >= threshold)


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Return the IoU of every pair of boxes.

    Args:
        boxes_a: ``(A, 4)`` float, ``x1, y1, x2, y2``.
        boxes_b: ``(B, 4)`` float, ``x1, y1, x2, y2``.

    Returns:
        ``(A, B)`` float64 IoU in ``[0, 1]``.
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    inter_w = np.clip(
        np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None
    )
    inter_h = np.clip(
        np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None
    )
    inter = inter_w * inter_h  # [A, B]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _boxes_around(xy: np.ndarray, half_size_px: float) -> np.ndarray:
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    return np.concatenate([xy - half_size_px, xy + half_size_px], axis=1)


def match_boxes_by_score(
    gt_xy: np.ndarray,
    det_xy: np.ndarray,
    det_scores: np.ndarray,
    half_size_px: float,
    iou_thresh: float = 0.5,
) -> np.ndarray:
    """Mark the detections that are true positives under the COCO box rule.

    Each point becomes a square of ``2 * half_size_px``. Detections, in
    descending score order (stable, so equal scores keep their order), take
    the unmatched ground-truth box with the highest IoU, provided that IoU
    is >= ``iou_thresh``. Among equal IoU the later ground-truth box wins, as
    in pycocotools ``COCOeval.evaluateImg``.

    Args:
        gt_xy: ``(G, 2)`` float, ground-truth centres in level-0 px.
        det_xy: ``(D, 2)`` float, detection centres in level-0 px.
        det_scores: ``(D,)`` float scores.
        half_size_px: half the side of each square, in px.
        iou_thresh: minimum IoU of a match.

    Returns:
        ``(D,)`` bool, in the input order: whether each detection matched.
    """
    det_scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    is_tp = np.zeros(len(det_scores), dtype=bool)
    gt_xy = np.asarray(gt_xy, dtype=np.float64).reshape(-1, 2)
    if len(gt_xy) == 0 or len(det_scores) == 0:
        return is_tp

    iou = box_iou(_boxes_around(det_xy, half_size_px), _boxes_around(gt_xy, half_size_px))  # [D, G]
    gt_taken = np.zeros(len(gt_xy), dtype=bool)
    for det_index in np.argsort(-det_scores, kind="mergesort"):
        row = np.where(gt_taken, -1.0, iou[det_index])
        best = len(row) - 1 - int(np.argmax(row[::-1]))  # last index of the maximum
        if row[best] >= iou_thresh:
            gt_taken[best] = True
            is_tp[det_index] = True
    return is_tp


def average_precision(
    scores: np.ndarray,
    is_tp: np.ndarray,
    num_gt: int,
    interpolation: Literal["coco101", "all_points"] = "coco101",
) -> float:
    """Compute average precision from scored detections (module docstring).

    Args:
        scores: ``(D,)`` float scores of all detections of all images, in
            image order. Equal scores keep this order when ranked, as in
            pycocotools.
        is_tp: ``(D,)`` bool, whether each detection matched a ground-truth point.
        num_gt: number of ground-truth points.
        interpolation: ``"coco101"`` (MIDOG, COCO ``map_50``) or ``"all_points"``.

    Returns:
        AP in ``[0, 1]``; NaN when ``num_gt`` is 0.

    Raises:
        ValueError: the arrays differ in length, or the interpolation is unknown.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    is_tp = np.asarray(is_tp, dtype=bool).reshape(-1)
    if len(scores) != len(is_tp):
        raise ValueError(f"scores ({len(scores)}) and is_tp ({len(is_tp)}) differ in length")
    if interpolation not in ("coco101", "all_points"):
        raise ValueError(f"interpolation must be 'coco101' or 'all_points', got {interpolation!r}")
    if num_gt <= 0:
        return math.nan
    if len(scores) == 0:
        return 0.0

    order = np.argsort(-scores, kind="mergesort")
    tp_cum = np.cumsum(is_tp[order])
    fp_cum = np.cumsum(~is_tp[order])
    recall = tp_cum / num_gt
    precision = tp_cum / (tp_cum + fp_cum)
    # Precision envelope: the maximum precision at this or any higher recall.
    envelope = np.maximum.accumulate(precision[::-1])[::-1]

    if interpolation == "coco101":
        index = np.searchsorted(recall, COCO_RECALL_THRESHOLDS, side="left")
        sampled = np.where(index < len(envelope), envelope[np.minimum(index, len(envelope) - 1)], 0.0)
        return float(np.mean(sampled))

    recall_steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(recall_steps * envelope))


# ---------------------------------------------------------------------------
# Dataset evaluation
# ---------------------------------------------------------------------------


@dataclass
class _ImageResult:
    image: str
    mpp: float
    num_gt: int
    num_counted: int
    tp: int
    fp: int
    fn: int
    ap_scores: np.ndarray  # (D,) scores of all detections
    ap_is_tp: np.ndarray  # (D,) bool
    sweep_counts: np.ndarray  # (M, 3) tp, fp, fn per sweep threshold


@dataclass
class EvaluationReport:
    """Results of one evaluation: group rows, per-image rows and the threshold sweep.

    Attributes:
        threshold: the fixed score threshold of the F1 rows.
        radius_um: hit radius in µm.
        best_threshold: the F1-optimal threshold of the sweep (NaN without detections).
        rows: one row per group at ``threshold``, then the overall row at
            ``best_threshold``; columns ``REPORT_COLUMNS``. ``group_by`` is
            ``"overall"`` or a domain column; ``group`` is ``"all"`` or the value.
        per_image: one row per image with ``image``, ``mpp``, ``radius_px``,
            ``ground_truth``, ``detections``, ``tp``, ``fp``, ``fn``,
            ``precision``, ``recall``, ``f1`` and the domain columns.
        sweep: ``threshold``, ``tp``, ``fp``, ``fn``, ``precision``,
            ``recall``, ``f1`` over all images, ascending threshold.
    """

    threshold: float
    radius_um: float
    best_threshold: float
    rows: pd.DataFrame
    per_image: pd.DataFrame
    sweep: pd.DataFrame

    def overall(self, at_best_threshold: bool = False) -> pd.Series:
        """Return the overall row at the fixed threshold or at the F1-optimal one."""
        overall = self.rows[self.rows["group_by"] == "overall"]
        return overall.iloc[-1 if at_best_threshold else 0]

    def to_frame(self) -> pd.DataFrame:
        """Return the report rows (the content of report.csv)."""
        return self.rows.copy()

    def summary_line(self) -> str:
        """Return one line with the overall F1 and the F1-optimal threshold."""
        row = self.overall()
        best = self.overall(at_best_threshold=True)
        return (
            f"F1 {_fmt(row['f1'])} (precision {_fmt(row['precision'])}, recall {_fmt(row['recall'])}; "
            f"TP {row['tp']}, FP {row['fp']}, FN {row['fn']}) at threshold {self.threshold:g} "
            f"on {row['images']} images; AP {_fmt(row['ap'])}; "
            f"F1-optimal threshold {_fmt(self.best_threshold)} (F1 {_fmt(best['f1'])})"
        )

    def to_markdown(self) -> str:
        """Render the report rows as a Markdown table."""
        columns = list(REPORT_COLUMNS)
        lines = [
            "| " + " | ".join(columns) + " |",
            "|" + "|".join("---" if c in ("group_by", "group") else "---:" for c in columns) + "|",
        ]
        for _, row in self.rows.iterrows():
            cells = [_fmt(row[c]) if isinstance(row[c], float) else str(row[c]) for c in columns]
            lines.append("| " + " | ".join(cells) + " |")
        header = (
            f"Mitotic figure detection: hit radius {self.radius_um:g} µm, score threshold "
            f"{self.threshold:g}, F1-optimal threshold {_fmt(self.best_threshold)}.\n\n"
        )
        return header + "\n".join(lines) + "\n"


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}"


def _sweep_thresholds(scores: np.ndarray, threshold: float, max_thresholds: int) -> np.ndarray:
    unique = np.unique(scores)
    if len(unique) > max_thresholds:
        quantiles = np.linspace(0.0, 1.0, max_thresholds)
        unique = np.unique(np.quantile(unique, quantiles, method="inverted_cdf"))
    return np.unique(np.concatenate([unique, [threshold]]))


def _check_columns(frame: pd.DataFrame, required: Sequence[str], name: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {', '.join(missing)}")


def _group_row(
    group_by: str,
    group: str,
    threshold: float,
    results: list[_ImageResult],
    counts: tuple[int, int, int],
    num_counted: int,
) -> dict[str, object]:
    tp, fp, fn = counts
    precision, recall, f1 = prf1(tp, fp, fn)
    image_f1 = [prf1(r.tp, r.fp, r.fn)[2] for r in results]
    image_f1 = [v for v in image_f1 if not math.isnan(v)]
    num_gt = sum(r.num_gt for r in results)
    scores = np.concatenate([r.ap_scores for r in results]) if results else np.zeros(0)
    is_tp = np.concatenate([r.ap_is_tp for r in results]) if results else np.zeros(0, dtype=bool)
    return {
        "group_by": group_by,
        "group": group,
        "threshold": float(threshold),
        "images": len(results),
        "ground_truth": num_gt,
        "detections": num_counted,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "f1_image_mean": float(np.mean(image_f1)) if image_f1 else math.nan,
        "ap": average_precision(scores, is_tp, num_gt, "coco101"),
        "ap_all_points": average_precision(scores, is_tp, num_gt, "all_points"),
    }


def evaluate_detections(
    annotations: pd.DataFrame,
    images: pd.DataFrame,
    detections: pd.DataFrame,
    *,
    threshold: float = 0.5,
    radius_um: float = MIDOG_RADIUS_UM,
    default_mpp: float = 0.25,
    group_columns: Sequence[str] = DEFAULT_GROUP_COLUMNS,
    max_thresholds: int = 500,
) -> EvaluationReport:
    """Evaluate detections against ground truth the way the MIDOG challenges do.

    Every labelled image of ``images`` is evaluated; an image without
    detections counts all its mitotic figures as false negatives. Detections
    on images outside ``images`` are ignored with a warning.

    Args:
        annotations: annotation table of :func:`midog.io.annotations.read_annotations`;
            only rows labelled ``"mitotic figure"`` are ground truth, in their row order.
        images: image table of the same reader; ``mpp`` (µm/px) converts the
            radius to pixels per image, ``labelled`` selects images, and the
            ``group_columns`` present define the groups.
        detections: columns ``image``, ``x``, ``y`` (level-0 px), ``score``
            and optionally ``label`` (missing: all ``"mitotic figure"``).
        threshold: minimum score of a detection that counts for F1.
        radius_um: hit radius in µm.
        default_mpp: µm/px for images whose ``mpp`` is missing.
        group_columns: image-table columns to report per value, where present.
        max_thresholds: most sweep thresholds; more scores are thinned to quantiles.

    Returns:
        The report.

    Raises:
        ValueError: a table lacks a required column, or a number is invalid.
    """
    _check_columns(annotations, ("image", "x", "y", "label"), "annotations")
    _check_columns(images, ("image",), "images")
    _check_columns(detections, ("image", "x", "y", "score"), "detections")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be a number, got {threshold}")
    if not default_mpp > 0:
        raise ValueError(f"default_mpp must be a positive number of µm/px, got {default_mpp}")
    if max_thresholds < 2:
        raise ValueError(f"max_thresholds must be at least 2, got {max_thresholds}")

    if "labelled" in images.columns:
        evaluated = images[images["labelled"].astype(bool)].reset_index(drop=True)
        if len(evaluated) < len(images):
            logger.info("skipping %d unlabelled images", len(images) - len(evaluated))
    else:
        evaluated = images.reset_index(drop=True)

    detections = detections.copy()
    if "label" not in detections.columns:
        detections["label"] = MITOTIC_FIGURE
    # "Mitosis" or "Mitotic_Figure" count as mitotic figures; "non-mitotic figure" does not.
    detections["label"] = detections["label"].astype(str).map(normalize_label)
    detections["score"] = pd.to_numeric(detections["score"], errors="raise").astype(np.float64)
    if not np.all(np.isfinite(detections[["x", "y", "score"]].to_numpy(dtype=np.float64))):
        raise ValueError("detections contain NaN or infinite x, y or score values")

    known = set(evaluated["image"])
    outside = detections.loc[~detections["image"].isin(known), "image"]
    if len(outside):
        logger.warning(
            "ignoring %d detections on %d images without labelled ground truth (%s)",
            len(outside),
            outside.nunique(),
            ", ".join(map(str, outside.unique()[:5])),
        )
    other_labels = detections.loc[
        detections["image"].isin(known) & (detections["label"] != MITOTIC_FIGURE), "label"
    ]
    if len(other_labels):
        logger.info(
            "%d detections are not labelled %r and do not count for F1: %s",
            len(other_labels),
            MITOTIC_FIGURE,
            dict(Counter(other_labels)),
        )

    mitotic = detections["label"] == MITOTIC_FIGURE
    thresholds = _sweep_thresholds(
        detections.loc[mitotic & detections["image"].isin(known), "score"].to_numpy(),
        threshold,
        max_thresholds,
    )
    gt_by_image = {
        name: group[["x", "y"]].to_numpy(dtype=np.float64)
        for name, group in annotations[annotations["label"] == MITOTIC_FIGURE].groupby("image", sort=False)
    }
    det_by_image = dict(tuple(detections.groupby("image", sort=False)))

    mpp_values = pd.to_numeric(
        evaluated.get("mpp", pd.Series(np.nan, index=evaluated.index)), errors="coerce"
    )
    num_default_mpp = int((~np.isfinite(mpp_values.to_numpy(dtype=np.float64))).sum())
    if num_default_mpp:
        logger.info("%d images have no µm/px; using %g µm/px for them", num_default_mpp, default_mpp)

    results: list[_ImageResult] = []
    for name, mpp in zip(evaluated["image"], mpp_values):
        mpp = float(mpp) if np.isfinite(mpp) else float(default_mpp)
        radius_px = px_from_um(radius_um, mpp)
        gt_xy = gt_by_image.get(name, np.zeros((0, 2)))
        dets = det_by_image.get(name)
        if dets is None:
            dets = detections.iloc[0:0]
        det_xy = dets[["x", "y"]].to_numpy(dtype=np.float64)
        scores = dets["score"].to_numpy(dtype=np.float64)
        is_mitotic = (dets["label"] == MITOTIC_FIGURE).to_numpy()
        counted = counted_mask(dets["label"].to_numpy(), scores, threshold)

        match = match_points(gt_xy, det_xy[counted], radius_px)
        sweep_counts = match_counts_by_threshold(
            gt_xy, det_xy[is_mitotic], scores[is_mitotic], radius_px, thresholds
        )
        ap_is_tp = match_boxes_by_score(gt_xy, det_xy, scores, px_from_um(AP_BOX_HALF_SIZE_UM, mpp))
        results.append(
            _ImageResult(
                image=name,
                mpp=mpp,
                num_gt=len(gt_xy),
                num_counted=int(counted.sum()),
                tp=match.tp,
                fp=match.fp,
                fn=match.fn,
                ap_scores=scores,
                ap_is_tp=ap_is_tp,
                sweep_counts=sweep_counts,
            )
        )

    # Threshold sweep over all images.
    sweep_counts = (
        np.sum([r.sweep_counts for r in results], axis=0) if results else np.zeros((len(thresholds), 3), int)
    )
    sweep_rows = []
    for t, (tp, fp, fn) in zip(thresholds, sweep_counts):
        sweep_rows.append(
            {
                "threshold": float(t),
                "tp": int(tp),
                "fp": int(fp),
                "fn": int(fn),
                **dict(zip(("precision", "recall", "f1"), prf1(int(tp), int(fp), int(fn)))),
            }
        )
    sweep = pd.DataFrame(sweep_rows, columns=["threshold", "tp", "fp", "fn", "precision", "recall", "f1"])
    f1_values = sweep["f1"].to_numpy(dtype=np.float64)
    if len(sweep) and np.isfinite(f1_values).any():
        best_f1 = np.nanmax(f1_values)
        best_index = int(np.flatnonzero(f1_values == best_f1)[-1])  # highest threshold among ties
        best_threshold = float(sweep["threshold"].iloc[best_index])
    else:
        best_index, best_threshold = -1, math.nan

    # Group rows at the fixed threshold, then the overall row at the F1-optimal one.
    def counts_of(group: list[_ImageResult]) -> tuple[int, int, int]:
        return (sum(r.tp for r in group), sum(r.fp for r in group), sum(r.fn for r in group))

    rows = [
        _group_row(
            "overall", "all", threshold, results, counts_of(results), sum(r.num_counted for r in results)
        )
    ]
    for column in group_columns:
        if column not in evaluated.columns:
            continue
        values = evaluated[column].map(lambda v: _UNKNOWN_GROUP if pd.isna(v) else str(v))
        if (values == _UNKNOWN_GROUP).all():
            continue
        for value in sorted(values.unique()):
            group = [r for r, v in zip(results, values) if v == value]
            rows.append(
                _group_row(
                    column, value, threshold, group, counts_of(group), sum(r.num_counted for r in group)
                )
            )
    if best_index >= 0:
        best_counts = tuple(int(v) for v in sweep_counts[best_index])
        num_counted_best = best_counts[0] + best_counts[1]
        rows.append(_group_row("overall", "all", best_threshold, results, best_counts, num_counted_best))
        # The per-image mean F1 needs per-image counts at that threshold.
        image_f1 = [prf1(*(int(v) for v in r.sweep_counts[best_index]))[2] for r in results]
        image_f1 = [v for v in image_f1 if not math.isnan(v)]
        rows[-1]["f1_image_mean"] = float(np.mean(image_f1)) if image_f1 else math.nan
    report_rows = pd.DataFrame(rows, columns=list(REPORT_COLUMNS))

    # Per-image table.
    per_image_rows = []
    for r in results:
        precision, recall, f1 = prf1(r.tp, r.fp, r.fn)
        per_image_rows.append(
            {
                "image": r.image,
                "mpp": r.mpp,
                "radius_px": px_from_um(radius_um, r.mpp),
                "ground_truth": r.num_gt,
                "detections": r.num_counted,
                "tp": r.tp,
                "fp": r.fp,
                "fn": r.fn,
                "precision": precision,
                "recall": recall,
                "f1": f1,
            }
        )
    per_image = pd.DataFrame(
        per_image_rows,
        columns=[
            "image",
            "mpp",
            "radius_px",
            "ground_truth",
            "detections",
            "tp",
            "fp",
            "fn",
            "precision",
            "recall",
            "f1",
        ],
    )
    for column in group_columns:
        if column in evaluated.columns:
            per_image[column] = evaluated[column].to_numpy()

    report = EvaluationReport(
        threshold=float(threshold),
        radius_um=float(radius_um),
        best_threshold=best_threshold,
        rows=report_rows,
        per_image=per_image,
        sweep=sweep,
    )
    logger.info("%s", report.summary_line())
    return report
