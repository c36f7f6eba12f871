"""Whole-slide inference: tissue mask, tiles, detector, seam merging, outputs.

``detect_slide`` runs one slide end to end:

1. Check that the output folder is writable, before any pixel is read.
2. Open the slide and read a thumbnail; its tissue mask decides which tiles
   are read and gives the tissue area.
3. Lay a grid of ``tile_size_px`` model px tiles with ``overlap_px`` overlap
   over the slide's bounds, at the detector's µm/px.
4. Start the progress journal ``<stem>.journal.jsonl``, or with ``resume``
   continue the one an interrupted run left (``midog.inference.resume``).
5. Read each tile with tissue that the journal lacks, in reader threads or
   worker processes that run ahead of the detector
   (``midog.inference.pipeline``): resample it to the detector's µm/px,
   paint pixels outside the bounds with the detector's padding colour, and
   run the detector in batches. Each finished batch is appended to the
   journal, so memory does not grow with the slide while tiles are detected.
   Steps 6 and 7 hold every candidate of the slide at once, as numpy arrays
   of about 30 bytes a candidate, and the writers stream them to disk.
6. Read the journal back, map detections to level 0, keep each tile's own
   (away from its inner borders), merge duplicates at the seams, and drop
   detections centred outside the bounds.
7. Write the CSV, QuPath GeoJSON, MIDOG JSON and, last, the summary, each
   atomically, then remove the journal. A slide's outputs are complete when
   its summary exists and its journal does not.

Only numpy, PIL, OpenSlide and the detector run here; torch and mmdet are
never imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from midog import __version__
from midog.errors import AnnotationError, OutputError, SlideReadError
from midog.inference.detector import TileDetector
from midog.inference.merge import MERGE_RADIUS_UM, drop_outside_bounds, keep_owned, suppress_duplicates
from midog.inference.pipeline import (
    DEFAULT_READ_THREADS,
    BatchPrefetcher,
    TileBatch,
    iter_batches,
    iter_tile_images,
    read_tile,
)
from midog.inference.resume import ResumeError, RunJournal, file_sha256, journal_path, settings_differences
from midog.inference.tiling import L0Rect, Tile, TileGrid, make_tile_grid, ownership_rects, plan_read
from midog.inference.tissue import (
    restrict_to_l0_rect,
    thumbnail_size_px,
    tiles_with_tissue,
    tissue_area_mm2,
    tissue_mask,
)
from midog.io.slide import SlideReader, open_slide
from midog.io.writers import (
    atomic_output,
    read_midog_json,
    write_detections_csv,
    write_midog_json,
    write_qupath_geojson,
)
from midog.structures import Detections

__all__ = [
    "SlideOutputs",
    "SlideResult",
    "SlidePlan",
    "check_output_dir",
    "plan_slide",
    "slide_outputs",
    "write_summary",
    "read_tile",
    "detect_slide",
    "detect_open_slide",
]

logger = logging.getLogger(__name__)

# With progress bars off, a progress line is logged at most this often.
PROGRESS_LOG_INTERVAL_S = 60.0

# Smallest tile the runner accepts, in model px: one stride of RTMDet's
# coarsest feature map.
MIN_TILE_SIZE_PX = 32


@dataclass(frozen=True)
class SlideOutputs:
    """Paths of the files written for one slide.

    Attributes:
        csv: ``<stem>.csv``, figures at or above the threshold.
        geojson: ``<stem>.geojson``, the same figures as QuPath point detections.
        midog_json: ``<stem>.mitotic-figures.json``, every candidate in the
            MIDOG challenge format, named by the threshold.
        summary: ``<stem>.summary.json``, counts, areas, settings and timing.
    """

    csv: Path
    geojson: Path
    midog_json: Path
    summary: Path


@dataclass(frozen=True)
class SlideResult:
    """The result of ``detect_slide`` for one slide.

    Attributes:
        slide_path: the slide file.
        mpp: level-0 µm/px used.
        threshold: score at or above which a candidate is a mitotic figure.
        num_figures: candidates with score at or above ``threshold``.
        candidates: every candidate scoring at least the detector's
            ``min_score``, ``xy`` in level-0 px, by descending score.
        tissue_area_mm2: tissue area inside the slide bounds in mm².
        figures_per_mm2: ``num_figures / tissue_area_mm2``; None when no tissue
            was found.
        seconds: wall time of the whole run, outputs included.
        num_tiles: tiles in the grid over the slide bounds.
        num_tiles_read: tiles with tissue, read and passed to the detector.
        outputs: the files written.
    """

    slide_path: Path
    mpp: float
    threshold: float
    num_figures: int
    candidates: Detections
    tissue_area_mm2: float
    figures_per_mm2: float | None
    seconds: float
    num_tiles: int
    num_tiles_read: int
    outputs: SlideOutputs

    @property
    def figures(self) -> Detections:
        """Candidates with score at or above ``threshold``."""
        return self.candidates.select(self.candidates.scores >= self.threshold)


def check_output_dir(output_dir: str | Path) -> Path:
    """Create the output folder if needed and check that files can be created in it.

    Args:
        output_dir: folder for the outputs.

    Returns:
        The folder as a ``Path``.

    Raises:
        OutputError: the folder cannot be created, is a file, or is not writable.
    """
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise OutputError(
            f"Output path {output_dir} exists and is not a folder; pass another --output"
        ) from exc
    except OSError as exc:
        raise OutputError(
            f"Cannot create output folder {output_dir}: {exc.strerror}; pass another --output"
        ) from exc
    try:
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".midog-write-check-"):
            pass
    except OSError as exc:
        raise OutputError(
            f"Output folder {output_dir} is not writable: {exc.strerror}; pass another --output"
        ) from exc
    return output_dir


def slide_outputs(output_dir: str | Path, slide_path: str | Path) -> SlideOutputs:
    """Return the output paths for a slide: ``<output_dir>/<slide stem>.<suffix>``."""
    output_dir = Path(output_dir)
    stem = Path(slide_path).stem
    return SlideOutputs(
        csv=output_dir / f"{stem}.csv",
        geojson=output_dir / f"{stem}.geojson",
        midog_json=output_dir / f"{stem}.mitotic-figures.json",
        summary=output_dir / f"{stem}.summary.json",
    )


@dataclass(frozen=True)
class SlidePlan:
    """The tissue mask's and the tile grid's decisions for one slide.

    Attributes:
        l0_bounds: ``(x, y, width, height)`` in level-0 px of the region with image data.
        mask_mpp: µm/px of the tissue mask.
        tissue_area_mm2: tissue area inside the bounds in mm².
        grid: the tile grid over the bounds.
        selected: ``(len(grid.tiles),)`` bool, tiles with tissue.
        tiles: the selected tiles, in grid order.
        rects: ``(len(grid.tiles), 4)`` float64 ownership rectangles
            ``x0, y0, x1, y1`` in level-0 px (``ownership_rects``).
        l0_merge_radius: seam-merge radius in level-0 px.
    """

    l0_bounds: L0Rect
    mask_mpp: float
    tissue_area_mm2: float
    grid: TileGrid
    selected: np.ndarray
    tiles: list[Tile]
    rects: np.ndarray
    l0_merge_radius: float


@dataclass
class _DetectTiming:
    """Seconds spent by the detector and waiting for tiles, in this process."""

    detect_seconds: float = 0.0
    read_wait_seconds: float = 0.0
    num_tiles_detected: int = 0


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Write a slide summary as indented JSON, atomically."""
    with atomic_output(path) as temporary_path:
        temporary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def _validate_settings(
    tile_size_px: int,
    overlap_px: int,
    batch_size: int,
    workers: int,
    read_threads: int,
    threshold: float | None,
) -> None:
    if tile_size_px < MIN_TILE_SIZE_PX:
        raise ValueError(f"tile size must be at least {MIN_TILE_SIZE_PX} px, got {tile_size_px}")
    if not 0 <= overlap_px <= tile_size_px // 2:
        raise ValueError(
            f"overlap must be in [0, {tile_size_px // 2}] px for {tile_size_px} px tiles, got {overlap_px}"
        )
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be 0 (read in this process) or more, got {workers}")
    if read_threads < 0:
        raise ValueError(
            f"read threads must be 0 (read in the detector's thread) or more, got {read_threads}"
        )
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")


def plan_slide(slide: SlideReader, model_mpp: float, tile_size_px: int, overlap_px: int) -> SlidePlan:
    """Make the tissue mask and the tile grid, and pick the tiles to read, as ``detect_slide`` does.

    Args:
        slide: the open slide.
        model_mpp: µm/px the tiles are resampled to.
        tile_size_px: tile width and height in model px.
        overlap_px: overlap of neighbouring tiles in model px.

    Returns:
        The plan.

    Raises:
        SlideReadError: reading the thumbnail failed.
    """
    l0_x, l0_y, l0_width, l0_height = (int(v) for v in slide.bounds)
    bounds = (l0_x, l0_y, l0_width, l0_height)

    # Tissue mask from a thumbnail of the whole plane.
    thumbnail, l0_per_mask_px = slide.read_thumbnail(thumbnail_size_px(slide.dimensions, slide.mpp))
    mask_mpp = slide.mpp * l0_per_mask_px
    mask = restrict_to_l0_rect(tissue_mask(thumbnail, mask_mpp), bounds, l0_per_mask_px)

    # Tile grid over the bounds at the detector's µm/px.
    level = slide.best_level_for_mpp(model_mpp)
    read_plan = plan_read(
        slide.mpp, model_mpp, level, slide.level_downsamples[level], tile_size_px, overlap_px
    )
    grid = make_tile_grid(bounds, read_plan)
    selected = tiles_with_tissue(grid, mask, l0_per_mask_px)

    # Each tile keeps its own detections; see ``ownership_rects``.
    l0_merge_radius = MERGE_RADIUS_UM / slide.mpp
    l0_margin = min(l0_merge_radius, overlap_px * read_plan.l0_per_tile_px / 4)
    return SlidePlan(
        l0_bounds=bounds,
        mask_mpp=mask_mpp,
        tissue_area_mm2=tissue_area_mm2(mask, mask_mpp),
        grid=grid,
        selected=selected,
        tiles=[tile for tile in grid.tiles if selected[tile.index]],
        rects=ownership_rects(grid, selected, l0_margin),
        l0_merge_radius=l0_merge_radius,
    )


def _detector_identity(detector: TileDetector) -> dict[str, Any]:
    """Describe the detector: class, settings and, for a model file, its SHA-256."""
    identity: dict[str, Any] = {
        "detector": f"{type(detector).__module__}.{type(detector).__qualname__}",
        "model_mpp": float(detector.mpp),
        "min_score": float(detector.min_score),
        "class_names": list(detector.class_names),
        "padding_rgb": [int(v) for v in detector.padding_rgb],
    }
    model_path = getattr(detector, "model_path", None)
    if model_path is not None:
        identity["model_file"] = Path(model_path).name
        identity["model_sha256"] = file_sha256(model_path)
    return identity


def _run_settings(slide: SlideReader, detector: TileDetector, plan: SlidePlan) -> dict[str, Any]:
    """Return the settings that decide a run's per-tile detections, as stored in its journal and summary.

    Two runs with equal settings read the same tiles and, with a
    deterministic detector, get the same detections for them. The score
    threshold, batch size and reader counts are not among them: the
    threshold is applied after all tiles are done, and the others do not
    change what a tile yields.

    Returns:
        A JSON-compatible dict: slide identity (file name, size in bytes,
        dimensions, µm/px, bounds), the tile grid (read level, scale, count
        and a hash of the tiles with tissue), the detector's identity and the
        midog version.
    """
    read_plan = plan.grid.plan
    tiles_read = np.flatnonzero(plan.selected).astype(np.int64)
    settings = {
        "midog_version": __version__,
        "slide_name": slide.path.name,
        "slide_size_bytes": slide.path.stat().st_size if slide.path.is_file() else None,
        "slide_dimensions": list(slide.dimensions),
        "slide_mpp": float(slide.mpp),
        "l0_bounds": list(plan.l0_bounds),
        "read_level": read_plan.level,
        "l0_per_tile_px": read_plan.l0_per_tile_px,
        "tile_size_px": read_plan.tile_size_px,
        "overlap_px": read_plan.overlap_px,
        "num_tiles": len(plan.grid.tiles),
        "tiles_read_sha256": hashlib.sha256(tiles_read.tobytes()).hexdigest(),
        **_detector_identity(detector),
    }
    # The JSON round trip turns tuples into lists, as a journal read back has them.
    return json.loads(json.dumps(settings))


def _finished_result(
    slide: SlideReader,
    detector: TileDetector,
    outputs: SlideOutputs,
    settings: dict[str, Any],
    threshold: float,
) -> SlideResult | None:
    """Return the result of an earlier, finished run of the same settings, or None when there is none.

    Raises:
        ResumeError: the finished outputs were written with other settings or threshold.
    """
    try:
        summary = json.loads(outputs.summary.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning(
            "Slide %s: cannot read %s (%s), so the slide is run again", slide.path, outputs.summary, exc
        )
        return None

    recorded = dict(summary.get("run_settings", {}))
    recorded["threshold"] = summary.get("threshold")
    differences = settings_differences(recorded, {**settings, "threshold": threshold})
    if differences:
        raise ResumeError(
            f"Cannot resume {slide.path.name}: its finished outputs in {outputs.summary.parent} were written "
            f"with other settings ({'; '.join(differences)}); run without --resume to overwrite them"
        )
    try:
        points = read_midog_json(outputs.midog_json, slide.mpp)
    except AnnotationError as exc:
        logger.warning("Slide %s: %s, so the slide is run again", slide.path, exc)
        return None

    # NOTE: the MIDOG JSON lists candidates of the "mitotic figure" class only,
    # so for a detector with more classes the rebuilt candidates lack the others.
    class_names = tuple(detector.class_names)
    label = class_names.index("mitotic figure") if "mitotic figure" in class_names else 0
    candidates = Detections(points.xy, points.scores, np.full(len(points), label), class_names)
    logger.info(
        "Slide %s: finished by an earlier run with the same settings, outputs in %s",
        slide.path,
        outputs.summary.parent,
    )
    return SlideResult(
        slide_path=slide.path,
        mpp=slide.mpp,
        threshold=threshold,
        num_figures=int(summary["num_figures"]),
        candidates=candidates,
        tissue_area_mm2=float(summary["tissue_area_mm2"]),
        figures_per_mm2=summary["figures_per_mm2"],
        seconds=float(summary["seconds"]),
        num_tiles=int(summary["num_tiles"]),
        num_tiles_read=int(summary["num_tiles_read"]),
        outputs=outputs,
    )


def _open_journal(
    path: Path, outputs: SlideOutputs, settings: dict[str, Any], resume: bool, slide: SlideReader
) -> RunJournal:
    """Continue the journal at ``path`` when resuming, else start a new one."""
    if resume and path.exists():
        journal = RunJournal.resume(path, settings, slide.path.name)
        logger.info(
            "Slide %s: resuming from %s, %d tiles already done", slide.path, path, len(journal.finished_tiles)
        )
        return journal
    if path.exists():
        logger.warning(
            "Slide %s: starting over, replacing the journal %s of an unfinished run (--resume continues it)",
            slide.path,
            path,
        )
    journal = RunJournal.start(path, settings)
    # An earlier run's summary would mark the outputs complete while this run is unfinished.
    outputs.summary.unlink(missing_ok=True)
    return journal


def _detect_tiles(
    slide: SlideReader,
    detector: TileDetector,
    plan: SlidePlan,
    journal: RunJournal,
    padding_rgb: tuple[int, int, int],
    *,
    batch_size: int,
    read_threads: int,
    workers: int,
    start_method: str | None,
    progress: bool,
) -> _DetectTiming:
    """Detect in the tiles the journal lacks and append each finished batch to it."""
    todo = [tile for tile in plan.tiles if tile.index not in journal.finished_tiles]
    timing = _DetectTiming()

    def make_images() -> Iterator[tuple[Tile, np.ndarray]]:
        return iter_tile_images(
            slide,
            plan.grid,
            todo,
            padding_rgb,
            read_threads=read_threads,
            workers=workers,
            start_method=start_method,
            min_pending=batch_size,
        )

    batches: contextlib.AbstractContextManager[Iterator[TileBatch]]
    if read_threads == 0 and workers == 0:
        batches = contextlib.closing(iter_batches(make_images(), batch_size))
    else:
        batches = BatchPrefetcher(make_images, batch_size)

    last_log = time.perf_counter()
    total = len(plan.tiles)
    with (
        batches as batch_iterable,
        tqdm(
            total=total, initial=total - len(todo), desc=slide.path.name, unit="tile", disable=not progress
        ) as bar,
    ):
        batch_iterator = iter(batch_iterable)
        while True:
            wait_started = time.perf_counter()
            batch = next(batch_iterator, None)
            timing.read_wait_seconds += time.perf_counter() - wait_started
            if batch is None:
                break

            detect_started = time.perf_counter()
            results = detector.detect(batch.images)
            timing.detect_seconds += time.perf_counter() - detect_started
            if len(results) != len(batch.tiles):
                raise ValueError(
                    f"detector returned {len(results)} results for a batch of {len(batch.tiles)} tiles"
                )
            journal.append([tile.index for tile in batch.tiles], results)
            timing.num_tiles_detected += len(batch.tiles)

            bar.update(len(batch.tiles))
            if not progress and time.perf_counter() - last_log >= PROGRESS_LOG_INTERVAL_S:
                last_log = time.perf_counter()
                logger.info("Slide %s: %d of %d tiles done", slide.path, bar.n, total)
    return timing


def _merge_journal(
    journal: RunJournal, plan: SlidePlan, class_names: tuple[str, ...]
) -> tuple[Detections, dict[str, int]]:
    """Map the journal's tile detections to level 0, keep each tile's own and merge the seams.

    Returns:
        The candidates inside the bounds, by descending score, and the counts
        at each step (``found``, ``owned``, ``merged``).
    """
    parts: list[Detections] = []
    num_found = 0
    l0_per_tile_px = plan.grid.plan.l0_per_tile_px
    for index, tile_detections in journal.iter_tiles(class_names):
        tile = plan.grid.tiles[index]
        num_found += len(tile_detections)
        if len(tile_detections) == 0:
            continue
        l0_detections = tile_detections.translate(tile.l0_x, tile.l0_y, scale=l0_per_tile_px)
        parts.append(keep_owned(l0_detections, plan.rects[index]))

    owned = Detections.concatenate(parts, class_names)
    merged = suppress_duplicates(owned, plan.l0_merge_radius)
    candidates = drop_outside_bounds(merged, plan.l0_bounds)
    return candidates, {"found": num_found, "owned": len(owned), "merged": len(merged)}


def detect_slide(
    slide_path: str | Path,
    detector: TileDetector,
    output_dir: str | Path,
    *,
    mpp: float | None = None,
    threshold: float | None = None,
    tile_size_px: int = 512,
    overlap_px: int = 64,
    batch_size: int = 8,
    workers: int = 0,
    read_threads: int = DEFAULT_READ_THREADS,
    resume: bool = False,
    progress: bool = True,
    start_method: str | None = None,
) -> SlideResult:
    """Find mitotic figures in a whole-slide image and write the outputs.

    Args:
        slide_path: the slide file.
        detector: the model; tiles are read at ``detector.mpp``.
        output_dir: folder for the outputs, created if missing.
        mpp: level-0 µm/px; overrides the file's resolution. Needed for files
            without one.
        threshold: score at or above which a candidate is a mitotic figure;
            None uses ``detector.score_thresh``.
        tile_size_px: tile width and height in model px.
        overlap_px: overlap of neighbouring tiles in model px, at most half a tile.
        batch_size: tiles per ``detector.detect`` call.
        workers: processes reading tiles; when 0, ``read_threads`` threads
            read them.
        read_threads: threads reading tiles ahead of the detector when
            ``workers`` is 0; 0 reads each batch in the detector's thread,
            with no overlap.
        resume: continue from the journal of an interrupted run with the same
            settings. Where the outputs of a finished run with the same
            settings and threshold exist instead, return its result without
            reading a tile. Without either, the slide is run from the start.
        progress: show a tqdm progress bar.
        start_method: multiprocessing start method for the workers ("fork",
            "spawn", "forkserver"); None uses the platform default.

    Returns:
        The result, with the paths of the files written.

    Raises:
        OutputError: ``output_dir`` is not writable (raised before the slide is
            opened) or an output or the journal could not be written.
        SlideOpenError: the slide cannot be opened.
        SlideResolutionError: the slide has no usable µm/px and ``mpp`` is None.
        SlideReadError: reading pixels failed; no output is written and the
            journal is removed, since a resume would fail at the same tile.
        ResumeError: ``resume`` is set and the journal or the finished outputs
            were written with other settings.
        ValueError: a setting is out of range.
    """
    started = time.perf_counter()
    _validate_settings(tile_size_px, overlap_px, batch_size, workers, read_threads, threshold)
    check_output_dir(output_dir)
    with open_slide(slide_path, mpp) as slide:
        return detect_open_slide(
            slide,
            detector,
            output_dir,
            threshold=threshold,
            tile_size_px=tile_size_px,
            overlap_px=overlap_px,
            batch_size=batch_size,
            workers=workers,
            read_threads=read_threads,
            resume=resume,
            progress=progress,
            start_method=start_method,
            started=started,
        )


def detect_open_slide(
    slide: SlideReader,
    detector: TileDetector,
    output_dir: str | Path,
    *,
    threshold: float | None = None,
    tile_size_px: int = 512,
    overlap_px: int = 64,
    batch_size: int = 8,
    workers: int = 0,
    read_threads: int = DEFAULT_READ_THREADS,
    resume: bool = False,
    progress: bool = True,
    start_method: str | None = None,
    started: float | None = None,
) -> SlideResult:
    """Run ``detect_slide`` on a slide that is already open.

    Args:
        slide: an open slide, or an object with the same attributes and
            methods; it must be safe to share between threads when
            ``read_threads > 0``, and picklable when ``workers > 0``.
        detector: the model.
        output_dir: folder for the outputs, created if missing.
        threshold: see ``detect_slide``.
        tile_size_px: see ``detect_slide``.
        overlap_px: see ``detect_slide``.
        batch_size: see ``detect_slide``.
        workers: see ``detect_slide``.
        read_threads: see ``detect_slide``.
        resume: see ``detect_slide``.
        progress: see ``detect_slide``.
        start_method: see ``detect_slide``.
        started: ``time.perf_counter()`` at the start of the run, so that
            ``seconds`` includes opening the slide; None starts the clock here.

    Returns:
        The result, with the paths of the files written.

    Raises:
        OutputError: ``output_dir`` is not writable, or an output or the
            journal could not be written.
        SlideReadError: reading pixels failed; no output is written.
        ResumeError: see ``detect_slide``.
        ValueError: a setting is out of range.
    """
    started = time.perf_counter() if started is None else started
    _validate_settings(tile_size_px, overlap_px, batch_size, workers, read_threads, threshold)
    output_dir = check_output_dir(output_dir)
    outputs = slide_outputs(output_dir, slide.path)
    threshold = float(detector.score_thresh if threshold is None else threshold)
    if threshold < detector.min_score:
        logger.warning(
            "Threshold %g is below the detector's lowest candidate score %g, so no candidate below %g exists",
            threshold,
            detector.min_score,
            detector.min_score,
        )
    if len(detector.padding_rgb) != 3:
        raise ValueError(f"detector padding_rgb must have three values, got {detector.padding_rgb!r}")
    red, green, blue = (int(v) for v in detector.padding_rgb)
    padding = (red, green, blue)

    plan = plan_slide(slide, detector.mpp, tile_size_px, overlap_px)
    read_plan = plan.grid.plan
    logger.info(
        "Slide %s: %.4g µm/px, bounds %s, tissue %.3f mm² (mask at %.3g µm/px); reading level %d "
        "(%.3g µm/px) resampled to %.3g µm/px; %d tiles of %d px, %d read, %d skipped as background",
        slide.path,
        slide.mpp,
        plan.l0_bounds,
        plan.tissue_area_mm2,
        plan.mask_mpp,
        read_plan.level,
        slide.mpp * read_plan.level_downsample,
        detector.mpp,
        len(plan.grid.tiles),
        tile_size_px,
        len(plan.tiles),
        len(plan.grid.tiles) - len(plan.tiles),
    )
    if not plan.tiles:
        logger.warning("Slide %s: no tissue found, so no tile was read and no figure is reported", slide.path)

    settings = _run_settings(slide, detector, plan)
    journal_file = journal_path(output_dir, slide.path)
    if resume and not journal_file.exists():
        finished = _finished_result(slide, detector, outputs, settings, threshold)
        if finished is not None:
            return finished

    with _open_journal(journal_file, outputs, settings, resume, slide) as journal:
        num_resumed = len(journal.finished_tiles)
        try:
            timing = _detect_tiles(
                slide,
                detector,
                plan,
                journal,
                padding,
                batch_size=batch_size,
                read_threads=read_threads,
                workers=workers,
                start_method=start_method,
                progress=progress,
            )
        except SlideReadError:
            # A resume would fail at the same tile, so nothing is kept.
            journal.remove()
            raise
        if len(journal.finished_tiles) != len(plan.tiles):
            raise RuntimeError(
                f"journal {journal.path} contains {len(journal.finished_tiles)} tiles, expected {len(plan.tiles)}"
            )

        # Seam merging and the bounds check.
        class_names = tuple(detector.class_names)
        candidates, counts = _merge_journal(journal, plan, class_names)
        figures = candidates.select(candidates.scores >= threshold)
        logger.info(
            "Slide %s: %d candidates from the tiles, %d kept by their own tile, %d after merging within "
            "%.3g µm, %d inside the bounds; %d at or above threshold %g",
            slide.path,
            counts["found"],
            counts["owned"],
            counts["merged"],
            MERGE_RADIUS_UM,
            len(candidates),
            len(figures),
            threshold,
        )

        # Outputs; every writer writes a temporary file and renames it when
        # complete, and the summary comes last because it marks the slide done.
        write_detections_csv(outputs.csv, figures, image=slide.path.name)
        write_qupath_geojson(outputs.geojson, figures, slide.mpp)
        write_midog_json(outputs.midog_json, candidates, slide.mpp, threshold, max_coordinate_mm=None)

        area_mm2 = plan.tissue_area_mm2
        figures_per_mm2 = len(figures) / area_mm2 if area_mm2 > 0 else None
        seconds = time.perf_counter() - started
        summary = {
            "slide": str(slide.path),
            "midog_version": __version__,
            "mpp": slide.mpp,
            "model_mpp": detector.mpp,
            "threshold": threshold,
            "num_figures": len(figures),
            "num_candidates": len(candidates),
            "tissue_area_mm2": area_mm2,
            "figures_per_mm2": figures_per_mm2,
            "l0_bounds": list(plan.l0_bounds),
            "read_level": read_plan.level,
            "tile_size_px": tile_size_px,
            "overlap_px": overlap_px,
            "num_tiles": len(plan.grid.tiles),
            "num_tiles_read": len(plan.tiles),
            "num_tiles_resumed": num_resumed,
            "merge_radius_um": MERGE_RADIUS_UM,
            "batch_size": batch_size,
            "read_threads": read_threads if workers == 0 else 0,
            "workers": workers,
            "seconds": seconds,
            "detect_seconds": timing.detect_seconds,
            "read_wait_seconds": timing.read_wait_seconds,
            "run_settings": settings,
            "outputs": {
                "csv": outputs.csv.name,
                "geojson": outputs.geojson.name,
                "midog_json": outputs.midog_json.name,
            },
        }
        write_summary(outputs.summary, summary)
        journal.remove()

    tiles_per_s = timing.num_tiles_detected / timing.detect_seconds if timing.detect_seconds > 0 else math.nan
    logger.info(
        "Slide %s: done in %.1f s (detector %.1f s, %.3g tiles/s; %.1f s waiting for tiles), outputs in %s",
        slide.path,
        seconds,
        timing.detect_seconds,
        tiles_per_s,
        timing.read_wait_seconds,
        output_dir,
    )
    return SlideResult(
        slide_path=slide.path,
        mpp=slide.mpp,
        threshold=threshold,
        num_figures=len(figures),
        candidates=candidates,
        tissue_area_mm2=area_mm2,
        figures_per_mm2=figures_per_mm2,
        seconds=seconds,
        num_tiles=len(plan.grid.tiles),
        num_tiles_read=len(plan.tiles),
        outputs=outputs,
    )
