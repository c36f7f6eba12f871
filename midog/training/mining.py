"""Hard-negative mining: the model's own false positives, grouped by look and undersampled.

One mining round runs a detector over training data and collects candidate
false positives: detections at or above ``score_thresh`` farther than 7.5 µm
(the MIDOG hit radius) from every known mitotic figure. A detection within
the radius of a figure is never a candidate, even where the one-to-one MIDOG
matching would count it as a second, false hit, because a duplicate on a real
figure is no look-alike to learn from.

Each candidate is described by the morphology of the nucleus under it
(``midog.training.morphology``), and the candidates are grouped by seeded
k-means on the standardised features. The kept pseudo-negatives are drawn
evenly across the groups, so they cover the variety of look-alikes instead of
repeating the most common kind. This follows the idea of PseudoCell (pseudo
labels for hard negatives, undersampled by cluster) as described in its title
and summary. The number kept is a ratio to the number of positives.

Two kinds of training data are mined:

- annotated images (MIDOG++ layout: an annotation table and an image folder),
  see ``mine_annotated_images``;
- the default model's crop canvases: the training crops of ``mf_crops``, each
  pasted at the centre of a window of training tissue as in training, where
  any detection farther than 7.5 µm from the crop centre is false
  (``mine_training_crops``), and the training tissue itself, where every
  detection is a candidate because the tissue has no labels (``mine_tissue``).
  Test and validation crops and the held-out tissue are never mined.

Negatives are written to a new CSV file (``write_negatives``) with the columns
``NEGATIVE_COLUMNS``; the input annotation file is never changed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from tqdm.auto import tqdm

from midog.errors import AnnotationError, MidogError
from midog.evaluation.matching import MIDOG_RADIUS_UM, px_from_um
from midog.inference.detector import TileDetector
from midog.io.regions import RegionSet, sample_points_in_regions
from midog.io.writers import atomic_output
from midog.structures import Detections
from midog.training.crops import CROP_SIZE_PX, MODEL_MPP, CropRecord, TissueSource, load_rgb
from midog.training.morphology import FEATURE_NAMES, nucleus_features

__all__ = [
    "NEGATIVE_COLUMNS",
    "PSEUDO_NEGATIVE",
    "REGION_NEGATIVE",
    "MiningConfig",
    "RegionGuidedSampler",
    "candidate_mask",
    "cluster_candidates",
    "describe_candidates",
    "detect_large_image",
    "kmeans",
    "mine_annotated_images",
    "mine_crop_canvases",
    "mine_tissue",
    "mine_training_crops",
    "read_image_at_mpp",
    "read_negatives",
    "select_pseudo_negatives",
    "undersample_clusters",
    "write_negatives",
]

logger = logging.getLogger(__name__)

PSEUDO_NEGATIVE = "pseudo-negative"
REGION_NEGATIVE = "region-negative"
# Columns of a negatives file. ``source`` is "image" for annotated images,
# "crop" for a training crop (``image`` is its path below ``mf_crops``) and
# "tissue" for a training tissue source (``image`` is its name).
NEGATIVE_COLUMNS: tuple[str, ...] = ("image", "x", "y", "label", "score", "round", "cluster", "source")
SOURCES = ("image", "crop", "tissue")

# Side of the window that morphology is measured on: 16 µm, 64 px at 0.25 µm/px.
FEATURE_WINDOW_UM = 16.0
# Training crops are pasted at the centre of a window of training tissue this large.
CROP_CANVAS_PX = 256
CROP_FEATHER_PX = 8
CROP_ORIGIN_PX = (CROP_CANVAS_PX - CROP_SIZE_PX) // 2


@dataclass(frozen=True)
class MiningConfig:
    """Settings of one mining round.

    Attributes:
        score_thresh: detections at or above this score are candidates.
        radius_um: a detection within this distance of a known mitotic
            figure is a hit, not a candidate; the MIDOG radius by default.
        num_clusters: number of k-means groups of candidate morphology.
        negative_ratio: pseudo-negatives kept per positive (mitotic figure).
        seed: seed of k-means, of the undersampling and of crop backgrounds.
        batch_size: images per ``detect`` call.
    """

    score_thresh: float = 0.5
    radius_um: float = MIDOG_RADIUS_UM
    num_clusters: int = 8
    negative_ratio: float = 1.0
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_thresh <= 1.0:
            raise MidogError(f"score_thresh must be in [0, 1], got {self.score_thresh}")
        if not self.radius_um > 0:
            raise MidogError(f"radius_um must be positive, got {self.radius_um}")
        if self.num_clusters < 1:
            raise MidogError(f"num_clusters must be at least 1, got {self.num_clusters}")
        if not self.negative_ratio >= 0:
            raise MidogError(f"negative_ratio must be 0 or more, got {self.negative_ratio}")
        if self.batch_size < 1:
            raise MidogError(f"batch_size must be at least 1, got {self.batch_size}")


# ---------------------------------------------------------------------------
# Candidates, clustering and undersampling (no I/O)
# ---------------------------------------------------------------------------


def candidate_mask(
    det_xy: NDArray[np.floating],
    det_scores: NDArray[np.floating],
    figure_xy: NDArray[np.floating],
    score_thresh: float,
    radius_px: float,
) -> NDArray[np.bool_]:
    """Flag the detections that are candidate false positives.

    Args:
        det_xy: ``(D, 2)`` float detection centres ``x, y`` in px.
        det_scores: ``(D,)`` float scores.
        figure_xy: ``(G, 2)`` float centres of known mitotic figures, same frame.
        score_thresh: lowest score of a candidate.
        radius_px: a detection at a distance of at most this from a figure is a
            hit (the boundary counts as a hit, as in MIDOG matching).

    Returns:
        ``(D,)`` bool, True for detections at or above ``score_thresh`` that
        lie farther than ``radius_px`` from every figure.
    """
    det = np.asarray(det_xy, dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    figures = np.asarray(figure_xy, dtype=np.float64).reshape(-1, 2)
    mask = scores >= score_thresh
    if len(figures) and len(det):
        distance_sq = ((det[:, None, :] - figures[None, :, :]) ** 2).sum(-1)
        mask &= ~(distance_sq <= float(radius_px) ** 2).any(axis=1)
    return mask


def _standardize(features: NDArray[np.floating]) -> NDArray[np.float64]:
    values = np.asarray(features, dtype=np.float64)
    spread = values.std(axis=0)
    # A constant feature carries no grouping information; keep it at 0 instead of dividing by 0.
    spread[spread < 1e-12] = 1.0
    return (values - values.mean(axis=0)) / spread


def kmeans(
    features: NDArray[np.floating], num_clusters: int, seed: int = 0, max_iters: int = 100
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Group rows with Lloyd's k-means, seeded k-means++ initialisation.

    Args:
        features: ``(N, F)`` float, compared by Euclidean distance as given
            (standardise first where the scales differ).
        num_clusters: number of groups; reduced to the number of distinct rows
            where there are fewer.
        seed: seed of the initialisation.
        max_iters: maximum number of assignment and update steps.

    Returns:
        ``(labels, centres)``: ``(N,)`` int64 group of each row in
        ``[0, K)``, and ``(K, F)`` float64 group centres.

    Raises:
        MidogError: ``features`` is not ``(N, F)`` with N >= 1, or ``num_clusters`` < 1.
    """
    points = np.asarray(features, dtype=np.float64)
    if points.ndim != 2 or len(points) == 0:
        raise MidogError(f"k-means needs a non-empty (N, F) feature array, got shape {points.shape}")
    if num_clusters < 1:
        raise MidogError(f"num_clusters must be at least 1, got {num_clusters}")
    num_clusters = min(int(num_clusters), len(np.unique(points, axis=0)))
    rng = np.random.default_rng(seed)

    # k-means++: each next centre is drawn with probability proportional to the squared distance.
    centres = [points[int(rng.integers(len(points)))]]
    closest_sq = ((points - centres[0]) ** 2).sum(1)
    for _ in range(1, num_clusters):
        probabilities = closest_sq / closest_sq.sum()
        centres.append(points[int(rng.choice(len(points), p=probabilities))])
        closest_sq = np.minimum(closest_sq, ((points - centres[-1]) ** 2).sum(1))
    centre_array = np.stack(centres)

    labels = np.full(len(points), -1, dtype=np.int64)
    for _ in range(max_iters):
        distance_sq = ((points[:, None, :] - centre_array[None, :, :]) ** 2).sum(-1)
        new_labels = np.argmin(distance_sq, axis=1).astype(np.int64)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        for k in range(num_clusters):
            members = points[labels == k]
            if len(members):
                centre_array[k] = members.mean(axis=0)
            else:
                # An emptied group takes the point farthest from its own centre.
                farthest = int(np.argmax(distance_sq[np.arange(len(points)), labels]))
                centre_array[k] = points[farthest]
    return labels, centre_array


def undersample_clusters(clusters: NDArray[np.integer], num_keep: int, seed: int = 0) -> NDArray[np.int64]:
    """Choose ``num_keep`` rows spread as evenly as possible over the groups.

    Every group gets the same quota; a group smaller than its quota gives all
    its rows and passes the rest on to the larger groups. Inside a group the
    rows are a seeded random draw, not the highest scores, because the
    highest-scoring detections in unlabelled tissue are the likeliest to be
    real, unlabelled mitotic figures. With ``num_keep`` below the number of
    groups, ``num_keep`` groups chosen at random give one row each.

    Args:
        clusters: ``(N,)`` int group of each row.
        num_keep: number of rows to keep; all rows when it is at least N.
        seed: seed of the draws.

    Returns:
        Sorted ``(min(num_keep, N),)`` int64 row indices.
    """
    clusters = np.asarray(clusters).reshape(-1)
    num_keep = max(0, int(num_keep))
    if num_keep >= len(clusters):
        return np.arange(len(clusters), dtype=np.int64)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(clusters == c) for c in np.unique(clusters)]
    groups = [rng.permutation(group) for group in groups]

    # Water-filling: raise a common quota until num_keep rows are taken.
    quotas = np.zeros(len(groups), dtype=np.int64)
    sizes = np.array([len(group) for group in groups])
    remaining = num_keep
    while remaining > 0:
        open_groups = np.flatnonzero(quotas < sizes)
        share = remaining // len(open_groups)
        if share == 0:
            for g in rng.choice(open_groups, size=remaining, replace=False):
                quotas[g] += 1
            break
        for g in open_groups:
            take = min(share, sizes[g] - quotas[g])
            quotas[g] += take
            remaining -= take
    kept = np.concatenate([group[:quota] for group, quota in zip(groups, quotas)])
    return np.sort(kept).astype(np.int64)


def cluster_candidates(candidates: pd.DataFrame, num_clusters: int, seed: int = 0) -> NDArray[np.int64]:
    """Group candidates by k-means on their standardised ``FEATURE_NAMES`` columns.

    Returns:
        ``(N,)`` int64 group of each candidate row; empty for no rows.
    """
    if len(candidates) == 0:
        return np.zeros(0, dtype=np.int64)
    labels, _ = kmeans(_standardize(candidates[list(FEATURE_NAMES)].to_numpy()), num_clusters, seed)
    return labels


def select_pseudo_negatives(
    candidates: pd.DataFrame, num_positives: int, config: MiningConfig, round_index: int
) -> pd.DataFrame:
    """Group candidates by morphology and keep an even share of every group.

    Candidates with a non-empty ``region`` column are detections inside an
    annotated necrosis or debris region (see ``mine_annotated_images``). They
    are all kept as region negatives with cluster -1 and do not count against
    the ratio. The other candidates are clustered and undersampled.

    Args:
        candidates: table with the columns ``image``, ``x``, ``y``, ``score``,
            ``source`` and ``FEATURE_NAMES``, one row per candidate, and
            optionally ``region``.
        num_positives: number of mitotic figures in the mined data; the number
            of pseudo-negatives kept is ``ceil(negative_ratio * num_positives)``,
            or all candidates where there are fewer.
        config: mining settings (``num_clusters``, ``negative_ratio``, ``seed``).
        round_index: mining round, written to the ``round`` column.

    Returns:
        The candidates table with ``cluster``, ``round``, ``label`` and
        ``kept`` (bool) columns added.
    """
    table = candidates.reset_index(drop=True).copy()
    in_region = np.zeros(len(table), dtype=bool)
    if "region" in table.columns:
        in_region = table["region"].fillna("").astype(str).to_numpy() != ""
    table["cluster"] = -1
    table["label"] = np.where(in_region, REGION_NEGATIVE, PSEUDO_NEGATIVE)
    table["kept"] = in_region
    table["round"] = int(round_index)

    pseudo_rows = np.flatnonzero(~in_region)
    clusters = cluster_candidates(table.iloc[pseudo_rows], config.num_clusters, config.seed)
    table.loc[pseudo_rows, "cluster"] = clusters
    num_keep = math.ceil(config.negative_ratio * max(0, int(num_positives)))
    kept = pseudo_rows[undersample_clusters(clusters, num_keep, config.seed)]
    table.loc[kept, "kept"] = True
    logger.info(
        "round %d: kept %d of %d pseudo-negative candidates in %d clusters (ratio %.2f to %d positives) "
        "and %d region negatives",
        round_index,
        len(kept),
        len(pseudo_rows),
        len(np.unique(clusters)),
        config.negative_ratio,
        num_positives,
        int(in_region.sum()),
    )
    return table


# ---------------------------------------------------------------------------
# Negatives files
# ---------------------------------------------------------------------------


def write_negatives(path: str | Path, negatives: pd.DataFrame) -> Path:
    """Write negatives to a CSV file, atomically (temporary name, then rename).

    Args:
        path: the new file; an existing file there is replaced.
        negatives: table with at least the columns ``NEGATIVE_COLUMNS``; extra
            columns (features) are written after them.

    Returns:
        The written path.

    Raises:
        OutputError: the folder is missing or not writable.
        MidogError: a column of ``NEGATIVE_COLUMNS`` is missing.
    """
    path = Path(path)
    missing = [c for c in NEGATIVE_COLUMNS if c not in negatives.columns]
    if missing:
        raise MidogError(f"negatives for {path} lack the column(s) {', '.join(missing)}")
    extra = [c for c in negatives.columns if c not in NEGATIVE_COLUMNS]
    with atomic_output(path) as temporary:
        negatives[list(NEGATIVE_COLUMNS) + extra].to_csv(temporary, index=False, float_format="%.6g")
    return path


def read_negatives(path: str | Path) -> pd.DataFrame:
    """Read a negatives file written by ``write_negatives``.

    Raises:
        AnnotationError: the file is missing, lacks a column of
            ``NEGATIVE_COLUMNS``, or has a non-numeric or non-finite
            coordinate or an unknown ``source``.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"negatives file {path} not found; write it with tools/mine_default_model.py")
    table = pd.read_csv(path, dtype={"image": str, "label": str, "source": str})
    missing = [c for c in NEGATIVE_COLUMNS if c not in table.columns]
    if missing:
        raise AnnotationError(
            f"negatives file {path} lacks the column(s) {', '.join(missing)}; "
            f"expected {','.join(NEGATIVE_COLUMNS)}"
        )
    for column in ("x", "y", "score"):
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise AnnotationError(
                f"negatives file {path}: row {row + 2} has an invalid {column} {table[column][row]!r}"
            )
        table[column] = values
    unknown = sorted(set(table["source"]) - set(SOURCES))
    if unknown:
        raise AnnotationError(
            f"negatives file {path}: unknown source(s) {unknown}; expected one of {list(SOURCES)}"
        )
    return table


# ---------------------------------------------------------------------------
# Detection and morphology on images
# ---------------------------------------------------------------------------


def _cut_window(rgb: NDArray[np.uint8], x: float, y: float, size_px: int) -> NDArray[np.uint8]:
    """Cut a ``size_px`` square centred on ``(x, y)``; pixels outside the image are white."""
    height, width = rgb.shape[:2]
    x0, y0 = math.floor(x + 0.5) - size_px // 2, math.floor(y + 0.5) - size_px // 2
    window = np.full((size_px, size_px, 3), 255, dtype=np.uint8)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + size_px, width), min(y0 + size_px, height)
    if sx1 > sx0 and sy1 > sy0:
        window[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    return window


def describe_candidates(
    rgb: NDArray[np.uint8], xy: NDArray[np.floating], mpp: float = MODEL_MPP
) -> NDArray[np.float64]:
    """Measure ``FEATURE_NAMES`` at each point of one image.

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB image.
        xy: ``(N, 2)`` float points ``x, y`` in the image's px.
        mpp: the image's µm/px.

    Returns:
        ``(N, len(FEATURE_NAMES))`` float64.
    """
    size_px = max(8, round(FEATURE_WINDOW_UM / mpp))
    rows = [nucleus_features(_cut_window(rgb, x, y, size_px), mpp) for x, y in np.asarray(xy).reshape(-1, 2)]
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(FEATURE_NAMES))


def detect_large_image(
    detector: TileDetector,
    rgb: NDArray[np.uint8],
    tile_px: int = 512,
    overlap_px: int = 64,
    tissue_mask: NDArray[np.bool_] | None = None,
    block_px: int = 32,
    batch_size: int = 8,
) -> Detections:
    """Detect in an image larger than one tile, with overlapping tiles.

    Each tile keeps the detections in the part of it that it owns: the tiles'
    owned parts (the tile less half the overlap on sides shared with a
    neighbour) partition the image, so no cell is counted twice.

    Args:
        detector: the model; ``rgb`` must be at its µm/px.
        rgb: ``(H, W, 3)`` uint8 RGB.
        tile_px: side of a tile.
        overlap_px: overlap of neighbouring tiles; even, below ``tile_px``.
        tissue_mask: optional ``(H // block_px, W // block_px)`` bool; tiles
            without a tissue block are skipped.
        block_px: side of one ``tissue_mask`` cell.
        batch_size: tiles per ``detect`` call.

    Returns:
        Detections with ``xy`` in the image's px.
    """
    if not 0 <= overlap_px < tile_px or overlap_px % 2:
        raise MidogError(f"overlap_px must be even and in [0, {tile_px}), got {overlap_px}")
    height, width = rgb.shape[:2]
    stride = tile_px - overlap_px
    half = overlap_px // 2

    def origins(length: int) -> list[int]:
        starts = list(range(0, max(length - overlap_px, 1), stride))
        return starts or [0]

    tiles: list[tuple[int, int]] = []
    for y in origins(height):
        for x in origins(width):
            if tissue_mask is not None:
                cells = tissue_mask[
                    y // block_px : (y + tile_px) // block_px, x // block_px : (x + tile_px) // block_px
                ]
                if not cells.any():
                    continue
            tiles.append((x, y))

    parts = []
    for start in range(0, len(tiles), batch_size):
        batch_origins = tiles[start : start + batch_size]
        batch = np.full((len(batch_origins), tile_px, tile_px, 3), detector.padding_rgb, dtype=np.uint8)
        for i, (x, y) in enumerate(batch_origins):
            tile = rgb[y : y + tile_px, x : x + tile_px]
            batch[i, : tile.shape[0], : tile.shape[1]] = tile
        for (x, y), found in zip(batch_origins, detector.detect(batch)):
            low_x, low_y = (x + half if x > 0 else 0), (y + half if y > 0 else 0)
            high_x = x + tile_px - half if x + tile_px < width else width
            high_y = y + tile_px - half if y + tile_px < height else height
            image_xy = found.xy + np.array([x, y])
            owned = (
                (image_xy[:, 0] >= low_x)
                & (image_xy[:, 0] < high_x)
                & (image_xy[:, 1] >= low_y)
                & (image_xy[:, 1] < high_y)
            )
            parts.append(found.select(owned).translate(x, y))
    return Detections.concatenate(parts, tuple(detector.class_names))


def _candidate_rows(
    image: str,
    source: str,
    xy: NDArray[np.floating],
    scores: NDArray[np.floating],
    features: NDArray[np.float64],
) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "image": [image] * len(xy),
            "x": np.asarray(xy, dtype=np.float64).reshape(-1, 2)[:, 0],
            "y": np.asarray(xy, dtype=np.float64).reshape(-1, 2)[:, 1],
            "score": np.asarray(scores, dtype=np.float64),
            "source": source,
        }
    )
    for j, name in enumerate(FEATURE_NAMES):
        table[name] = features[:, j] if len(features) else np.zeros(0)
    return table


def _concat_candidates(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Join candidate tables; an empty list gives an empty table with the candidate columns."""
    if not tables:
        return _candidate_rows("", "image", np.zeros((0, 2)), np.zeros(0), np.zeros((0, len(FEATURE_NAMES))))
    return pd.concat(tables, ignore_index=True)


def _check_detector_mpp(detector: TileDetector) -> None:
    if abs(detector.mpp - MODEL_MPP) > 0.02 * MODEL_MPP:
        raise MidogError(
            f"the detector was trained at {detector.mpp} µm/px, but crops and tissue are at "
            f"{MODEL_MPP} µm/px; use a model exported from the crop canvases"
        )


# ---------------------------------------------------------------------------
# The default model's training data: crops and tissue
# ---------------------------------------------------------------------------


def _paste_centred(crop: NDArray[np.uint8], background: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Paste a crop at ``CROP_ORIGIN_PX`` of a ``CROP_CANVAS_PX`` background with a feathered border."""
    origin = CROP_ORIGIN_PX
    coords = np.arange(CROP_SIZE_PX, dtype=np.float32)
    ramp = np.clip(np.minimum(coords, CROP_SIZE_PX - 1 - coords) / CROP_FEATHER_PX, 0.0, 1.0)
    # Black border padding of some crops is not tissue, so the background shows there.
    valid = (crop.max(axis=-1) > 2).astype(np.float32)
    alpha = (np.minimum(ramp[None, :], ramp[:, None]) * valid)[..., None]
    canvas = background.astype(np.float32)
    region = canvas[origin : origin + CROP_SIZE_PX, origin : origin + CROP_SIZE_PX]
    region[:] = alpha * crop + (1 - alpha) * region
    return np.clip(canvas, 0, 255).astype(np.uint8)


def mine_training_crops(
    detector: TileDetector,
    records: Sequence[CropRecord],
    crops_dir: str | Path,
    tissue_sources: Sequence[TissueSource],
    config: MiningConfig,
    progress: bool = True,
) -> pd.DataFrame:
    """Collect off-centre detections in training crops pasted on training tissue.

    Each crop is pasted, with its own stain and a feathered border, at the
    centre of a ``CROP_CANVAS_PX`` window of training tissue (seeded by
    ``config.seed`` and the crop's position in ``records``). Detections whose
    centre lies on the crop's own pixels (not its black padding) and farther
    than ``config.radius_um`` from the crop centre are candidates. Detections
    on the surrounding tissue are left to ``mine_tissue``.

    Args:
        detector: the model at 0.25 µm/px.
        records: training crops only (``split_crops(...)["train"]``).
        crops_dir: the ``mf_crops`` folder; ``image`` is written relative to it.
        tissue_sources: training tissue (``load_tissue_sources(root, "train")``).
        config: mining settings.
        progress: show a progress bar.

    Returns:
        Candidate table: ``image`` (crop path relative to ``crops_dir``),
        ``x``, ``y`` (crop px, centre of the crop at 64, 64), ``score``,
        ``source`` ("crop") and ``FEATURE_NAMES`` measured on the canvas.
    """
    _check_detector_mpp(detector)
    crops_dir = Path(crops_dir)
    radius_px = px_from_um(config.radius_um, MODEL_MPP)
    centre = np.array([CROP_SIZE_PX / 2, CROP_SIZE_PX / 2])
    tables: list[pd.DataFrame] = []
    bar = tqdm(total=len(records), desc="mine crops", unit="crop", disable=not progress)
    for start in range(0, len(records), config.batch_size):
        batch_records = records[start : start + config.batch_size]
        canvases, crops = [], []
        for offset, record in enumerate(batch_records):
            rng = np.random.default_rng((config.seed, start + offset))
            source = tissue_sources[int(rng.integers(len(tissue_sources)))]
            crop = load_rgb(record.path)
            canvases.append(_paste_centred(crop, source.sample_window(CROP_CANVAS_PX, rng, min_tissue=0.9)))
            crops.append(crop)
        for record, crop, canvas, found in zip(
            batch_records, crops, canvases, detector.detect(np.stack(canvases))
        ):
            crop_xy = found.xy - CROP_ORIGIN_PX
            inside = np.all((crop_xy >= 0) & (crop_xy < CROP_SIZE_PX), axis=1)
            mask = inside & candidate_mask(
                crop_xy, found.scores, centre[None], config.score_thresh, radius_px
            )
            if mask.any():
                pixels = np.floor(crop_xy[mask]).astype(int)
                on_crop = crop[pixels[:, 1], pixels[:, 0]].max(axis=-1) > 2
                rows = np.flatnonzero(mask)[on_crop]
                features = describe_candidates(canvas, found.xy[rows])
                name = record.path.relative_to(crops_dir).as_posix()
                tables.append(_candidate_rows(name, "crop", crop_xy[rows], found.scores[rows], features))
        bar.update(len(batch_records))
    bar.close()
    table = _concat_candidates(tables)
    logger.info("training crops: %d candidates in %d crops", len(table), len(records))
    return table


def mine_tissue(
    detector: TileDetector,
    tissue_sources: Sequence[TissueSource],
    config: MiningConfig,
    progress: bool = True,
) -> pd.DataFrame:
    """Collect every detection at or above the threshold in training tissue.

    The tissue has no labels, so every detection is a candidate, although a
    real, unlabelled mitotic figure may be among them. That is why
    ``undersample_clusters`` keeps a random draw, not the highest scores.

    Args:
        detector: the model at 0.25 µm/px.
        tissue_sources: training tissue only (``load_tissue_sources(root, "train")``).
        config: mining settings.
        progress: show a progress bar.

    Returns:
        Candidate table: ``image`` (tissue source name), ``x``, ``y`` (px of
        the source at 0.25 µm/px), ``score``, ``source`` ("tissue") and
        ``FEATURE_NAMES``.
    """
    _check_detector_mpp(detector)
    tables: list[pd.DataFrame] = []
    for source in tqdm(tissue_sources, desc="mine tissue", unit="source", disable=not progress):
        found = detect_large_image(
            detector, source.rgb, tissue_mask=source.tissue_mask, batch_size=config.batch_size
        )
        keep = found.scores >= config.score_thresh
        features = describe_candidates(source.rgb, found.xy[keep])
        tables.append(_candidate_rows(source.name, "tissue", found.xy[keep], found.scores[keep], features))
        logger.info("training tissue %s: %d candidates", source.name, int(keep.sum()))
    return _concat_candidates(tables)


# ---------------------------------------------------------------------------
# Annotated images (MIDOG++ layout)
# ---------------------------------------------------------------------------


def read_image_at_mpp(path: Path, target_mpp: float, mpp: float | None) -> tuple[NDArray[np.uint8], float]:
    """Read a whole image resampled to ``target_mpp``.

    Args:
        path: the image file.
        target_mpp: µm/px to resample to; within 2% of the file's, no resampling.
        mpp: the image's µm/px where the file gives none.

    Returns:
        ``(rgb, l0_per_px)``: ``(H, W, 3)`` uint8 RGB and the level-0 px per px of ``rgb``.
    """
    from PIL import Image

    from midog.io.slide import open_slide

    with open_slide(path, mpp=mpp) as slide:
        width, height = slide.dimensions
        rgb = slide.read_region((0, 0), 0, (width, height))
        scale = slide.mpp / target_mpp
    if abs(scale - 1.0) > 0.02:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
        return rgb, 1.0 / scale
    return rgb, 1.0


def mine_annotated_images(
    detector: TileDetector,
    annotations: pd.DataFrame,
    images_dir: str | Path,
    images: Iterable[str],
    config: MiningConfig,
    image_mpp: float | None = None,
    figure_label: str = "mitotic figure",
    regions: Mapping[str, RegionSet] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Collect candidate false positives in annotated images.

    A detection at or above ``config.score_thresh`` is a candidate when it
    lies farther than ``config.radius_um`` from every annotated mitotic figure
    of its image and from every cell already labelled otherwise (an imposter
    is a hard negative already).

    Args:
        detector: the model.
        annotations: annotation table (``read_annotations``) with ``image``,
            ``x``, ``y`` (level-0 px) and ``label``.
        images_dir: folder with the image files.
        images: names of the images to mine (training images only).
        config: mining settings.
        image_mpp: µm/px of the images where their files give none.
        figure_label: label of the positives.
        regions: region polygons (necrosis, debris) per image name; a
            candidate inside one (border included) gets its class in the
            ``region`` column, and ``select_pseudo_negatives`` keeps it.
        progress: show a progress bar.

    Returns:
        Candidate table: ``image``, ``x``, ``y`` (level-0 px), ``score``,
        ``source`` ("image"), ``region`` (class name, "" outside regions)
        and ``FEATURE_NAMES``.

    Raises:
        AnnotationError: an image file is missing.
    """
    images_dir = Path(images_dir)
    tables: list[pd.DataFrame] = []
    names = list(images)
    for name in tqdm(names, desc="mine images", unit="image", disable=not progress):
        path = images_dir / name
        if not path.is_file():
            raise AnnotationError(f"image {path} listed in the annotations not found; check --images")
        rgb, l0_per_px = read_image_at_mpp(path, detector.mpp, image_mpp)
        found = detect_large_image(detector, rgb, batch_size=config.batch_size)
        cells = annotations[annotations["image"] == name]
        cell_xy = cells[["x", "y"]].to_numpy(dtype=np.float64) / l0_per_px
        radius_px = px_from_um(config.radius_um, detector.mpp)
        mask = candidate_mask(found.xy, found.scores, cell_xy, config.score_thresh, radius_px)
        num_figures = int((cells["label"] == figure_label).sum())
        features = describe_candidates(rgb, found.xy[mask], detector.mpp)
        l0_xy = found.xy[mask] * l0_per_px
        table = _candidate_rows(name, "image", l0_xy, found.scores[mask], features)
        table["region"] = ""
        if regions is not None and name in regions:
            classes = regions[name].class_of(l0_xy)
            table["region"] = [c or "" for c in classes]
        tables.append(table)
        logger.debug("%s: %d candidates, %d figures", name, int(mask.sum()), num_figures)
    table = _concat_candidates(tables)
    table["region"] = table["region"].fillna("") if "region" in table.columns else ""
    return table


def mine_crop_canvases(
    detector: TileDetector,
    data_dir: str | Path,
    config: MiningConfig,
    round_index: int,
    max_crops: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Mine one round on the default model's training data: training crops and training tissue.

    Args:
        detector: the model at 0.25 µm/px.
        data_dir: the real data folder (``mf_crops``, ``slides``, ``tiles``).
        config: mining settings; the positives are the training crops.
        round_index: mining round, written to the ``round`` column.
        max_crops: mine at most this many training crops (evenly spaced), for
            quick checks; the positives count stays the full training split.
        progress: show progress bars.

    Returns:
        Every candidate with ``cluster``, ``round``, ``label`` and ``kept``
        (see ``select_pseudo_negatives``).
    """
    from midog.training.crops import list_crops, load_tissue_sources, split_crops

    data_dir = Path(data_dir)
    records = split_crops(list_crops(data_dir / "mf_crops"))["train"]
    num_positives = len(records)
    if max_crops is not None and len(records) > max_crops:
        records = [records[i] for i in np.linspace(0, len(records) - 1, max_crops).astype(int)]
    tissue = load_tissue_sources(data_dir, "train")
    crop_candidates = mine_training_crops(detector, records, data_dir / "mf_crops", tissue, config, progress)
    tissue_candidates = mine_tissue(detector, tissue, config, progress)
    candidates = pd.concat([crop_candidates, tissue_candidates], ignore_index=True)
    return select_pseudo_negatives(candidates, num_positives, config, round_index)


# ---------------------------------------------------------------------------
# Region-guided patches
# ---------------------------------------------------------------------------


class RegionGuidedSampler:
    """Wrap a ``PatchSampler`` so that a share of patches is centred inside annotated regions.

    Item ``i`` is a region patch when a generator seeded with ``(seed, i, 1)``
    draws below ``region_share``. Its image is chosen by region area, and a
    point drawn uniformly from that image's regions (``sample_points_in_regions``)
    is the patch centre. Other items are the
    wrapped sampler's. The wrapper has the wrapped sampler's ``choose``,
    ``cells`` and ``__len__``, so it can replace ``MidogppPatchDataset.sampler``.

    Args:
        sampler: the ``midog.training.sampling.PatchSampler`` to wrap.
        regions: region polygons per image name; images the sampler does not
            know and regions without area are ignored.
        region_share: share of items drawn inside regions, in [0, 1].
        seed: seed of the region draws.

    Raises:
        MidogError: ``region_share`` is outside [0, 1], or it is positive and
            no region of a known image has an area.
    """

    def __init__(
        self, sampler: Any, regions: Mapping[str, RegionSet], region_share: float, seed: int = 0
    ) -> None:
        if not 0.0 <= region_share <= 1.0:
            raise MidogError(f"region_share must be in [0, 1], got {region_share}")
        self.sampler = sampler
        self.region_share = float(region_share)
        self.seed = int(seed)
        row_of_image = {name: row for row, name in enumerate(sampler.image_names)}
        self._regions = [
            (row_of_image[name], r) for name, r in regions.items() if name in row_of_image and r.area_px > 0
        ]
        areas = np.array([r.area_px for _, r in self._regions], dtype=np.float64)
        if self.region_share > 0 and not len(areas):
            raise MidogError(
                f"region_share is {region_share} but none of the {len(regions)} region sets belongs to an "
                "image of the sampler or has an area; check the region files' image names"
            )
        self._cumulative = np.cumsum(areas / areas.sum()) if len(areas) else areas
        logger.info(
            "region-guided patches: %.0f%% of items inside %d regions of %d images",
            100 * self.region_share,
            sum(len(r) for _, r in self._regions),
            len(self._regions),
        )

    def __len__(self) -> int:
        return len(self.sampler)

    def cells(self, image_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the wrapped sampler's cells of one image."""
        return self.sampler.cells(image_index)

    def choose(self, index: int) -> Any:
        """Draw the patch of item ``index``: inside a region, or the wrapped sampler's choice."""
        from midog.training.sampling import PatchChoice

        rng = np.random.default_rng((self.seed, int(index), 1))
        if not len(self._cumulative) or rng.random() >= self.region_share:
            return self.sampler.choose(index)
        pick = min(int(np.searchsorted(self._cumulative, rng.random(), side="right")), len(self._regions) - 1)
        row, regions = self._regions[pick]
        (point,) = sample_points_in_regions(regions, 1, rng)
        patch_width, patch_height = self.sampler.patch_size_px
        l0_x = math.floor(point[0] + 0.5) - patch_width // 2
        l0_y = math.floor(point[1] + 0.5) - patch_height // 2
        return PatchChoice(
            index=int(index),
            # NOTE: PatchKind lists no "region" kind and the image's domain is not kept by the
            # sampler; the patch dataset only passes both on as metadata.
            domain="region",
            kind="region",  # type: ignore[arg-type]
            image_index=row,
            image=self.sampler.image_names[row],
            l0_xy=(l0_x, l0_y),
            l0_target_xy=(float(point[0]), float(point[1])),
        )
