"""The progress journal and resumable slide runs, in process and with a killed ``midog detect``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from midog.cli import main
from midog.inference.cohort import OnnxDetectorFactory
from midog.inference.resume import JOURNAL_SUFFIX, ResumeError, RunJournal, journal_path, settings_differences
from midog.inference.runner import detect_slide
from midog.io.writers import read_detections_csv
from midog.structures import Detections
from tests.conftest import REPO_ROOT
from tests.inference.stub_detector import StubDetector
from tests.inference.synthetic import draw_disc, pink_image, write_tiff

SETTINGS = {"tile_size_px": 512, "overlap_px": 64, "model_sha256": "abc"}
CLASS_NAMES = ("mitotic figure",)
OUTPUT_SUFFIXES = (".csv", ".geojson", ".mitotic-figures.json", ".summary.json")


def tile_detections(seed: int, count: int) -> Detections:
    rng = np.random.default_rng(seed)
    return Detections(rng.uniform(0, 512, (count, 2)), rng.uniform(0, 1, count), np.zeros(count), CLASS_NAMES)


def completed_outputs(folder, stem: str) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name in {stem + s for s in OUTPUT_SUFFIXES})


def stall_detector(detector: StubDetector, at_call: int, exception: type[BaseException]) -> StubDetector:
    """Make ``detector`` raise ``exception`` on its call number ``at_call`` (0-based); its type stays the same."""
    original = detector.detect

    def detect(tiles):
        if detector.num_calls == at_call:
            raise exception("stopped by the test")
        return original(tiles)

    detector.detect = detect  # type: ignore[method-assign]
    return detector


# The journal itself.


def test_journal_round_trip_is_exact(tmp_path):
    path = tmp_path / f"slide{JOURNAL_SUFFIX}"
    written = {3: tile_detections(0, 5), 7: tile_detections(1, 0), 1: tile_detections(2, 3)}
    with RunJournal.start(path, SETTINGS) as journal:
        journal.append([3, 7], [written[3], written[7]])
        journal.append([1], [written[1]])
        read = dict(journal.iter_tiles(CLASS_NAMES))
    assert sorted(read) == [1, 3, 7]
    for index, detections in written.items():
        assert np.array_equal(read[index].xy, detections.xy)
        assert np.array_equal(read[index].scores, detections.scores)


def test_journal_one_line_per_batch(tmp_path):
    path = tmp_path / f"slide{JOURNAL_SUFFIX}"
    with RunJournal.start(path, SETTINGS) as journal:
        journal.append([0, 1], [tile_detections(0, 2), tile_detections(1, 2)])
        journal.append([2], [tile_detections(2, 2)])
    assert len(path.read_bytes().splitlines()) == 3


def test_journal_resume_lists_finished(tmp_path):
    path = tmp_path / f"slide{JOURNAL_SUFFIX}"
    with RunJournal.start(path, SETTINGS) as journal:
        journal.append([4, 5], [tile_detections(0, 1), tile_detections(1, 1)])
    with RunJournal.resume(path, SETTINGS, "slide.svs") as resumed:
        assert resumed.finished_tiles == {4, 5}


def test_journal_drops_torn_line(tmp_path):
    path = tmp_path / f"slide{JOURNAL_SUFFIX}"
    with RunJournal.start(path, SETTINGS) as journal:
        journal.append([0], [tile_detections(0, 2)])
    whole_size = path.stat().st_size
    with path.open("ab") as handle:
        handle.write(b'{"tiles": [{"tile": 1, "xy": [1.5, ')
    with RunJournal.resume(path, SETTINGS, "slide.svs") as resumed:
        assert resumed.finished_tiles == {0}
    assert path.stat().st_size == whole_size


def test_journal_appends_after_torn_line(tmp_path):
    path = tmp_path / f"slide{JOURNAL_SUFFIX}"
    with RunJournal.start(path, SETTINGS) as journal:
        journal.append([0], [tile_detections(0, 2)])
    with path.open("ab") as handle:
        handle.write(b'{"tiles": [{"ti')
    with RunJournal.resume(path, SETTINGS, "slide.svs") as resumed:
        resumed.append([1], [tile_detections(1, 2)])
        assert sorted(index for index, _ in resumed.iter_tiles(CLASS_NAMES)) == [0, 1]


def test_journal_invalid_middle_line(tmp_path):
    path = tmp_path / f"slide{JOURNAL_SUFFIX}"
    with RunJournal.start(path, SETTINGS) as journal:
        journal.append([0], [tile_detections(0, 2)])
    header, batch = path.read_bytes().splitlines()
    path.write_bytes(header + b"\n" + b"not json\n" + batch + b"\n")
    with pytest.raises(ResumeError, match="line 2 of journal"):
        RunJournal.resume(path, SETTINGS, "slide.svs")


def test_journal_rejects_other_settings(tmp_path):
    path = tmp_path / f"slide{JOURNAL_SUFFIX}"
    RunJournal.start(path, SETTINGS).close()
    with pytest.raises(ResumeError, match=r"overlap_px: 64 -> 32"):
        RunJournal.resume(path, {**SETTINGS, "overlap_px": 32}, "slide.svs")


def test_journal_without_header_restarts(tmp_path):
    path = tmp_path / f"slide{JOURNAL_SUFFIX}"
    path.write_bytes(b'{"form')
    with RunJournal.resume(path, SETTINGS, "slide.svs") as journal:
        assert journal.finished_tiles == set()
    assert json.loads(path.read_bytes().splitlines()[0])["settings"] == SETTINGS


def test_settings_differences_lists_changes():
    assert settings_differences({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == ["b: 2 -> 3", "c: None -> 4"]


# Runs in this process: a 1856 x 1856 px slide is 4 x 4 tiles of 512 px.


@pytest.fixture(scope="module")
def grid_slide(tmp_path_factory):
    rgb = pink_image(1856, 1856)
    rng = np.random.default_rng(3)
    for x, y in rng.uniform(40, 1816, size=(14, 2)):
        draw_disc(rgb, (float(x), float(y)), 12.0)
    # Discs on the seams between columns 0 and 1 and rows 1 and 2.
    draw_disc(rgb, (480.0, 300.0), 12.0)
    draw_disc(rgb, (1000.0, 928.0), 12.0)
    return write_tiff(tmp_path_factory.mktemp("grid") / "grid.tiff", rgb)


@pytest.fixture(scope="module")
def clean_run(grid_slide, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("clean")
    detect_slide(grid_slide, StubDetector(), output_dir, batch_size=2, progress=False)
    return output_dir


def test_clean_run_removes_journal(clean_run):
    assert not journal_path(clean_run, "grid.tiff").exists()


def test_journal_grows_per_batch(grid_slide, tmp_path):
    detector = StubDetector()
    original = detector.detect
    lines_seen = []

    def detect(tiles):
        lines_seen.append(len(journal_path(tmp_path, grid_slide).read_bytes().splitlines()))
        return original(tiles)

    detector.detect = detect  # type: ignore[method-assign]
    detect_slide(grid_slide, detector, tmp_path, batch_size=4, progress=False)
    # Header, then one line per finished batch of 4 tiles.
    assert lines_seen == [1, 2, 3, 4]


@pytest.fixture
def interrupted_run(grid_slide, tmp_path):
    """Stop a run with KeyboardInterrupt at its fourth batch of two tiles."""
    detector = stall_detector(StubDetector(), 3, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        detect_slide(grid_slide, detector, tmp_path, batch_size=2, progress=False)
    return tmp_path


def test_interrupted_run_keeps_journal(interrupted_run):
    lines = journal_path(interrupted_run, "grid.tiff").read_bytes().splitlines()
    assert len(lines) == 1 + 3


def test_interrupted_run_has_no_outputs(interrupted_run):
    assert completed_outputs(interrupted_run, "grid") == []


def test_resume_reads_remaining_tiles(grid_slide, interrupted_run):
    detector = StubDetector(record_tiles=True)
    detect_slide(grid_slide, detector, interrupted_run, batch_size=2, resume=True, progress=False)
    assert len(detector.tiles_seen) == 16 - 6


def test_resume_matches_clean_run(grid_slide, interrupted_run, clean_run):
    result = detect_slide(
        grid_slide, StubDetector(), interrupted_run, batch_size=2, resume=True, progress=False
    )
    expected = read_detections_csv(clean_run / "grid.csv")
    assert read_detections_csv(result.outputs.csv).equals(expected)


def test_resume_other_batch_size(grid_slide, interrupted_run, clean_run):
    result = detect_slide(
        grid_slide, StubDetector(), interrupted_run, batch_size=5, resume=True, progress=False
    )
    expected = json.loads((clean_run / "grid.mitotic-figures.json").read_text())
    assert json.loads(result.outputs.midog_json.read_text()) == expected


def test_resume_other_overlap_rejected(grid_slide, interrupted_run):
    with pytest.raises(ResumeError, match="overlap_px: 64 -> 32"):
        detect_slide(grid_slide, StubDetector(), interrupted_run, overlap_px=32, resume=True, progress=False)


def test_resume_rejection_keeps_journal(grid_slide, interrupted_run):
    journal = journal_path(interrupted_run, "grid.tiff")
    before = journal.read_bytes()
    with pytest.raises(ResumeError):
        detect_slide(grid_slide, StubDetector(), interrupted_run, overlap_px=32, resume=True, progress=False)
    assert journal.read_bytes() == before


def test_run_without_resume_starts_over(grid_slide, interrupted_run):
    detector = StubDetector(record_tiles=True)
    detect_slide(grid_slide, detector, interrupted_run, batch_size=2, progress=False)
    assert len(detector.tiles_seen) == 16


def test_resume_finished_reads_nothing(grid_slide, clean_run):
    detector = StubDetector()
    result = detect_slide(grid_slide, detector, clean_run, batch_size=2, resume=True, progress=False)
    assert (detector.num_calls, result.num_figures) == (0, 16)


def test_resume_finished_candidates(grid_slide, clean_run):
    result = detect_slide(grid_slide, StubDetector(), clean_run, resume=True, progress=False)
    reference = json.loads((clean_run / "grid.mitotic-figures.json").read_text())["points"]
    assert len(result.candidates) == len(reference)


def test_resume_finished_other_threshold_rejected(grid_slide, clean_run):
    with pytest.raises(ResumeError, match=r"threshold: 0\.5 -> 0\.7"):
        detect_slide(grid_slide, StubDetector(), clean_run, threshold=0.7, resume=True, progress=False)


def test_new_run_removes_stale_summary(grid_slide, tmp_path):
    detect_slide(grid_slide, StubDetector(), tmp_path, progress=False)
    with pytest.raises(KeyboardInterrupt):
        detect_slide(
            grid_slide, stall_detector(StubDetector(), 1, KeyboardInterrupt), tmp_path, progress=False
        )
    assert not (tmp_path / "grid.summary.json").exists()


# A real ``midog detect`` process, killed while its detector is stalled.

KILL_SCRIPT = """
import pathlib, sys, time
from midog.cli import main
from midog.inference.cohort import OnnxDetectorFactory
from tests.inference.stub_detector import StubDetector

marker, stall_at = pathlib.Path(sys.argv[1]), int(sys.argv[2])
detector = StubDetector()
original = detector.detect

def detect(tiles):
    if detector.num_calls == stall_at:
        marker.write_text("stalled")
        time.sleep(600)
    return original(tiles)

detector.detect = detect
OnnxDetectorFactory.__call__ = lambda self: detector
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture
def stub_model(monkeypatch):
    """Make every ``OnnxDetectorFactory`` build the stub."""
    detector = StubDetector()
    monkeypatch.setattr(OnnxDetectorFactory, "__call__", lambda self: detector)
    return detector


@pytest.fixture
def killed_run(grid_slide, tmp_path):
    """Run ``midog detect`` in a subprocess, SIGKILL it at its fourth batch of two tiles, return the output folder."""
    script = tmp_path / "stalling_detect.py"
    script.write_text(KILL_SCRIPT)
    marker = tmp_path / "stalled"
    output_dir = tmp_path / "out"
    args = ["detect", str(grid_slide), "--output", str(output_dir), "--batch-size", "2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, str(script), str(marker), "3", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            if process.poll() is not None:
                pytest.fail(
                    f"midog detect exited with {process.returncode}: {process.stderr.read().decode()}"
                )
            if time.monotonic() > deadline:
                pytest.fail("midog detect did not reach its fourth batch within 120 s")
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    return output_dir


def test_killed_run_no_complete_outputs(killed_run):
    assert completed_outputs(killed_run, "grid") == []


def test_killed_run_journal_batches(killed_run):
    lines = journal_path(killed_run, "grid.tiff").read_bytes().splitlines()
    assert len(lines) == 1 + 3


def test_killed_run_resume_matches(stub_model, grid_slide, killed_run, clean_run):
    assert (
        main(
            [
                "detect",
                str(grid_slide),
                "--output",
                str(killed_run),
                "--batch-size",
                "2",
                "--no-progress",
                "--resume",
            ]
        )
        == 0
    )
    expected = read_detections_csv(clean_run / "grid.csv")
    assert read_detections_csv(killed_run / "grid.csv").equals(expected)


def test_killed_run_resume_counts(stub_model, grid_slide, killed_run):
    main(
        [
            "detect",
            str(grid_slide),
            "--output",
            str(killed_run),
            "--batch-size",
            "2",
            "--no-progress",
            "--resume",
        ]
    )
    summary = json.loads((killed_run / "grid.summary.json").read_text())
    assert (summary["num_tiles_resumed"], stub_model.num_calls) == (6, 5)


def test_killed_run_resume_removes_journal(stub_model, grid_slide, killed_run):
    main(
        [
            "detect",
            str(grid_slide),
            "--output",
            str(killed_run),
            "--batch-size",
            "2",
            "--no-progress",
            "--resume",
        ]
    )
    assert not journal_path(killed_run, "grid.tiff").exists()


def test_killed_run_resume_other_tile_size(stub_model, grid_slide, killed_run, capsys):
    # The slide fails, on its one attempt since the mismatch would repeat, and its journal is kept
    # for a resume with the right settings.
    code = main(
        [
            "detect",
            str(grid_slide),
            "--output",
            str(killed_run),
            "--tile-size",
            "256",
            "--overlap",
            "32",
            "--no-progress",
            "--resume",
        ]
    )
    assert (code, stub_model.num_calls) == (1, 0)
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("grid.tiff: failed after 1 attempt: ResumeError: ")
    assert "tile_size_px: 512 -> 256" in line
    assert journal_path(killed_run, "grid.tiff").exists()


def test_resume_skips_finished_slide(stub_model, grid_slide, clean_run, tmp_path, capsys):
    # detect_slide alone wrote these outputs, so the command adds only the hotspot and the thumbnail.
    output_dir = tmp_path / "out"
    shutil.copytree(clean_run, output_dir)
    assert main(["detect", str(grid_slide), "--output", str(output_dir), "--no-progress", "--resume"]) == 0
    assert stub_model.num_calls == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("grid.tiff: done in ")
    assert ": 16 mitotic figures (score >= 0.5)" in line
