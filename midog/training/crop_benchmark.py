"""Measure a detector on held-out crops, tissue squares and same-stain control squares.

Each held-out unit (a crop with a figure at its centre, a 128 px square of
ordinary tissue, or a control square assembled from a crop's outer quadrants)
is pasted, with its real stain, at a seeded random position on a 256x256 px
canvas of held-out tissue, the way training canvases are built. The detector
runs on the canvases through the inference path (``TileDetector.detect``).

- A figure is found when a detection at or above the threshold lies within
  7.5 µm (30 px at 0.25 µm/px) of the crop centre.
- A false detection of a unit is any other detection at or above the
  threshold whose centre lies inside the pasted square.
- Background false detections are counted on the held-out tissue itself, per
  mm² of tissue.

The threshold is chosen on validation crops (never on the test crops) as the
one with the best F1 over figures and false detections of all unit kinds.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from midog.inference.detector import TileDetector
from midog.training.crops import (
    CROP_SIZE_PX,
    CanvasConfig,
    TissueSource,
    control_square,
    list_crops,
    load_rgb,
    load_tissue_sources,
    split_crops,
)

__all__ = ["UnitResult", "CropBenchmark", "run_units", "choose_threshold", "summarise", "benchmark_detector"]

logger = logging.getLogger(__name__)

CANVAS_PX = 256
MATCH_RADIUS_PX = 30.0  # 7.5 µm at 0.25 µm/px, the MIDOG hit radius
UNIT_KINDS = ("crop", "tissue", "control")


@dataclass
class UnitResult:
    """Detections of one pasted unit: scores of matched and unmatched detections inside it."""

    kind: str  # "crop", "tissue" or "control"
    best_hit_score: float  # highest score within the hit radius of the figure; 0 when none or no figure
    false_scores: np.ndarray  # scores of the other detections inside the pasted square


def _paste_units(
    units: list[tuple[str, np.ndarray]], tissue: list[TissueSource], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Paste each unit on its own held-out background; return canvases and unit origins ``(N, 2) x, y``."""
    rng = np.random.default_rng(seed)
    canvases = np.empty((len(units), CANVAS_PX, CANVAS_PX, 3), dtype=np.uint8)
    origins = np.empty((len(units), 2), dtype=np.int64)
    feather = CanvasConfig().feather_px  # the same border blending as in training, no stain jitter
    for i, (_, rgb) in enumerate(units):
        source = tissue[int(rng.integers(len(tissue)))]
        canvas = source.sample_window(CANVAS_PX, rng).astype(np.float32)
        x, y = (int(v) for v in rng.integers(0, CANVAS_PX - CROP_SIZE_PX + 1, size=2))
        valid = (rgb.max(axis=-1) > 2).astype(np.float32)
        alpha = _feather(CROP_SIZE_PX, int(rng.integers(2, feather + 1))) * valid
        region = canvas[y : y + CROP_SIZE_PX, x : x + CROP_SIZE_PX]
        region[:] = alpha[..., None] * rgb + (1 - alpha[..., None]) * region
        canvases[i] = np.clip(canvas, 0, 255).astype(np.uint8)
        origins[i] = (x, y)
    return canvases, origins


def _feather(size_px: int, feather_px: int) -> np.ndarray:
    coords = np.arange(size_px, dtype=np.float32)
    edge = np.minimum(coords, size_px - 1 - coords)
    ramp = np.clip(edge / max(feather_px, 1), 0, 1)
    return np.minimum(ramp[None, :], ramp[:, None]).astype(np.float32)


def run_units(
    detector: TileDetector,
    units: list[tuple[str, np.ndarray]],
    tissue: list[TissueSource],
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> list[UnitResult]:
    """Paste units on held-out tissue, detect, and score each unit.

    Args:
        detector: the model, at 0.25 µm/px.
        units: ``(kind, (128, 128, 3) uint8 RGB)`` pairs; a "crop" has its figure at the centre.
        tissue: background sources.
        seed: seed of backgrounds and positions.
        batch_size: canvases per ``detect`` call.
        progress: show a progress bar.
    """
    canvases, origins = _paste_units(units, tissue, seed)
    results: list[UnitResult] = []
    for start in tqdm(range(0, len(units), batch_size), desc="benchmark", unit="batch", disable=not progress):
        batch = detector.detect(canvases[start : start + batch_size])
        for offset, detections in enumerate(batch):
            index = start + offset
            kind = units[index][0]
            x0, y0 = origins[index]
            inside = (
                (detections.xy[:, 0] >= x0)
                & (detections.xy[:, 0] < x0 + CROP_SIZE_PX)
                & (detections.xy[:, 1] >= y0)
                & (detections.xy[:, 1] < y0 + CROP_SIZE_PX)
            )
            scores = detections.scores
            hit = np.zeros(len(scores), dtype=bool)
            if kind == "crop":
                centre = np.array([x0 + CROP_SIZE_PX / 2, y0 + CROP_SIZE_PX / 2])
                near = np.linalg.norm(detections.xy - centre, axis=1) <= MATCH_RADIUS_PX
                if near.any():
                    # The best-scoring detection near the centre is the hit; others near it are false.
                    best = np.flatnonzero(near)[np.argmax(scores[near])]
                    hit[best] = True
            best_hit = float(scores[hit].max()) if hit.any() else 0.0
            results.append(UnitResult(kind, best_hit, scores[inside & ~hit].astype(np.float32)))
    return results


def summarise(results: list[UnitResult], threshold: float) -> dict[str, float]:
    """Return recall and false detections per unit of each kind at ``threshold``."""
    summary: dict[str, float] = {"threshold": float(threshold)}
    crops = [r for r in results if r.kind == "crop"]
    if crops:
        summary["recall"] = float(np.mean([r.best_hit_score >= threshold for r in crops]))
    for kind in UNIT_KINDS:
        of_kind = [r for r in results if r.kind == kind]
        if of_kind:
            summary[f"false_per_{kind}"] = float(np.mean([(r.false_scores >= threshold).sum() for r in of_kind]))
            summary[f"num_{kind}"] = len(of_kind)
    return summary


def choose_threshold(results: list[UnitResult], candidates: np.ndarray | None = None) -> float:
    """Return the threshold with the best F1 over figures and false detections of all units."""
    candidates = np.round(np.arange(0.05, 0.951, 0.01), 2) if candidates is None else candidates
    hits = np.array([r.best_hit_score for r in results if r.kind == "crop"])
    false_scores = np.concatenate([r.false_scores for r in results] + [np.zeros(0, np.float32)])
    best_threshold, best_f1 = float(candidates[0]), -1.0
    for threshold in candidates:
        tp = int((hits >= threshold).sum())
        fn = len(hits) - tp
        fp = int((false_scores >= threshold).sum())
        f1 = 2 * tp / max(2 * tp + fp + fn, 1)
        if f1 > best_f1 + 1e-12:
            best_threshold, best_f1 = float(threshold), f1
    return best_threshold


def background_false_per_mm2(
    detector: TileDetector, tissue: list[TissueSource], threshold: float, mpp: float = 0.25, tile_px: int = 512
) -> dict[str, float]:
    """Count detections at or above ``threshold`` on held-out tissue without pasted figures.

    Any detection there is counted as false, although real tissue may hold an
    unlabelled mitotic figure, so this is an upper bound.
    """
    detections, area_px = 0, 0
    for source in tissue:
        height, width = source.rgb.shape[:2]
        for y in range(0, height - 63, tile_px):
            for x in range(0, width - 63, tile_px):
                tile = source.rgb[y : y + tile_px, x : x + tile_px]
                cells = source.tissue_mask[y // 32 : (y + tile.shape[0]) // 32, x // 32 : (x + tile.shape[1]) // 32]
                area_px += int(cells.sum()) * 32 * 32
                if not cells.any():
                    continue
                (found,) = detector.detect(np.ascontiguousarray(tile[None]))
                detections += int((found.scores >= threshold).sum())
    area_mm2 = area_px * (mpp / 1000) ** 2
    return {"tissue_mm2": area_mm2, "false_detections": detections, "false_per_mm2": detections / max(area_mm2, 1e-9)}


@dataclass
class CropBenchmark:
    """The figures of a benchmark run, as written to the model card."""

    threshold: float
    val: dict[str, float]
    test: dict[str, float]
    background: dict[str, float]

    def as_dict(self) -> dict:
        return asdict(self)


def _units(crops: list[np.ndarray], tissue: list[TissueSource], seed: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    units: list[tuple[str, np.ndarray]] = [("crop", crop) for crop in crops]
    units += [("control", control_square(crop)) for crop in crops]
    for _ in crops:
        source = tissue[int(rng.integers(len(tissue)))]
        units.append(("tissue", np.ascontiguousarray(source.sample_window(CROP_SIZE_PX, rng, min_tissue=0.9))))
    return units


def benchmark_detector(
    detector: TileDetector,
    data_dir: str | Path,
    threshold: float | None = None,
    max_crops: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> CropBenchmark:
    """Run the held-out benchmark.

    Args:
        detector: the model to measure.
        data_dir: the real data folder (``mf_crops``, ``slides``, ``tiles``).
        threshold: score threshold; chosen on the validation crops when None.
        max_crops: use at most this many crops of each split (evenly spaced), for quick checks.
        seed: seed of backgrounds, positions and tissue squares.
        progress: show progress bars.
    """
    data_dir = Path(data_dir)
    splits = split_crops(list_crops(data_dir / "mf_crops"))

    def load(records) -> list[np.ndarray]:
        if max_crops is not None and len(records) > max_crops:
            records = [records[i] for i in np.linspace(0, len(records) - 1, max_crops).astype(int)]
        return [load_rgb(r.path) for r in records]

    train_tissue = load_tissue_sources(data_dir, "train")
    test_tissue = load_tissue_sources(data_dir, "test")
    val_results = run_units(detector, _units(load(splits["val"]), train_tissue, seed), train_tissue, seed, progress=progress)
    if threshold is None:
        threshold = choose_threshold(val_results)
        logger.info("threshold chosen on %d validation crops: %.2f", len(splits["val"]), threshold)
    test_results = run_units(
        detector, _units(load(splits["test"]), test_tissue, seed + 1), test_tissue, seed + 1, progress=progress
    )
    return CropBenchmark(
        threshold=threshold,
        val=summarise(val_results, threshold),
        test=summarise(test_results, threshold),
        background=background_false_per_mm2(detector, test_tissue, threshold),
    )

