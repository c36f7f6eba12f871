"""Whole-slide inference: tissue mask, tiles, detector, seam merging, outputs.

``detect_slide`` runs one slide end to end:

1. Check that the output folder is writable, before any pixel is read.
2. Open the slide and read a thumbnail; its tissue mask decides which tiles
   are read and gives the tissue area.
3. Lay a grid of ``tile_size_px`` model px tiles with ``overlap_px`` overlap
   over the slide's bounds, at the detector's µm/px.
4. Read each tile with tissue (in this process, or in worker processes that
   open the slide themselves), resample it to the detector's µm/px, paint
   pixels outside the bounds with the detector's padding colour, and run the
   detector in batches.
5. Map detections to level 0, keep each tile's own (away from its inner
   borders), merge duplicates at the seams, and drop detections centred
   outside the bounds.
6. Write the CSV, QuPath GeoJSON, MIDOG JSON and a summary, each atomically.

Only numpy, PIL, OpenSlide and the detector run here; torch and mmdet are
never imported.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import multiprocessing
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from midog import __version__
from midog.errors import OutputError
from midog.inference.detector import TileDetector
from midog.inference.merge import MERGE_RADIUS_UM, drop_outside_bounds, keep_owned, suppress_duplicates
from midog.inference.tiling import (
    L0Rect,
    ReadPlan,
    Tile,
    TileGrid,
    make_tile_grid,
    ownership_rects,
    plan_read,
)
from midog.inference.tissue import (
    restrict_to_l0_rect,
    thumbnail_size_px,
    tiles_with_tissue,
    tissue_area_mm2,
    tissue_mask,
)
from midog.io.slide import SlideReader, open_slide
from midog.io.writers import atomic_output, write_detections_csv, write_midog_json, write_qupath_geojson
from midog.structures import Detections

__all__ = [
    "SlideOutputs",
    "SlideResult",
    "check_output_dir",
    "slide_outputs",
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

# Tiles read ahead by worker processes, per worker; bounds the memory held by
# tiles waiting for the detector (a 512 px tile is 0.75 MiB).
PENDING_TILES_PER_WORKER = 4


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


def read_tile(
    slide: SlideReader,
    tile: Tile,
    plan: ReadPlan,
    l0_bounds: L0Rect,
    padding_rgb: tuple[int, int, int],
) -> np.ndarray:
    """Read one tile at the model's µm/px.

    The region is read from ``plan.level`` at the tile's unclipped origin.
    Pixels outside the slide plane come back as ``padding_rgb`` from the
    reader, and pixels whose centre lies outside ``l0_bounds`` are painted
    with it here, so the tile maps to level 0 by
    ``l0 = tile.l0_xy + tile_xy * plan.l0_per_tile_px`` wherever it lies.

    Args:
        slide: an open slide.
        tile: the tile; its origin may be negative or past the image.
        plan: level, sizes and scale.
        l0_bounds: ``(x, y, width, height)`` in level-0 px of the region with image data.
        padding_rgb: colour for pixels without image data, 0-255.

    Returns:
        ``(plan.tile_size_px, plan.tile_size_px, 3)`` uint8 RGB.

    Raises:
        SlideReadError: the slide's pixels could not be decoded.
    """
    size = (plan.read_size_px, plan.read_size_px)
    region = slide.read_region((tile.l0_x, tile.l0_y), plan.level, size, fill_rgb=padding_rgb)

    # Level px whose centre is outside the bounds get the padding colour.
    l0_bx, l0_by, l0_bw, l0_bh = l0_bounds
    l0_centre_offsets = (np.arange(plan.read_size_px) + 0.5) * plan.level_downsample
    l0_col_centres = tile.l0_x + l0_centre_offsets
    l0_row_centres = tile.l0_y + l0_centre_offsets
    outside_cols = (l0_col_centres < l0_bx) | (l0_col_centres >= l0_bx + l0_bw)
    outside_rows = (l0_row_centres < l0_by) | (l0_row_centres >= l0_by + l0_bh)
    if outside_cols.any() or outside_rows.any():
        region = region.copy()
        region[:, outside_cols] = padding_rgb
        region[outside_rows, :] = padding_rgb

    if not plan.needs_resampling:
        return region
    level_extent = plan.tile_size_px * plan.level_px_per_tile_px
    image = Image.fromarray(region).resize(
        (plan.tile_size_px, plan.tile_size_px),
        Image.Resampling.BICUBIC,
        box=(0.0, 0.0, level_extent, level_extent),
    )
    return np.asarray(image)


# Worker processes keep their own slide reader, unpickled (spawn) or
# inherited and reopened on first use (fork).
_worker_slide: SlideReader | None = None


def _init_worker(slide: SlideReader) -> None:
    global _worker_slide
    _worker_slide = slide


def _read_tile_in_worker(
    tile: Tile, plan: ReadPlan, l0_bounds: L0Rect, padding_rgb: tuple[int, int, int]
) -> np.ndarray:
    if _worker_slide is None:
        raise RuntimeError("tile reading worker started without a slide")
    return read_tile(_worker_slide, tile, plan, l0_bounds, padding_rgb)


def _iter_tile_images(
    slide: SlideReader,
    grid: TileGrid,
    tiles: Sequence[Tile],
    padding_rgb: tuple[int, int, int],
    workers: int,
    start_method: str | None,
) -> Iterator[tuple[Tile, np.ndarray]]:
    """Yield ``(tile, image)`` in the order of ``tiles``, read here or in worker processes."""
    if workers == 0:
        for tile in tiles:
            yield tile, read_tile(slide, tile, grid.plan, grid.l0_bounds, padding_rgb)
        return

    context = multiprocessing.get_context(start_method)
    max_pending = workers * PENDING_TILES_PER_WORKER
    with context.Pool(workers, initializer=_init_worker, initargs=(slide,)) as pool:
        pending: collections.deque[tuple[Tile, Any]] = collections.deque()
        next_index = 0
        while pending or next_index < len(tiles):
            while next_index < len(tiles) and len(pending) < max_pending:
                tile = tiles[next_index]
                args = (tile, grid.plan, grid.l0_bounds, padding_rgb)
                pending.append((tile, pool.apply_async(_read_tile_in_worker, args)))
                next_index += 1
            tile, async_result = pending.popleft()
            yield tile, async_result.get()


def _batches(
    items: Iterator[tuple[Tile, np.ndarray]], batch_size: int
) -> Iterator[list[tuple[Tile, np.ndarray]]]:
    batch: list[tuple[Tile, np.ndarray]] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_summary(path: Path, summary: dict[str, Any]) -> None:
    with atomic_output(path) as temporary_path:
        temporary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def _validate_settings(
    tile_size_px: int, overlap_px: int, batch_size: int, workers: int, threshold: float | None
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
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")


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
        workers: processes reading tiles; 0 reads in this process.
        progress: show a tqdm progress bar.
        start_method: multiprocessing start method for the workers ("fork",
            "spawn", "forkserver"); None uses the platform default.

    Returns:
        The result, with the paths of the files written.

    Raises:
        OutputError: ``output_dir`` is not writable (raised before the slide is
            opened) or an output could not be written.
        SlideOpenError: the slide cannot be opened.
        SlideResolutionError: the slide has no usable µm/px and ``mpp`` is None.
        SlideReadError: reading pixels failed; no output is written.
        ValueError: a setting is out of range.
    """
    started = time.perf_counter()
    _validate_settings(tile_size_px, overlap_px, batch_size, workers, threshold)
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
    progress: bool = True,
    start_method: str | None = None,
    started: float | None = None,
) -> SlideResult:
    """Run ``detect_slide`` on a slide that is already open.

    Args:
        slide: an open slide, or an object with the same attributes and
            methods; with ``workers > 0`` it must be picklable.
        detector: the model.
        output_dir: folder for the outputs, created if missing.
        threshold: see ``detect_slide``.
        tile_size_px: see ``detect_slide``.
        overlap_px: see ``detect_slide``.
        batch_size: see ``detect_slide``.
        workers: see ``detect_slide``.
        progress: see ``detect_slide``.
        start_method: see ``detect_slide``.
        started: ``time.perf_counter()`` at the start of the run, so that
            ``seconds`` includes opening the slide; None starts the clock here.

    Returns:
        The result, with the paths of the files written.

    Raises:
        OutputError: ``output_dir`` is not writable, or an output could not be written.
        SlideReadError: reading pixels failed; no output is written.
        ValueError: a setting is out of range.
    """
    started = time.perf_counter() if started is None else started
    _validate_settings(tile_size_px, overlap_px, batch_size, workers, threshold)
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
    l0_x, l0_y, l0_width, l0_height = (int(v) for v in slide.bounds)
    bounds = (l0_x, l0_y, l0_width, l0_height)

    # Tissue mask from a thumbnail of the whole plane.
    thumbnail, l0_per_mask_px = slide.read_thumbnail(thumbnail_size_px(slide.dimensions, slide.mpp))
    mask_mpp = slide.mpp * l0_per_mask_px
    mask = restrict_to_l0_rect(tissue_mask(thumbnail, mask_mpp), bounds, l0_per_mask_px)
    area_mm2 = tissue_area_mm2(mask, mask_mpp)

    # Tile grid over the bounds at the detector's µm/px.
    level = slide.best_level_for_mpp(detector.mpp)
    plan = plan_read(slide.mpp, detector.mpp, level, slide.level_downsamples[level], tile_size_px, overlap_px)
    grid = make_tile_grid(bounds, plan)
    selected = tiles_with_tissue(grid, mask, l0_per_mask_px)
    tiles = [tile for tile in grid.tiles if selected[tile.index]]
    logger.info(
        "Slide %s: %.4g µm/px, bounds %s, tissue %.3f mm² (mask at %.3g µm/px); reading level %d "
        "(%.3g µm/px) resampled to %.3g µm/px; %d tiles of %d px, %d read, %d skipped as background",
        slide.path,
        slide.mpp,
        bounds,
        area_mm2,
        mask_mpp,
        level,
        slide.mpp * plan.level_downsample,
        detector.mpp,
        len(grid.tiles),
        tile_size_px,
        len(tiles),
        len(grid.tiles) - len(tiles),
    )
    if not tiles:
        logger.warning("Slide %s: no tissue found, so no tile was read and no figure is reported", slide.path)

    # Detection; each tile keeps its own detections, in level-0 px.
    l0_radius = MERGE_RADIUS_UM / slide.mpp
    l0_margin = min(l0_radius, overlap_px * plan.l0_per_tile_px / 4)
    rects = ownership_rects(grid, selected, l0_margin)
    parts: list[Detections] = []
    num_found = 0
    detect_seconds = 0.0
    last_log = time.perf_counter()
    images = _iter_tile_images(slide, grid, tiles, padding, workers, start_method)
    with (
        contextlib.closing(images),
        tqdm(total=len(tiles), desc=slide.path.name, unit="tile", disable=not progress) as bar,
    ):
        for batch in _batches(images, batch_size):
            detect_started = time.perf_counter()
            results = detector.detect(np.stack([image for _, image in batch]))
            detect_seconds += time.perf_counter() - detect_started
            if len(results) != len(batch):
                raise ValueError(
                    f"detector returned {len(results)} results for a batch of {len(batch)} tiles"
                )
            for (tile, _), tile_detections in zip(batch, results, strict=True):
                num_found += len(tile_detections)
                l0_detections = tile_detections.translate(tile.l0_x, tile.l0_y, scale=plan.l0_per_tile_px)
                parts.append(keep_owned(l0_detections, rects[tile.index]))
            bar.update(len(batch))
            if not progress and time.perf_counter() - last_log >= PROGRESS_LOG_INTERVAL_S:
                last_log = time.perf_counter()
                logger.info("Slide %s: %d of %d tiles done", slide.path, bar.n, len(tiles))

    # Seam merging and the bounds check.
    class_names = tuple(detector.class_names)
    owned = Detections.concatenate(parts, class_names)
    merged = suppress_duplicates(owned, l0_radius)
    candidates = drop_outside_bounds(merged, bounds)
    figures = candidates.select(candidates.scores >= threshold)
    logger.info(
        "Slide %s: %d candidates from the tiles, %d kept by their own tile, %d after merging within %.3g µm, "
        "%d inside the bounds; %d at or above threshold %g",
        slide.path,
        num_found,
        len(owned),
        len(merged),
        MERGE_RADIUS_UM,
        len(candidates),
        len(figures),
        threshold,
    )

    # Outputs; every writer writes a temporary file and renames it when complete.
    write_detections_csv(outputs.csv, figures, image=slide.path.name)
    write_qupath_geojson(outputs.geojson, figures, slide.mpp)
    write_midog_json(outputs.midog_json, candidates, slide.mpp, threshold, max_coordinate_mm=None)

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
        "l0_bounds": list(bounds),
        "read_level": level,
        "tile_size_px": tile_size_px,
        "overlap_px": overlap_px,
        "num_tiles": len(grid.tiles),
        "num_tiles_read": len(tiles),
        "merge_radius_um": MERGE_RADIUS_UM,
        "seconds": seconds,
        "detect_seconds": detect_seconds,
        "outputs": {
            "csv": outputs.csv.name,
            "geojson": outputs.geojson.name,
            "midog_json": outputs.midog_json.name,
        },
    }
    _write_summary(outputs.summary, summary)
    tiles_per_s = len(tiles) / detect_seconds if detect_seconds > 0 else math.nan
    logger.info(
        "Slide %s: done in %.1f s (detector %.1f s, %.3g tiles/s), outputs in %s",
        slide.path,
        seconds,
        detect_seconds,
        tiles_per_s,
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
        num_tiles=len(grid.tiles),
        num_tiles_read=len(tiles),
        outputs=outputs,
    )
