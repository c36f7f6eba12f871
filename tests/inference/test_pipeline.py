"""Tile readers and the batch prefetcher that overlap reading with the detector."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from midog.errors import SlideReadError
from midog.inference.pipeline import BatchPrefetcher, iter_tile_images
from midog.inference.runner import detect_slide
from midog.inference.tiling import Tile, make_tile_grid, plan_read
from midog.io.slide import open_slide
from tests.inference.stub_detector import StubDetector
from tests.inference.synthetic import draw_disc, pink_image, write_tiff


def numbered_images(count: int | None, fail_at: int | None = None, produced: list[int] | None = None):
    """Yield ``(tile, image)`` whose pixels hold the tile index; raise SlideReadError at ``fail_at``."""
    index = 0
    while count is None or index < count:
        if index == fail_at:
            raise SlideReadError(f"Failed to read tile {index}")
        if produced is not None:
            produced.append(index)
        yield Tile(index, index, 0, 0, 0), np.full((4, 4, 3), index % 256, dtype=np.uint8)
        index += 1


@pytest.fixture(scope="module")
def disc_slide(tmp_path_factory):
    rgb = pink_image(1400, 1000)
    rng = np.random.default_rng(11)
    for x, y in rng.uniform(30, 970, size=(12, 2)):
        draw_disc(rgb, (float(x) * 1.4, float(y)), 12.0)
    return write_tiff(tmp_path_factory.mktemp("pipeline") / "discs.tiff", rgb)


def test_prefetcher_batch_sizes():
    with BatchPrefetcher(lambda: numbered_images(7), 3) as batches:
        assert [len(batch.tiles) for batch in batches] == [3, 3, 1]


def test_prefetcher_keeps_order():
    with BatchPrefetcher(lambda: numbered_images(10), 4) as batches:
        values = [int(image[0, 0, 0]) for batch in batches for image in batch.images]
    assert values == list(range(10))


def test_prefetcher_stacks_images():
    with BatchPrefetcher(lambda: numbered_images(5), 5) as batches:
        (batch,) = list(batches)
    assert (batch.images.shape, batch.images.dtype) == ((5, 4, 4, 3), np.uint8)


def test_prefetcher_raises_in_consumer():
    seen = []
    with (
        pytest.raises(SlideReadError, match="tile 5"),
        BatchPrefetcher(lambda: numbered_images(9, 5), 2) as batches,
    ):
        for batch in batches:
            seen.extend(tile.index for tile in batch.tiles)
    assert seen == [0, 1, 2, 3]


def test_prefetcher_stops_endless_producer():
    prefetcher = BatchPrefetcher(lambda: numbered_images(None), 2)
    with prefetcher as batches:
        next(iter(batches))
    assert not prefetcher._thread.is_alive()


def test_prefetcher_bounds_read_ahead():
    produced: list[int] = []
    with BatchPrefetcher(lambda: numbered_images(None, produced=produced), 4, prefetch_batches=2) as batches:
        next(iter(batches))
        time.sleep(0.3)
        # One batch taken, two waiting, one being assembled, one tile blocked in the producer's put.
        assert len(produced) <= 5 * 4 + 1


def test_prefetcher_needs_with():
    with pytest.raises(RuntimeError, match="with"):
        list(BatchPrefetcher(lambda: numbered_images(1), 1))


def test_prefetcher_runs_in_background():
    names = []

    def images():
        names.append(threading.current_thread().name)
        yield from numbered_images(2)

    with BatchPrefetcher(images, 2) as batches:
        list(batches)
    assert names == ["midog-batches"]


@pytest.mark.parametrize("read_threads", [1, 3])
def test_threaded_reads_match_serial(disc_slide, read_threads):
    with open_slide(disc_slide) as slide:
        grid = make_tile_grid(slide.bounds, plan_read(0.25, 0.25, 0, 1.0, 512, 64))
        serial = [image for _, image in iter_tile_images(slide, grid, grid.tiles, (114, 114, 114))]
        threaded = [
            image
            for _, image in iter_tile_images(
                slide, grid, grid.tiles, (114, 114, 114), read_threads=read_threads
            )
        ]
    assert all(np.array_equal(a, b) for a, b in zip(serial, threaded, strict=True))


@pytest.mark.parametrize("read_threads", [0, 1, 4])
def test_runner_read_threads_same_candidates(disc_slide, tmp_path, read_threads):
    reference = detect_slide(disc_slide, StubDetector(), tmp_path / "ref", read_threads=2, progress=False)
    result = detect_slide(
        disc_slide, StubDetector(), tmp_path / "run", read_threads=read_threads, batch_size=3, progress=False
    )
    assert np.array_equal(result.candidates.xy, reference.candidates.xy)


def test_runner_rejects_negative_read_threads(disc_slide, tmp_path):
    with pytest.raises(ValueError, match="read threads"):
        detect_slide(disc_slide, StubDetector(), tmp_path, read_threads=-1, progress=False)
