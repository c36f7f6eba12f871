"""Cohort inference: slide lists, retries, skipping finished slides, the summary table, and Ray."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from midog.errors import ManifestError, ModelError, OutputError, SlideOpenError
from midog.inference.cohort import (
    TABLE_COLUMNS,
    OnnxDetectorFactory,
    SlideSettings,
    SlideSpec,
    finished_row,
    hotspot_path,
    list_slides,
    run_cohort,
    thumbnail_path,
)
from midog.inference.hotspot import read_hotspot_geojson
from midog.inference.onnx_detector import default_model_path
from midog.inference.resume import file_sha256
from tests.inference.stub_detector import StubDetector

REAL_SLIDE = Path("slides") / "cmu-1-small-region.svs"
BROKEN_SLIDE = Path("slides") / "broken.svs"

# The real slide is a 1.1 x 1.5 mm region with 0.6 mm² of tissue, so a 2 mm²
# window is at most 30 % tissue there.
SETTINGS = SlideSettings(min_tissue_share=0.2)


def _read_table(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


class FlakyDetector(StubDetector):
    """A stub detector whose first ``detect`` call raises."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_once = False

    def detect(self, tiles):
        if not self.failed_once:
            self.failed_once = True
            raise RuntimeError("simulated out-of-memory on the first batch")
        return super().detect(tiles)


@pytest.fixture(scope="module")
def cohort_slides(shared_data, tmp_path_factory):
    """The real slide, a copy of it under another name, and a file OpenSlide rejects."""
    folder = tmp_path_factory.mktemp("slides")
    copy = folder / "cmu-copy.svs"
    shutil.copyfile(shared_data / REAL_SLIDE, copy)
    return [shared_data / REAL_SLIDE, copy, shared_data / BROKEN_SLIDE]


# Slide lists


def test_list_folder_sorted_slides_only(shared_data, tmp_path):
    for name in ("b.svs", "a.tiff"):
        shutil.copyfile(shared_data / REAL_SLIDE, tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a slide")
    assert [spec.path.name for spec in list_slides(tmp_path)] == ["a.tiff", "b.svs"]


def test_list_glob_pattern(shared_data):
    specs = list_slides(str(shared_data / "slides" / "*.svs"))
    assert [spec.path.name for spec in specs] == ["broken.svs", "cmu-1-small-region.svs"]


def test_list_manifest_relative_path_and_mpp(shared_data, tmp_path):
    shutil.copyfile(shared_data / REAL_SLIDE, tmp_path / "one.svs")
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f"path,mpp\none.svs,0.5\n{shared_data / REAL_SLIDE},\n")
    assert list_slides(manifest) == [
        SlideSpec(tmp_path / "one.svs", 0.5),
        SlideSpec(shared_data / REAL_SLIDE),
    ]


def test_list_manifest_without_path_column(tmp_path):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("slide,mpp\na.svs,0.25\n")
    with pytest.raises(ManifestError, match="has no 'path' column"):
        list_slides(manifest)


def test_list_manifest_invalid_mpp(shared_data, tmp_path):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f"path,mpp\n{shared_data / REAL_SLIDE},-1\n")
    with pytest.raises(ManifestError, match="line 2: mpp must be a positive"):
        list_slides(manifest)


def test_list_manifest_missing_slide(tmp_path):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("path\nmissing.svs\n")
    with pytest.raises(ManifestError, match=r"line 2: slide .*missing.svs not found"):
        list_slides(manifest)


def test_list_missing_slide(tmp_path):
    with pytest.raises(SlideOpenError, match="missing.svs not found"):
        list_slides(tmp_path / "missing.svs")


def test_list_glob_without_match(tmp_path):
    with pytest.raises(SlideOpenError, match="No slide file matches"):
        list_slides(str(tmp_path / "*.ndpi"))


def test_list_drops_duplicates(shared_data):
    path = shared_data / REAL_SLIDE
    assert len(list_slides([path, str(path), SlideSpec(path)])) == 1


def test_cohort_rejects_shared_stem(shared_data, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copyfile(shared_data / REAL_SLIDE, other / REAL_SLIDE.name)
    with pytest.raises(OutputError, match="would both write cmu-1-small-region.summary.json"):
        run_cohort([shared_data / REAL_SLIDE, other / REAL_SLIDE.name], StubDetector, tmp_path / "out")


def test_cohort_rejects_negative_retries(shared_data, tmp_path):
    with pytest.raises(ValueError, match="retries must be 0 or more, got -1"):
        run_cohort([shared_data / REAL_SLIDE], StubDetector, tmp_path, retries=-1)


# In this process


IN_PROCESS_SETTINGS = replace(SETTINGS, read_threads=1)


@pytest.fixture(scope="module")
def in_process_run(shared_data, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("in_process")
    slides = [shared_data / REAL_SLIDE, shared_data / BROKEN_SLIDE]
    return output_dir, run_cohort(slides, StubDetector, output_dir, settings=IN_PROCESS_SETTINGS, retries=0)


def _read_summary(output_dir: Path, slide: Path) -> dict:
    return json.loads((output_dir / f"{slide.stem}.summary.json").read_text(encoding="utf-8"))


def test_in_process_statuses(in_process_run):
    _, result = in_process_run
    assert [row.status for row in result.rows] == ["done", "failed"]


def test_in_process_failure_without_retry(in_process_run):
    _, result = in_process_run
    assert result.rows[1].attempts == 1


def test_in_process_hotspot_in_table(in_process_run):
    _, result = in_process_run
    table = _read_table(result.table_path)
    assert int(table[0]["hotspot_count"]) == result.rows[0].hotspot_count
    assert int(table[0]["hotspot_count"]) > 0


def test_in_process_no_temporary_files(in_process_run):
    output_dir, _ = in_process_run
    assert not [path.name for path in output_dir.iterdir() if path.name.startswith(".")]


def test_in_process_read_threads_reach_slide(in_process_run):
    output_dir, _ = in_process_run
    assert _read_summary(output_dir, REAL_SLIDE)["read_threads"] == 1


def test_in_process_threshold_in_row(in_process_run):
    _, result = in_process_run
    assert result.rows[0].threshold == StubDetector().score_thresh


def test_summary_contains_hotspot(in_process_run):
    output_dir, result = in_process_run
    hotspot = _read_summary(output_dir, REAL_SLIDE)["hotspot"]
    assert hotspot["count"] == result.rows[0].hotspot_count
    assert hotspot["l0_centre_xy"] == [result.rows[0].hotspot_x_px, result.rows[0].hotspot_y_px]
    assert hotspot["kind"] == "rectangle"


def test_summary_hotspot_matches_geojson(in_process_run, shared_data):
    output_dir, _ = in_process_run
    summary = _read_summary(output_dir, REAL_SLIDE)
    hotspot, search = read_hotspot_geojson(hotspot_path(output_dir, shared_data / REAL_SLIDE))
    assert summary["hotspot"] == hotspot
    assert summary["hotspot_search"] == search == IN_PROCESS_SETTINGS.hotspot_search()


def test_finished_row_after_run(in_process_run, shared_data):
    output_dir, result = in_process_run
    row = finished_row(SlideSpec(shared_data / REAL_SLIDE), output_dir, IN_PROCESS_SETTINGS)
    assert row is not None
    assert row.status == "skipped"
    assert row.hotspot_count == result.rows[0].hotspot_count


def test_finished_row_other_model(in_process_run, shared_data):
    output_dir, _ = in_process_run
    spec = SlideSpec(shared_data / REAL_SLIDE)
    assert finished_row(spec, output_dir, IN_PROCESS_SETTINGS, model_sha256s=frozenset({"0" * 64})) is None


def test_finished_row_other_mpp(in_process_run, shared_data):
    output_dir, _ = in_process_run
    assert finished_row(SlideSpec(shared_data / REAL_SLIDE, mpp=0.3), output_dir, IN_PROCESS_SETTINGS) is None


def test_finished_row_with_journal(in_process_run, shared_data, tmp_path):
    output_dir, _ = in_process_run
    copy = tmp_path / "out"
    shutil.copytree(output_dir, copy)
    (copy / f"{REAL_SLIDE.stem}.journal.jsonl").write_text("")
    assert finished_row(SlideSpec(shared_data / REAL_SLIDE), copy, IN_PROCESS_SETTINGS) is None


def test_finished_row_without_summary_hotspot(in_process_run, shared_data, tmp_path):
    output_dir, _ = in_process_run
    copy = tmp_path / "out"
    shutil.copytree(output_dir, copy)
    summary_path = copy / f"{REAL_SLIDE.stem}.summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    del summary["hotspot"]
    summary_path.write_text(json.dumps(summary), encoding="utf-8")
    assert finished_row(SlideSpec(shared_data / REAL_SLIDE), copy, IN_PROCESS_SETTINGS) is None


def test_factory_pickles_and_hashes():
    factory = OnnxDetectorFactory(device="cpu", precision="int8")
    assert pickle.loads(pickle.dumps(factory)) == factory
    assert hash(factory) == hash(OnnxDetectorFactory(device="cpu", precision="int8"))


def test_factory_rejects_unknown_precision():
    with pytest.raises(ValueError, match="precision must be 'auto' or one of fp32, fp16, int8, got 'int4'"):
        OnnxDetectorFactory(precision="int4")


def test_factory_missing_variant(tmp_path):
    model = tmp_path / "model.onnx"
    shutil.copyfile(default_model_path(), model)
    with pytest.raises(ModelError, match=r"int8 variant .*model.int8.onnx of model .*model.onnx not found"):
        OnnxDetectorFactory(model_path=model, device="cpu", precision="int8")()


def test_factory_model_hashes(tmp_path):
    model = tmp_path / "model.onnx"
    shutil.copyfile(default_model_path(), model)
    assert OnnxDetectorFactory(model_path=model).model_sha256s() == {file_sha256(model)}
    assert OnnxDetectorFactory(model_path=model, precision="fp16").model_sha256s() == frozenset()


def test_model_error_stops_in_process_run(shared_data, tmp_path):
    factory = OnnxDetectorFactory(model_path=tmp_path / "missing.onnx", device="cpu")
    with pytest.raises(ModelError, match="missing.onnx"):
        run_cohort([shared_data / REAL_SLIDE], factory, tmp_path / "out")


def test_permanent_error_not_retried(shared_data, tmp_path):
    result = run_cohort([shared_data / BROKEN_SLIDE], StubDetector, tmp_path, settings=SETTINGS, retries=3)
    assert (result.rows[0].status, result.rows[0].attempts) == ("failed", 1)
    assert result.rows[0].retry is False


def test_no_table_when_asked(shared_data, tmp_path):
    result = run_cohort([shared_data / BROKEN_SLIDE], StubDetector, tmp_path, write_table=False)
    assert result.table_path is None
    assert list(tmp_path.iterdir()) == []


def test_retry_recovers_flaky_detector(shared_data, tmp_path):
    result = run_cohort([shared_data / REAL_SLIDE], FlakyDetector, tmp_path, settings=SETTINGS, retries=1)
    assert result.rows[0].status == "done"
    assert result.rows[0].attempts == 2


def test_rerun_with_other_threshold_runs_again(shared_data, tmp_path):
    slides = [shared_data / REAL_SLIDE]
    run_cohort(slides, StubDetector, tmp_path, settings=SETTINGS)
    settings = SlideSettings(min_tissue_share=0.2, threshold=0.95)
    result = run_cohort(slides, StubDetector, tmp_path, settings=settings)
    assert result.rows[0].status == "done"
    assert result.rows[0].num_figures == 0


def test_rerun_with_missing_thumbnail_runs_again(shared_data, tmp_path):
    slides = [shared_data / REAL_SLIDE]
    run_cohort(slides, StubDetector, tmp_path, settings=SETTINGS)
    thumbnail_path(tmp_path, slides[0]).unlink()
    result = run_cohort(slides, StubDetector, tmp_path, settings=SETTINGS)
    assert result.rows[0].status == "done"


# On a local Ray cluster


@pytest.fixture(scope="module")
def ray_runs(local_ray, cohort_slides, tmp_path_factory):
    """Run the cohort twice on Ray into one folder; return (folder, first result, second result)."""
    output_dir = tmp_path_factory.mktemp("ray_cohort")
    first = run_cohort(
        cohort_slides, StubDetector, output_dir, settings=SETTINGS, ray_address="local", retries=1
    )
    first_table = _read_table(first.table_path)
    second = run_cohort(
        cohort_slides, StubDetector, output_dir, settings=SETTINGS, ray_address="local", retries=1
    )
    return output_dir, first, first_table, second


def test_ray_two_done_one_failed(ray_runs):
    _, first, _, _ = ray_runs
    assert [row.status for row in first.rows] == ["done", "done", "failed"]


def test_ray_failure_not_retried(ray_runs):
    # A file no reader opens fails the same way on every attempt, so it is tried once.
    _, first, _, _ = ray_runs
    failed = first.rows[2]
    assert failed.attempts == 1
    assert failed.error.startswith("SlideOpenError: Failed to open slide")
    assert "broken.svs" in failed.error


def test_ray_table_columns(ray_runs):
    _, first, _, _ = ray_runs
    with first.table_path.open(encoding="utf-8") as file:
        assert tuple(next(csv.reader(file))) == TABLE_COLUMNS


def test_ray_table_rows(ray_runs):
    _, _, first_table, _ = ray_runs
    assert [row["status"] for row in first_table] == ["done", "done", "failed"]
    assert [row["slide"] for row in first_table] == ["cmu-1-small-region.svs", "cmu-copy.svs", "broken.svs"]


def test_ray_copy_gives_same_counts(ray_runs):
    _, _, first_table, _ = ray_runs
    original, copy, _ = first_table
    assert int(original["num_figures"]) > 0
    assert original["num_figures"] == copy["num_figures"]
    assert original["hotspot_count"] == copy["hotspot_count"]


def test_ray_failed_row_has_no_counts(ray_runs):
    _, _, first_table, _ = ray_runs
    assert first_table[2]["num_figures"] == ""
    assert first_table[2]["hotspot_count"] == ""


def test_ray_outputs_written(ray_runs, cohort_slides):
    output_dir, _, _, _ = ray_runs
    for slide in cohort_slides[:2]:
        assert hotspot_path(output_dir, slide).is_file()
        assert thumbnail_path(output_dir, slide).is_file()


def test_ray_rerun_skips_finished(ray_runs):
    _, _, _, second = ray_runs
    assert [row.status for row in second.rows] == ["skipped", "skipped", "failed"]


def test_ray_rerun_keeps_counts(ray_runs):
    _, first, _, second = ray_runs
    assert second.rows[0].num_figures == first.rows[0].num_figures
    assert second.rows[0].hotspot_count == first.rows[0].hotspot_count


def test_ray_rerun_runs_failed_again(ray_runs):
    _, _, _, second = ray_runs
    assert (second.rows[2].status, second.rows[2].attempts) == ("failed", 1)


def test_ray_retries_transient_error(local_ray, shared_data, tmp_path):
    # Each Ray worker's detector fails its first batch. Two workers fail at
    # most twice, so three attempts always finish the slide.
    result = run_cohort(
        [shared_data / REAL_SLIDE], FlakyDetector, tmp_path, settings=SETTINGS, ray_address="local", retries=2
    )
    assert result.rows[0].status == "done"
    assert result.rows[0].attempts >= 2


def test_ray_cluster_left_running(ray_runs, local_ray):
    assert local_ray.is_initialized()
