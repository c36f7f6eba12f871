"""Tile reading that overlaps with the detector.

``read_tile`` reads one tile at the model's µm/px. ``iter_tile_images`` reads
a list of tiles in order, in the calling thread, in a pool of threads, or in
worker processes. ``BatchPrefetcher`` runs that reader in a background
thread and stacks the tiles into batches, so that decoding, resampling and
batch assembly for the next batches happen while the detector runs on the
current one. OpenSlide, Pillow's resize and onnxruntime release the GIL, so
threads suffice on CPU and GPU alike.

Memory is bounded by the tiles in flight: at most ``prefetch_batches + 1``
batches plus ``max(batch_size, PENDING_TILES_PER_READER * readers)`` tiles
being read, whatever the slide's size.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import multiprocessing
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

from midog.inference.tiling import L0Rect, ReadPlan, Tile, TileGrid
from midog.io.slide import SlideReader

__all__ = [
    "DEFAULT_READ_THREADS",
    "PENDING_TILES_PER_READER",
    "PREFETCH_BATCHES",
    "BatchPrefetcher",
    "TileBatch",
    "iter_batches",
    "iter_tile_images",
    "read_tile",
]

logger = logging.getLogger(__name__)

# Threads reading tiles while the detector runs. With two, RTMDet-S waited
# at most 0.1 s for tiles in whole-slide runs of up to 1541 tiles, JPEG and
# deflate, on 2 AMD EPYC cores (tools/benchmark_wsi.py, docs/benchmarks.md).
DEFAULT_READ_THREADS = 2

# Tiles read ahead per reader thread or worker process; bounds the memory held
# by tiles waiting for the detector (a 512 px tile is 0.75 MiB).
PENDING_TILES_PER_READER = 4

# Finished batches that wait for the detector.
PREFETCH_BATCHES = 2

# How often a blocked producer checks whether the consumer has stopped, in s.
_STOP_POLL_S = 0.05


@dataclass(frozen=True)
class TileBatch:
    """Tiles read and stacked for one detector call.

    Attributes:
        tiles: the tiles, in grid order.
        images: ``(len(tiles), H, W, 3)`` uint8 RGB at the model's µm/px.
    """

    tiles: list[Tile]
    images: np.ndarray


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


def _iter_ordered(
    tiles: Sequence[Tile],
    submit: Callable[[Tile], Any],
    result: Callable[[Any], np.ndarray],
    max_pending: int,
) -> Iterator[tuple[Tile, np.ndarray]]:
    """Keep up to ``max_pending`` reads in flight and yield their results in the order of ``tiles``."""
    pending: collections.deque[tuple[Tile, Any]] = collections.deque()
    next_index = 0
    while pending or next_index < len(tiles):
        while next_index < len(tiles) and len(pending) < max_pending:
            tile = tiles[next_index]
            pending.append((tile, submit(tile)))
            next_index += 1
        tile, handle = pending.popleft()
        yield tile, result(handle)


def iter_tile_images(
    slide: SlideReader,
    grid: TileGrid,
    tiles: Sequence[Tile],
    padding_rgb: tuple[int, int, int],
    *,
    read_threads: int = 0,
    workers: int = 0,
    start_method: str | None = None,
    min_pending: int = 0,
) -> Iterator[tuple[Tile, np.ndarray]]:
    """Yield ``(tile, image)`` in the order of ``tiles``.

    Args:
        slide: an open slide; with ``workers > 0`` it must be picklable.
        grid: the tile grid, for its read plan and bounds.
        tiles: the tiles to read.
        padding_rgb: colour for pixels without image data, 0-255.
        read_threads: threads reading tiles; 0 reads in the calling thread.
            Ignored when ``workers > 0``.
        workers: worker processes reading tiles, each opening the slide itself.
        start_method: multiprocessing start method for the workers; None uses
            the platform default.
        min_pending: keep at least this many reads in flight (a batch, so that
            the next batch is read while one is assembled).

    Raises:
        SlideReadError: reading a tile failed; raised when that tile is due.
    """
    if workers > 0:
        context = multiprocessing.get_context(start_method)
        max_pending = max(min_pending, workers * PENDING_TILES_PER_READER)
        with context.Pool(workers, initializer=_init_worker, initargs=(slide,)) as pool:
            yield from _iter_ordered(
                tiles,
                lambda tile: pool.apply_async(
                    _read_tile_in_worker, (tile, grid.plan, grid.l0_bounds, padding_rgb)
                ),
                lambda async_result: async_result.get(),
                max_pending,
            )
        return

    if read_threads > 0:
        max_pending = max(min_pending, read_threads * PENDING_TILES_PER_READER)
        executor = concurrent.futures.ThreadPoolExecutor(read_threads, thread_name_prefix="midog-read")
        try:
            yield from _iter_ordered(
                tiles,
                lambda tile: executor.submit(read_tile, slide, tile, grid.plan, grid.l0_bounds, padding_rgb),
                lambda future: future.result(),
                max_pending,
            )
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        return

    for tile in tiles:
        yield tile, read_tile(slide, tile, grid.plan, grid.l0_bounds, padding_rgb)


def iter_batches(images: Iterator[tuple[Tile, np.ndarray]], batch_size: int) -> Iterator[TileBatch]:
    """Group ``(tile, image)`` pairs into batches of ``batch_size``; the last may be smaller."""
    tiles: list[Tile] = []
    arrays: list[np.ndarray] = []
    for tile, image in images:
        tiles.append(tile)
        arrays.append(image)
        if len(tiles) == batch_size:
            yield TileBatch(tiles, np.stack(arrays))
            tiles, arrays = [], []
    if tiles:
        yield TileBatch(tiles, np.stack(arrays))


class _End:
    """Queue item: the producer has no more batches."""


@dataclass(frozen=True)
class _Failure:
    """Queue item: the producer raised ``error``."""

    error: BaseException


class BatchPrefetcher:
    """Read and batch tiles in a background thread, ahead of the consumer.

    The producer thread calls ``make_images()`` and groups what it yields
    into ``TileBatch`` objects, keeping at most ``prefetch_batches`` finished
    batches waiting. An exception in the producer (a ``SlideReadError``, for
    example) is raised in the consumer when it reaches that batch. Leaving the
    ``with`` block stops the producer and waits for it, which also stops the
    reader threads or processes that ``make_images`` started.

    Args:
        make_images: returns the iterator of ``(tile, image)`` pairs; it is
            called, consumed and closed in the producer thread.
        batch_size: tiles per batch.
        prefetch_batches: finished batches that may wait for the consumer.

    Example:
        >>> with BatchPrefetcher(lambda: iter_tile_images(...), 8) as batches:
        ...     for batch in batches:
        ...         detector.detect(batch.images)
    """

    def __init__(
        self,
        make_images: Callable[[], Iterator[tuple[Tile, np.ndarray]]],
        batch_size: int,
        prefetch_batches: int = PREFETCH_BATCHES,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if prefetch_batches < 1:
            raise ValueError(f"prefetch_batches must be at least 1, got {prefetch_batches}")
        self.batch_size = batch_size
        self.prefetch_batches = prefetch_batches
        self._make_images = make_images
        self._queue: queue.Queue[TileBatch | _End | _Failure] = queue.Queue(maxsize=prefetch_batches)
        self._stop = threading.Event()
        self._started = False
        self._thread = threading.Thread(target=self._produce, name="midog-batches", daemon=True)

    def __repr__(self) -> str:
        return f"BatchPrefetcher(batch_size={self.batch_size}, prefetch_batches={self.prefetch_batches})"

    def __enter__(self) -> BatchPrefetcher:
        self._thread.start()
        self._started = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[TileBatch]:
        if not self._started:
            raise RuntimeError("BatchPrefetcher must be entered with 'with' before iterating")
        while True:
            item = self._queue.get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def _put(self, item: TileBatch | _End | _Failure) -> bool:
        """Queue ``item``; return False, without queuing it, once the consumer has stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_STOP_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            images = self._make_images()
            with contextlib.closing(images):
                for batch in iter_batches(images, self.batch_size):
                    if not self._put(batch):
                        return
            self._put(_End())
        except BaseException as error:  # handed to the consumer, which raises it
            self._put(_Failure(error))

    def close(self) -> None:
        """Stop the producer and wait for it; batches not yet consumed are dropped."""
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get_nowait()
            self._thread.join(timeout=_STOP_POLL_S)
