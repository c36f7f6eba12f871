"""The slide runner on synthetic TIFFs, an in-memory bounded plane and a real slide."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from midog.errors import OutputError, SlideReadError
from midog.inference.runner import detect_open_slide, detect_slide, read_tile
from midog.inference.tiling import Tile, plan_read
from midog.io.slide import open_slide
from midog.io.writers import read_detections_csv
from tests.inference.stub_detector import TISSUE_RGB, StubDetector
from tests.inference.synthetic import BoundedPlaneSlide, draw_disc, pink_image, write_tiff

PADDING_RGB = (114, 114, 114)


def slide_with_discs(path, width, height, discs, mpp=0.25, **tiff_options):
    """Write a pink TIFF with dark discs ``(x, y, radius)`` in level-0 px."""
    rgb = pink_image(width, height)
    for x, y, radius in discs:
        draw_disc(rgb, (x, y), radius)
    return write_tiff(path, rgb, mpp=mpp, **tiff_options)


def sorted_xy(detections) -> np.ndarray:
    order = np.lexsort((detections.xy[:, 1], detections.xy[:, 0]))
    return detections.xy[order]


# Slide edge: a 1000 x 700 slide read as 512 px tiles with 64 px overlap.


@pytest.fixture(scope="module")
def edge_slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("edge") / "edge.tiff"
    # One disc cut by the right edge, one whole disc near the bottom edge.
    return slide_with_discs(path, 1000, 700, [(992.0, 350.0, 15.0), (500.0, 680.0, 15.0)])


@pytest.fixture(scope="module")
def edge_run(edge_slide, tmp_path_factory):
    detector = StubDetector(record_tiles=True)
    output_dir = tmp_path_factory.mktemp("edge-out")
    result = detect_slide(edge_slide, detector, output_dir, progress=False)
    return detector, result


def test_slide_edge_reads_six_tiles(edge_run):
    detector, result = edge_run
    assert len(detector.tiles_seen) == 6


def test_slide_edge_overhang_right_is_padding(edge_run):
    detector, _ = edge_run
    # Tile 2 starts at x = 896, so its columns from 104 on lie past x = 1000.
    assert (detector.tiles_seen[2][:, 104:] == PADDING_RGB).all()


def test_slide_edge_inside_is_slide(edge_run):
    detector, _ = edge_run
    assert (detector.tiles_seen[2][:100, :90] == TISSUE_RGB).all()


def test_slide_edge_overhang_bottom_is_padding(edge_run):
    detector, _ = edge_run
    # Tile 3 starts at y = 448, so its rows from 252 on lie past y = 700.
    assert (detector.tiles_seen[3][252:, :] == PADDING_RGB).all()


def test_slide_edge_discs_found_once(edge_run):
    _, result = edge_run
    assert len(result.candidates) == 2


def test_slide_edge_detections_inside(edge_run):
    _, result = edge_run
    xy = result.candidates.xy
    assert ((xy >= 0) & (xy < [1000, 700])).all()


def test_slide_edge_dark_padding_dropped(edge_slide, tmp_path):
    # Black padding is the bug's symptom: the overhang becomes one dark blob
    # centred outside the slide, which the runner must not report.
    detector = StubDetector(padding_rgb=(0, 0, 0))
    result = detect_slide(edge_slide, detector, tmp_path, progress=False)
    assert detector.num_detections > len(result.candidates)
    assert ((result.candidates.xy >= 0) & (result.candidates.xy < [1000, 700])).all()


def test_no_progress_bar_when_disabled(edge_slide, tmp_path, capsys):
    detect_slide(edge_slide, StubDetector(), tmp_path, progress=False)
    assert capsys.readouterr().err == ""


def test_outputs_written(edge_run):
    _, result = edge_run
    paths = [result.outputs.csv, result.outputs.geojson, result.outputs.midog_json, result.outputs.summary]
    assert [path.is_file() for path in paths] == [True] * 4


def test_no_temporary_files_left(edge_run):
    _, result = edge_run
    assert sorted(p.name for p in result.outputs.csv.parent.iterdir()) == [
        "edge.csv", "edge.geojson", "edge.mitotic-figures.json", "edge.summary.json",
    ]  # fmt: skip


def test_summary_counts(edge_run):
    _, result = edge_run
    summary = json.loads(result.outputs.summary.read_text())
    assert (summary["num_figures"], summary["num_tiles"], summary["num_tiles_read"]) == (2, 6, 6)


def test_tissue_area_of_pink_slide(edge_run):
    # 1000 x 700 px at 0.25 µm/px = 0.04375 mm², all pink; the thumbnail is
    # 32 x 22 px, so its edge pixels round the area.
    _, result = edge_run
    assert result.tissue_area_mm2 == pytest.approx(0.04375, rel=0.1)


# Bounds offset: image data only inside (3000, 2000, 2000, 1500) of a 6000 x 4000 plane.


@pytest.fixture(scope="module")
def bounds_run(tmp_path_factory):
    slide = BoundedPlaneSlide()
    output_dir = tmp_path_factory.mktemp("bounds-out")
    result = detect_open_slide(slide, StubDetector(), output_dir, progress=False)
    return slide, result


def test_bounds_reads_start_at_bounds(bounds_run):
    slide, _ = bounds_run
    assert (min(read[0] for read in slide.reads), min(read[1] for read in slide.reads)) == (3000, 2000)


def test_bounds_reads_overlap_bounds(bounds_run):
    slide, _ = bounds_run
    outside = [
        r for r in slide.reads if r[0] >= 5000 or r[0] + r[3] <= 3000 or r[1] >= 3500 or r[1] + r[4] <= 2000
    ]
    assert outside == []


def test_bounds_read_count(bounds_run):
    # Origins x 3000, 3448, ..., 4792 (5) and y 2000, ..., 3344 (4).
    slide, _ = bounds_run
    assert len(slide.reads) == 20


def test_bounds_dot_in_result(bounds_run):
    _, result = bounds_run
    assert result.candidates.xy == pytest.approx(np.array([[3500.0, 2400.0]]), abs=1.0)


def test_bounds_dot_in_csv(bounds_run):
    _, result = bounds_run
    table = read_detections_csv(result.outputs.csv)
    assert table[["x", "y"]].to_numpy() == pytest.approx(np.array([[3500.0, 2400.0]]), abs=1.0)


def test_bounds_dot_in_geojson(bounds_run):
    _, result = bounds_run
    features = json.loads(result.outputs.geojson.read_text())["features"]
    coordinates = np.array([f["geometry"]["coordinates"] for f in features])
    assert coordinates == pytest.approx(np.array([[3500.0, 2400.0]]), abs=1.0)


def test_bounds_dot_in_midog_json(bounds_run):
    # 3500 px * 0.25 µm/px = 0.875 mm; 2400 px = 0.6 mm.
    _, result = bounds_run
    points = json.loads(result.outputs.midog_json.read_text())["points"]
    assert np.array([p["point"] for p in points]) == pytest.approx(np.array([[0.875, 0.6, 0.0]]), abs=0.00025)


def test_bounds_tissue_area(bounds_run):
    # 2000 x 1500 px at 0.25 µm/px = 0.1875 mm².
    _, result = bounds_run
    assert result.tissue_area_mm2 == pytest.approx(0.1875, rel=0.1)


# Clipped tile offsets: a region reaching past the top-left corner of the image.


def test_clipped_region_offset(tmp_path):
    path = slide_with_discs(tmp_path / "clip.tiff", 1024, 1024, [(100.0, 100.0, 15.0)])
    detector = StubDetector()
    plan = plan_read(0.25, 0.25, 0, 1.0, tile_size_px=1024, overlap_px=0)
    tile = Tile(index=0, col=0, row=0, l0_x=-256, l0_y=-256)
    with open_slide(path) as slide:
        image = read_tile(slide, tile, plan, slide.bounds, detector.padding_rgb)
    found = detector.detect(image[None])[0].translate(tile.l0_x, tile.l0_y, scale=plan.l0_per_tile_px)
    assert found.xy == pytest.approx(np.array([[100.0, 100.0]]), abs=3.0)


def test_clipped_region_outside_is_padding(tmp_path):
    path = write_tiff(tmp_path / "clip.tiff", pink_image(1024, 1024))
    plan = plan_read(0.25, 0.25, 0, 1.0, tile_size_px=1024, overlap_px=0)
    with open_slide(path) as slide:
        image = read_tile(slide, Tile(0, 0, 0, -256, -256), plan, slide.bounds, PADDING_RGB)
    assert (image[:256] == PADDING_RGB).all()
    assert (image[:, :256] == PADDING_RGB).all()


# Seam duplicates: two 512 px tiles at x = 0 and 448 overlap in [448, 512).


@pytest.mark.parametrize("seam_x", [448.0, 470.0, 480.0, 490.0, 512.0])
def test_seam_disc_found_once(tmp_path, seam_x):
    path = slide_with_discs(tmp_path / "seam.tiff", 960, 512, [(seam_x, 256.0, 15.0)])
    result = detect_slide(path, StubDetector(), tmp_path / "out", progress=False)
    assert result.candidates.xy == pytest.approx(np.array([[seam_x, 256.0]]), abs=1.0)


def test_seam_corner_disc_found_once(tmp_path):
    # Four tiles overlap in [448, 512) x [448, 512).
    path = slide_with_discs(tmp_path / "corner.tiff", 960, 960, [(480.0, 480.0, 15.0)])
    result = detect_slide(path, StubDetector(), tmp_path / "out", progress=False)
    assert len(result.candidates) == 1


# Resampling: slides at other µm/px than the model's.


@pytest.mark.parametrize(
    ("mpp", "size", "discs", "level_downsamples"),
    [
        # 0.5 µm/px: each level-0 px becomes 2 x 2 model px.
        (0.5, (1024, 1024), [(200.25, 300.5, 8.0), (700.0, 800.0, 8.0), (230.0, 230.0, 8.0)], ()),
        # 0.125 µm/px: two level-0 px per model px.
        (0.125, (2048, 2048), [(400.0, 1000.0, 30.0), (1500.0, 600.5, 30.0), (900.0, 900.0, 30.0)], ()),
        # 0.0625 µm/px with a level at 0.125 µm/px: read from level 1, downsampled 2x.
        (0.0625, (3072, 2048), [(1000.0, 1500.0, 40.0), (2500.0, 300.0, 40.0), (2040.0, 1000.0, 40.0)], (2,)),
    ],
)
def test_resampled_slide_coordinates(tmp_path, mpp, size, discs, level_downsamples):
    path = slide_with_discs(
        tmp_path / "scaled.tiff", *size, discs, mpp=mpp, level_downsamples=level_downsamples
    )
    result = detect_slide(path, StubDetector(), tmp_path / "out", progress=False)
    expected = sorted_xy(type(result.candidates)(np.array([d[:2] for d in discs]), [1, 1, 1], [0, 0, 0]))
    assert sorted_xy(result.candidates) == pytest.approx(expected, abs=1.0)


def test_resampled_reads_level_1(tmp_path):
    path = write_tiff(tmp_path / "pyramid.tiff", pink_image(3072, 2048), mpp=0.0625, level_downsamples=(2,))
    result = detect_slide(path, StubDetector(), tmp_path / "out", progress=False)
    assert json.loads(result.outputs.summary.read_text())["read_level"] == 1


# Worker processes: the same detections with and without worker processes.


@pytest.fixture(scope="module")
def worker_slide(tmp_path_factory):
    rng = np.random.default_rng(7)
    discs = [(x, y, 12.0) for x, y in rng.uniform(40, 2008, size=(10, 2))]
    # Two discs on seams: x = 480 (between columns 0 and 1), y = 928 (rows 1 and 2).
    discs += [(480.0, 700.0, 12.0), (1200.0, 928.0, 12.0)]
    path = tmp_path_factory.mktemp("workers") / "workers.tiff"
    return slide_with_discs(path, 2048, 2048, discs)


@pytest.fixture(scope="module")
def worker_reference(worker_slide, tmp_path_factory):
    return detect_slide(worker_slide, StubDetector(), tmp_path_factory.mktemp("ref"), progress=False)


def test_worker_reference_finds_all(worker_reference):
    assert len(worker_reference.candidates) == 12


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_workers_match_main_process(worker_slide, worker_reference, tmp_path, start_method):
    result = detect_slide(
        worker_slide,
        StubDetector(),
        tmp_path,
        workers=4,
        batch_size=3,
        progress=False,
        start_method=start_method,
    )
    assert np.array_equal(sorted_xy(result.candidates), sorted_xy(worker_reference.candidates))


class FailingSlide(BoundedPlaneSlide):
    """Fails to read tiles right of x = 4000; picklable, so it also runs in workers."""

    def read_region(self, l0_xy, level, size, fill_rgb=(255, 255, 255)):
        if l0_xy[0] > 4000:
            raise SlideReadError(f"Failed to read slide {self.path}, region at level-0 x={l0_xy[0]}")
        return super().read_region(l0_xy, level, size, fill_rgb)


@pytest.mark.parametrize("workers", [0, 2])
def test_read_error_leaves_no_outputs(tmp_path, workers):
    with pytest.raises(SlideReadError, match="x=4344"):
        detect_open_slide(
            FailingSlide(), StubDetector(), tmp_path, workers=workers, progress=False, start_method="fork"
        )
    assert list(tmp_path.iterdir()) == []


def test_unreadable_slide_leaves_no_outputs(shared_data, tmp_path):
    with pytest.raises(SlideReadError, match="unreadable.svs"):
        detect_slide(
            shared_data / "slides/openslide_fixtures/unreadable.svs", StubDetector(), tmp_path, progress=False
        )
    assert list(tmp_path.iterdir()) == []


# Output folder checks come before any read.


def test_output_folder_is_file(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    slide = BoundedPlaneSlide()
    with pytest.raises(OutputError, match="blocker"):
        detect_open_slide(slide, StubDetector(), blocker, progress=False)
    assert slide.reads == []


def test_output_folder_under_file(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(OutputError, match="Cannot create output folder"):
        detect_slide(tmp_path / "missing.tiff", StubDetector(), blocker / "out", progress=False)


def test_invalid_overlap_rejected(tmp_path):
    with pytest.raises(ValueError, match="overlap"):
        detect_open_slide(BoundedPlaneSlide(), StubDetector(), tmp_path, overlap_px=300, progress=False)


# Empty slides and thresholds.


@pytest.fixture(scope="module")
def blank_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blank")
    rgb = np.full((700, 1000, 3), 245, dtype=np.uint8)
    path = write_tiff(folder / "blank.tiff", rgb)
    detector = StubDetector()
    return detector, detect_slide(path, detector, folder / "out", progress=False)


def test_blank_slide_reads_no_tile(blank_run):
    detector, result = blank_run
    assert (result.num_tiles_read, detector.num_calls) == (0, 0)


def test_blank_slide_has_no_density(blank_run):
    _, result = blank_run
    assert result.figures_per_mm2 is None


def test_blank_slide_writes_empty_csv(blank_run):
    _, result = blank_run
    assert len(read_detections_csv(result.outputs.csv)) == 0


def test_blank_slide_logs_no_tissue(tmp_path, caplog):
    path = write_tiff(tmp_path / "blank.tiff", np.full((300, 300, 3), 245, dtype=np.uint8))
    with caplog.at_level(logging.WARNING, logger="midog.inference.runner"):
        detect_slide(path, StubDetector(), tmp_path / "out", progress=False)
    assert "no tissue found" in caplog.text


@pytest.fixture(scope="module")
def high_threshold_run(edge_slide, tmp_path_factory):
    return detect_slide(
        edge_slide, StubDetector(), tmp_path_factory.mktemp("high"), threshold=0.95, progress=False
    )


def test_threshold_empties_csv(high_threshold_run):
    assert len(read_detections_csv(high_threshold_run.outputs.csv)) == 0


def test_threshold_keeps_candidates_in_midog_json(high_threshold_run):
    points = json.loads(high_threshold_run.outputs.midog_json.read_text())["points"]
    assert [p["name"] for p in points] == ["non-mitotic figure"] * 2


# The real slide CMU-1-Small-Region: 2220 x 2967 px at 0.499 µm/px, one level.


@pytest.fixture(scope="module")
def cmu_run(shared_data, tmp_path_factory):
    path = shared_data / "slides" / "cmu-1-small-region.svs"
    return detect_slide(path, StubDetector(), tmp_path_factory.mktemp("cmu"), batch_size=16, progress=False)


def test_cmu_outputs_written(cmu_run):
    paths = [
        cmu_run.outputs.csv,
        cmu_run.outputs.geojson,
        cmu_run.outputs.midog_json,
        cmu_run.outputs.summary,
    ]
    assert [path.is_file() for path in paths] == [True] * 4


def test_cmu_tissue_area(cmu_run):
    # The plane is 1.108 x 1.480 mm = 1.640 mm², of which the mask measured 0.599 mm².
    assert 0.5 <= cmu_run.tissue_area_mm2 <= 0.7


def test_cmu_detections_inside_slide(cmu_run):
    xy = cmu_run.candidates.xy
    assert ((xy >= 0) & (xy < [2220, 2967])).all()


def test_cmu_csv_matches_result(cmu_run):
    assert len(read_detections_csv(cmu_run.outputs.csv)) == cmu_run.num_figures


def test_wide_slide_midog_json(tmp_path):
    # A figure 10.125 mm from the left edge (40500 px at 0.25 µm/px), as on any
    # slide wider than 10 mm.
    slide = BoundedPlaneSlide(
        dimensions=(48000, 4000), bounds=(40000, 2000, 1000, 1000), discs=((40500.0, 2400.0, 15.0),)
    )
    result = detect_open_slide(slide, StubDetector(), tmp_path, progress=False)
    assert result.outputs.midog_json.is_file()
