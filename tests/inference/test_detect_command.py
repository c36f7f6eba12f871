"""``midog detect`` end to end: the stub detector for the options, the shipped model on the real slides."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from midog.cli import build_parser, main
from midog.commands.detect import cohort_line, slide_line
from midog.inference.cohort import CohortResult, CohortRow, OnnxDetectorFactory
from midog.inference.hotspot import read_hotspot_geojson
from tests.conftest import REPO_ROOT
from tests.inference.stub_detector import StubDetector
from tests.inference.synthetic import draw_disc, pink_image, write_tiff

REAL_SLIDE = Path("slides") / "cmu-1-small-region.svs"
# OpenSlide rejects the first file; the second opens but its tiles fail to read.
BROKEN_SLIDES = (Path("slides") / "broken.svs", Path("slides") / "openslide_fixtures" / "unreadable.svs")

# The real slide is a 1.1 x 1.5 mm region with 0.6 mm² of tissue, so a 2 mm²
# window is at most 30 % tissue there; 0.2 lets the hotspot exist.
REAL_OPTIONS = ["--no-progress", "--device", "cpu", "--min-tissue-share", "0.2"]


@pytest.fixture
def stub_model(monkeypatch):
    """Make every ``OnnxDetectorFactory`` build the stub, for any --model value."""
    detector = StubDetector()
    monkeypatch.setattr(OnnxDetectorFactory, "__call__", lambda self: detector)
    return detector


@pytest.fixture(scope="module")
def two_disc_slide(tmp_path_factory):
    rgb = pink_image(1000, 700)
    draw_disc(rgb, (300.0, 300.0), 15.0)
    draw_disc(rgb, (700.0, 500.0), 15.0)
    return write_tiff(tmp_path_factory.mktemp("cli") / "two-discs.tiff", rgb)


def detect_help(capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser("detect").parse_args(["detect", "--help"])
    return " ".join(capsys.readouterr().out.split())


def parse_detect(*options: str):
    return build_parser("detect").parse_args(["detect", *options])


def read_table(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def run_detect(*arguments: str) -> tuple[int, list[str]]:
    """Run ``midog detect`` in this process; return the exit code and the lines printed to stdout."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exit_code = main(["detect", *arguments])
    return exit_code, stdout.getvalue().splitlines()


# Help and options


@pytest.mark.parametrize(
    "text",
    [
        "(default: midog-output)",
        "at the model's µm/px (default: 512)",
        "at most half the tile size (default: 64)",
        "(default: the model's threshold)",
        "level-0 µm/px of the slides",
        "0 reads them in the slide's process (default: 0)",
        "{auto,cpu,cuda}",
        "{rectangle,circle}",
        "window area in mm² (default: 2)",
        "ignored for circles (default: 4:3)",
        "share of the window that must be tissue, 0-1",
        "before it is reported as failed (default: 1)",
        "skipped on any rerun, with or without --resume",
        "cohort_summary.csv",
        "<stem>.hotspot.geojson",
        "<stem>.thumbnail.png",
        "midog detect slide.svs --output out/",
        "midog detect cohort.csv --output out/",
        "midog detect slides/ --output out/ --ray",
    ],
)
def test_help_gives_units_and_defaults(capsys, text):
    assert text in detect_help(capsys)


def test_hotspot_defaults():
    args = parse_detect("slide.svs")
    assert (args.hotspot_shape, args.hotspot_area, args.min_tissue_share) == ("rectangle", 2.0, 0.5)
    assert args.hotspot_aspect == pytest.approx(4 / 3)


@pytest.mark.parametrize("text, ratio", [("16:9", 16 / 9), ("1.5", 1.5), ("1:1", 1.0)])
def test_hotspot_aspect_forms(text, ratio):
    assert parse_detect("slide.svs", "--hotspot-aspect", text).hotspot_aspect == pytest.approx(ratio)


@pytest.mark.parametrize(
    "options, address",
    [
        ([], None),
        (["--ray"], "local"),
        (["--ray", "auto"], "auto"),
        (["--ray", "127.0.0.1:6379"], "127.0.0.1:6379"),
        (["--ray=ray://127.0.0.1:10001"], "ray://127.0.0.1:10001"),
    ],
)
def test_ray_address_forms(options, address):
    assert parse_detect("slide.svs", *options).ray == address


def test_ray_before_slides_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_detect("--ray", "slides/")
    assert exit_info.value.code == 2
    assert "put --ray after the slides" in capsys.readouterr().err


@pytest.mark.parametrize(
    "options",
    [
        ["--overlap", "300"],
        ["--threshold", "1.5"],
        ["--tile-size", "16"],
        ["--workers", "-1"],
        ["--mpp", "0"],
        ["--retries", "-1"],
        ["--hotspot-area", "0"],
        ["--hotspot-area", "inf"],
        ["--min-tissue-share", "1.5"],
        ["--hotspot-shape", "hexagon"],
        ["--hotspot-aspect", "4:0"],
        ["--hotspot-aspect", "wide"],
        ["--ray", "127.0.0.1:99999"],
    ],
)
def test_detect_rejects_invalid_option(stub_model, two_disc_slide, tmp_path, options):
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", str(two_disc_slide), "--output", str(tmp_path), *options])
    assert exit_info.value.code == 2
    assert stub_model.num_calls == 0


# Printed lines


def _row(**fields) -> CohortRow:
    values = {"slide": "a.svs", "path": "/data/a.svs", "status": "done", "attempts": 1, "threshold": 0.5}
    values.update(fields)
    return CohortRow(**values)


def test_slide_line_one_figure():
    row = _row(num_figures=1, tissue_area_mm2=0.6, figures_per_mm2=1.67, hotspot_count=1, seconds=9.4)
    assert slide_line(row, 2.0) == (
        "a.svs: done in 9.4 s: 1 mitotic figure (score >= 0.5), tissue 0.60 mm², 1.67 figures/mm², "
        "hotspot 1 in 2 mm²"
    )


def test_slide_line_skipped_without_hotspot():
    row = _row(status="skipped", attempts=0, num_figures=3, tissue_area_mm2=1.0, figures_per_mm2=3.0)
    assert slide_line(row, 2.0) == (
        "a.svs: skipped, complete outputs of an earlier run: 3 mitotic figures (score >= 0.5), "
        "tissue 1.00 mm², 3.00 figures/mm², no hotspot"
    )


def test_slide_line_failed():
    row = _row(status="failed", error="SlideOpenError: Failed to open slide /data/a.svs")
    assert (
        slide_line(row, 2.0)
        == "a.svs: failed after 1 attempt: SlideOpenError: Failed to open slide /data/a.svs"
    )


def test_cohort_line_one_slide(tmp_path):
    result = CohortResult([_row()], tmp_path / "cohort_summary.csv")
    assert (
        cohort_line(result)
        == f"1 slide: 1 done, 0 skipped, 0 failed; table {tmp_path / 'cohort_summary.csv'}"
    )


# The stub detector on synthetic slides


def test_detect_prints_summary(stub_model, two_disc_slide, tmp_path):
    exit_code, lines = run_detect(str(two_disc_slide), "--output", str(tmp_path), "--no-progress")
    assert exit_code == 0
    assert lines[0].startswith("two-discs.tiff: done in ")
    assert ": 2 mitotic figures (score >= 0.5), tissue 0.04 mm²" in lines[0]
    assert len(lines) == 1


def test_detect_writes_outputs(stub_model, two_disc_slide, tmp_path):
    run_detect(str(two_disc_slide), "--output", str(tmp_path), "--no-progress")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "two-discs.csv", "two-discs.geojson", "two-discs.hotspot.geojson",
        "two-discs.mitotic-figures.json", "two-discs.summary.json", "two-discs.thumbnail.png",
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["broken.svs", "unreadable.svs"])
def test_detect_one_failing_slide_leaves_nothing(shared_data, tmp_path, name):
    (slide,) = [shared_data / path for path in BROKEN_SLIDES if path.name == name]
    output_dir = tmp_path / "out"
    exit_code, lines = run_detect(str(slide), "--output", str(output_dir), "--no-progress")
    assert exit_code == 1
    assert len(lines) == 1
    assert lines[0].startswith(f"{name}: failed after ")
    assert str(slide) in lines[0]
    assert not output_dir.exists()


def test_detect_bad_model_leaves_no_folder(shared_data, tmp_path, capsys):
    model = tmp_path / "model.onnx"
    model.write_text("not a model")
    output_dir = tmp_path / "out"
    exit_code, _ = run_detect(str(shared_data / REAL_SLIDE), "--model", str(model), "--output", str(output_dir))
    assert exit_code == 1
    assert "model.onnx is not a valid ONNX model" in capsys.readouterr().err
    assert not output_dir.exists()


def test_detect_keeps_existing_empty_folder(shared_data, tmp_path):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    slide = shared_data / BROKEN_SLIDES[0]
    exit_code, _ = run_detect(str(slide), "--output", str(output_dir), "--no-progress")
    assert exit_code == 1
    assert output_dir.is_dir()


def test_detect_threshold_option(stub_model, two_disc_slide, tmp_path):
    _, lines = run_detect(
        str(two_disc_slide), "--output", str(tmp_path), "--no-progress", "--threshold", "0.95"
    )
    assert "0 mitotic figures (score >= 0.95)" in lines[0]


def test_detect_options_reach_outputs(stub_model, two_disc_slide, tmp_path):
    options = ["--read-threads", "0", "--hotspot-shape", "circle", "--hotspot-area", "0.01"]
    run_detect(
        str(two_disc_slide), "--output", str(tmp_path), "--no-progress", *options, "--min-tissue-share", "0"
    )
    summary = read_json(tmp_path / "two-discs.summary.json")
    assert summary["read_threads"] == 0
    assert summary["hotspot"]["kind"] == "circle"
    assert summary["hotspot_search"]["area_mm2"] == 0.01
    assert summary["hotspot_search"]["min_tissue_share"] == 0.0


def test_detect_missing_slide(stub_model, tmp_path, capsys):
    missing = tmp_path / "missing.svs"
    assert main(["detect", str(missing), "--output", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip() == f"midog detect: error: Slide {missing} not found"


def test_detect_empty_folder(stub_model, tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    assert main(["detect", str(folder), "--output", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.startswith(f"midog detect: error: Folder {folder} contains no slide files")


def test_detect_glob_without_match(stub_model, tmp_path, capsys):
    pattern = str(tmp_path / "*.ndpi")
    assert main(["detect", pattern, "--output", str(tmp_path / "out")]) == 1
    assert (
        capsys.readouterr().err.strip() == f"midog detect: error: No slide file matches the pattern {pattern}"
    )


def test_detect_manifest_without_path_column(stub_model, tmp_path, capsys):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("slide,mpp\na.svs,0.25\n")
    assert main(["detect", str(manifest), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"midog detect: error: Manifest {manifest} has no 'path' column")
    assert err.count("\n") == 1


def test_detect_missing_model(two_disc_slide, tmp_path, capsys):
    model = tmp_path / "missing.onnx"
    assert (
        main(["detect", str(two_disc_slide), "--model", str(model), "--output", str(tmp_path / "out")]) == 1
    )
    assert str(model) in capsys.readouterr().err


def test_detect_unwritable_output(stub_model, two_disc_slide, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    assert main(["detect", str(two_disc_slide), "--output", str(blocker)]) == 1
    assert "blocker exists and is not a folder" in capsys.readouterr().err


def test_detect_checks_all_slides_first(stub_model, two_disc_slide, tmp_path):
    missing = tmp_path / "missing.svs"
    assert main(["detect", str(two_disc_slide), str(missing), "--output", str(tmp_path / "out")]) == 1
    assert stub_model.num_calls == 0
    assert not (tmp_path / "out").exists()


def test_detect_same_stem_rejected(stub_model, two_disc_slide, tmp_path, capsys):
    other = tmp_path / "two-discs.png"
    other.write_bytes(b"")
    assert main(["detect", str(two_disc_slide), str(other), "--output", str(tmp_path / "out")]) == 1
    assert "would both write two-discs.summary.json" in capsys.readouterr().err


def test_detect_mpp_needed_without_resolution(stub_model, tmp_path):
    path = tmp_path / "no-resolution.tiff"
    tifffile.imwrite(path, pink_image(600, 600), photometric="rgb", tile=(256, 256))
    exit_code, lines = run_detect(str(path), "--output", str(tmp_path / "out"), "--no-progress")
    assert exit_code == 1
    assert lines == [lines[0]]
    assert lines[0].startswith("no-resolution.tiff: failed after 1 attempt: SlideResolutionError:")
    assert "--mpp" in lines[0]
    assert not (tmp_path / "out").exists()


def test_detect_mpp_option(stub_model, tmp_path):
    path = tmp_path / "no-resolution.tiff"
    tifffile.imwrite(path, pink_image(600, 600), photometric="rgb", tile=(256, 256))
    exit_code, _ = run_detect(str(path), "--output", str(tmp_path / "out"), "--no-progress", "--mpp", "0.25")
    assert exit_code == 0


def test_inference_never_imports_torch():
    code = (
        "import sys, midog.cli, midog.commands.detect, midog.inference.runner, "
        "midog.inference.onnx_detector, midog.inference.cohort; "
        "midog.cli.build_parser('detect'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mmdet', 'mmcv', 'mmengine')))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    assert completed.stdout.strip() == "[]"


def test_summary_line_without_tissue(stub_model, tmp_path):
    path = write_tiff(tmp_path / "blank.tiff", np.full((300, 300, 3), 245, dtype=np.uint8))
    _, lines = run_detect(str(path), "--output", str(tmp_path / "out"), "--no-progress")
    assert lines[0].endswith(
        ": 0 mitotic figures (score >= 0.5), tissue 0.00 mm², no tissue found, no hotspot"
    )


# The shipped model on a folder with the real slide and two broken ones, then rerun through a glob


@pytest.fixture(scope="module")
def real_folder(shared_data, tmp_path_factory):
    """A folder of links to the real slide and the two broken slides."""
    folder = tmp_path_factory.mktemp("real_slides")
    for slide in (REAL_SLIDE, *BROKEN_SLIDES):
        (folder / slide.name).symlink_to(shared_data / slide)
    return folder


HOTSPOT_OPTIONS = ["--hotspot-shape", "circle", "--hotspot-area", "0.5"]


@pytest.fixture(scope="module")
def folder_run(real_folder, tmp_path_factory):
    """Run the folder, then rerun it as a glob pattern; return the folder, exit codes, lines and first table."""
    output_dir = tmp_path_factory.mktemp("folder_out")
    first = run_detect(str(real_folder), "--output", str(output_dir), *REAL_OPTIONS, *HOTSPOT_OPTIONS)
    first_table = read_table(output_dir / "cohort_summary.csv")
    rerun = run_detect(
        str(real_folder / "*.svs"), "--output", str(output_dir), *REAL_OPTIONS, *HOTSPOT_OPTIONS
    )
    return output_dir, first, first_table, rerun


def test_folder_run_exit_code(folder_run):
    _, (exit_code, _), _, _ = folder_run
    assert exit_code == 1


def test_folder_run_statuses(folder_run):
    _, _, table, _ = folder_run
    assert {row["slide"]: row["status"] for row in table} == {
        "broken.svs": "failed",
        "cmu-1-small-region.svs": "done",
        "unreadable.svs": "failed",
    }


def test_folder_run_failed_rows(folder_run):
    _, _, table, _ = folder_run
    errors = {row["slide"]: row["error"] for row in table}
    assert errors["broken.svs"].startswith("SlideOpenError: Failed to open slide")
    assert errors["unreadable.svs"].startswith("SlideReadError: Failed to read slide")
    # A file no reader opens fails the same way every time, so only a failed tile read is tried again.
    attempts = {row["slide"]: row["attempts"] for row in table if row["status"] == "failed"}
    assert attempts == {"broken.svs": "1", "unreadable.svs": "2"}


def test_folder_run_prints_slide_lines(folder_run):
    output_dir, (_, lines), _, _ = folder_run
    assert sorted(line.split(":")[0] for line in lines[:3]) == [
        "broken.svs", "cmu-1-small-region.svs", "unreadable.svs"
    ]  # fmt: skip
    assert lines[3] == f"3 slides: 1 done, 0 skipped, 2 failed; table {output_dir / 'cohort_summary.csv'}"


def test_folder_run_failed_line(folder_run):
    _, (_, lines), _, _ = folder_run
    assert any(line.startswith("broken.svs: failed after 1 attempt: SlideOpenError: ") for line in lines)


def test_folder_run_good_outputs_complete(folder_run):
    output_dir, _, _, _ = folder_run
    assert sorted(path.name for path in output_dir.iterdir()) == [
        "cmu-1-small-region.csv", "cmu-1-small-region.geojson", "cmu-1-small-region.hotspot.geojson",
        "cmu-1-small-region.mitotic-figures.json", "cmu-1-small-region.summary.json",
        "cmu-1-small-region.thumbnail.png", "cohort_summary.csv",
    ]  # fmt: skip


def test_folder_run_hotspot_options_in_geojson(folder_run):
    output_dir, _, _, _ = folder_run
    hotspot, search = read_hotspot_geojson(output_dir / "cmu-1-small-region.hotspot.geojson")
    assert (hotspot["kind"], hotspot["area_mm2"]) == ("circle", 0.5)
    assert (search["kind"], search["area_mm2"], search["min_tissue_share"]) == ("circle", 0.5, 0.2)


def test_folder_run_summary_hotspot_in_table(folder_run):
    output_dir, _, table, _ = folder_run
    summary = read_json(output_dir / "cmu-1-small-region.summary.json")
    (done,) = [row for row in table if row["status"] == "done"]
    assert summary["hotspot"]["count"] == int(done["hotspot_count"])
    assert summary["num_figures"] == int(done["num_figures"])


def test_glob_rerun_skips_finished(folder_run):
    _, _, _, (exit_code, lines) = folder_run
    assert exit_code == 1
    assert lines[0].startswith("cmu-1-small-region.svs: skipped, complete outputs of an earlier run: ")


def test_glob_rerun_retries_failed(folder_run):
    output_dir, _, _, (_, lines) = folder_run
    assert lines[-1] == f"3 slides: 0 done, 1 skipped, 2 failed; table {output_dir / 'cohort_summary.csv'}"


def test_glob_rerun_keeps_counts(folder_run):
    output_dir, _, first_table, _ = folder_run
    table = read_table(output_dir / "cohort_summary.csv")
    first = {row["slide"]: row for row in first_table}["cmu-1-small-region.svs"]
    again = {row["slide"]: row for row in table}["cmu-1-small-region.svs"]
    assert again["status"] == "skipped"
    assert (again["num_figures"], again["hotspot_count"]) == (first["num_figures"], first["hotspot_count"])


# The shipped model on Ray, from a manifest with an mpp column


@pytest.fixture(scope="module")
def ray_manifest_run(local_ray, shared_data, tmp_path_factory):
    """Run a manifest of the real slide at 0.5 µm/px on the local Ray instance; return folder, exit code, lines."""
    folder = tmp_path_factory.mktemp("ray_manifest")
    manifest = folder / "cohort.csv"
    manifest.write_text(f"path,mpp\n{shared_data / REAL_SLIDE},0.5\n", encoding="utf-8")
    output_dir = folder / "out"
    exit_code, lines = run_detect(str(manifest), "--output", str(output_dir), *REAL_OPTIONS, "--ray")
    return output_dir, exit_code, lines


def test_ray_manifest_exit_code(ray_manifest_run):
    _, exit_code, _ = ray_manifest_run
    assert exit_code == 0


def test_ray_manifest_table(ray_manifest_run):
    output_dir, _, _ = ray_manifest_run
    (row,) = read_table(output_dir / "cohort_summary.csv")
    assert (row["slide"], row["status"], row["attempts"]) == ("cmu-1-small-region.svs", "done", "1")
    assert row["hotspot_count"] != ""


def test_ray_manifest_mpp_reaches_slide(ray_manifest_run):
    output_dir, _, _ = ray_manifest_run
    assert read_json(output_dir / "cmu-1-small-region.summary.json")["mpp"] == 0.5


def test_ray_manifest_prints_lines(ray_manifest_run):
    output_dir, _, lines = ray_manifest_run
    assert any(line.startswith("cmu-1-small-region.svs: done in ") for line in lines)
    assert f"1 slide: 1 done, 0 skipped, 0 failed; table {output_dir / 'cohort_summary.csv'}" in lines


def test_ray_left_running(ray_manifest_run, local_ray):
    assert local_ray.is_initialized()
