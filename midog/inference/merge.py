"""Merging the detections of overlapping tiles into one list per slide.

Three steps, all in level-0 px:

1. ``keep_owned``: each tile keeps only detections inside its ownership
   rectangle (see ``midog.inference.tiling.ownership_rects``), so a figure cut
   by one tile's border is taken from the neighbour that contains it whole.
2. ``suppress_duplicates``: greedy by score, a detection suppresses others of
   the same class within a radius, which removes the pairs left at the seams.
3. ``drop_outside_bounds``: detections centred outside the slide's bounds
   (in padding) are dropped.
"""

from __future__ import annotations

import logging

import numpy as np

from midog.inference.tiling import L0Rect
from midog.structures import Detections

__all__ = [
    "MERGE_RADIUS_UM",
    "keep_owned",
    "neighbour_pairs",
    "suppress_duplicates",
    "drop_outside_bounds",
]

logger = logging.getLogger(__name__)

# Two tiles see the same figure with slightly different context, so their
# centre estimates differ by a few px. Distinct nuclei are at least about one
# nucleus diameter apart (6-10 µm for a mitotic figure), so 4 µm merges the
# two estimates of one figure but never two neighbouring cells. It is also
# well inside the 7.5 µm (30 px at 0.25 µm/px) radius the MIDOG challenges
# use to match detections to ground truth.
MERGE_RADIUS_UM = 4.0


def keep_owned(detections: Detections, l0_rect: np.ndarray) -> Detections:
    """Keep the detections whose centre lies in a tile's ownership rectangle.

    Args:
        detections: one tile's detections, ``xy`` in level-0 px.
        l0_rect: ``(4,)`` float ``x0, y0, x1, y1`` in level-0 px; infinite on
            sides without a neighbour.

    Returns:
        The detections with ``x0 <= x < x1`` and ``y0 <= y < y1``.
    """
    x0, y0, x1, y1 = (float(v) for v in l0_rect)
    x, y = detections.xy[:, 0], detections.xy[:, 1]
    return detections.select((x >= x0) & (x < x1) & (y >= y0) & (y < y1))


def neighbour_pairs(xy: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Find all pairs of points closer than or at ``radius``, by grid hashing.

    Points are sorted into square cells of side ``radius``; a point's
    neighbours can only lie in its own or the 8 surrounding cells.

    Args:
        xy: ``(N, 2)`` float points.
        radius: distance in the units of ``xy``, positive.

    Returns:
        ``(first, second)``: ``(P,)`` int64 index arrays with
        ``first < second`` and ``|xy[first] - xy[second]| <= radius``, each
        pair once.

    Raises:
        ValueError: for a non-positive radius.
    """
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if len(xy) < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty

    cells = np.floor(xy / radius).astype(np.int64)
    cells -= cells.min(axis=0)
    num_cell_rows = int(cells[:, 1].max()) + 3
    # One integer key per cell; a margin of one cell keeps neighbour keys apart.
    keys = (cells[:, 0] + 1) * num_cell_rows + (cells[:, 1] + 1)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]

    firsts, seconds = [], []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            target = keys + dx * num_cell_rows + dy
            lo = np.searchsorted(sorted_keys, target, side="left")
            hi = np.searchsorted(sorted_keys, target, side="right")
            counts = hi - lo
            source = np.repeat(np.arange(len(xy)), counts)
            offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            firsts.append(source)
            seconds.append(order[np.repeat(lo, counts) + offsets])
    first = np.concatenate(firsts)
    second = np.concatenate(seconds)

    keep = first < second
    first, second = first[keep], second[keep]
    close = np.hypot(*(xy[first] - xy[second]).T) <= radius
    return first[close], second[close]


def suppress_duplicates(detections: Detections, l0_radius: float) -> Detections:
    """Keep the highest-scoring detection among same-class ones within a radius.

    Greedy: detections are visited by descending score (ties by index), and
    each kept detection suppresses the not yet visited ones of its class
    within ``l0_radius``.

    Args:
        detections: the slide's detections, ``xy`` in level-0 px.
        l0_radius: merge radius in level-0 px, positive.

    Returns:
        The kept detections in descending score order.
    """
    if len(detections) == 0:
        return detections
    first, second = neighbour_pairs(detections.xy, l0_radius)
    same_class = detections.labels[first] == detections.labels[second]
    first, second = first[same_class], second[same_class]

    order = np.argsort(-detections.scores, kind="stable")
    if len(first) == 0:
        return detections.select(order)

    # Neighbour lists in CSR form, both directions.
    sources = np.concatenate([first, second])
    targets = np.concatenate([second, first])
    by_source = np.argsort(sources, kind="stable")
    targets = targets[by_source]
    starts = np.searchsorted(sources[by_source], np.arange(len(detections) + 1))

    suppressed = np.zeros(len(detections), dtype=bool)
    kept = []
    for index in order.tolist():
        if suppressed[index]:
            continue
        kept.append(index)
        suppressed[targets[starts[index] : starts[index + 1]]] = True
    return detections.select(np.asarray(kept, dtype=np.int64))


def drop_outside_bounds(detections: Detections, l0_bounds: L0Rect) -> Detections:
    """Drop detections centred outside the slide's bounds.

    Args:
        detections: ``xy`` in level-0 px.
        l0_bounds: ``(x, y, width, height)`` in level-0 px.

    Returns:
        The detections with ``x`` in ``[x, x + width)`` and ``y`` in ``[y, y + height)``.
    """
    l0_x, l0_y, l0_width, l0_height = l0_bounds
    x, y = detections.xy[:, 0], detections.xy[:, 1]
    inside = (x >= l0_x) & (x < l0_x + l0_width) & (y >= l0_y) & (y < l0_y + l0_height)
    return detections.select(inside)
