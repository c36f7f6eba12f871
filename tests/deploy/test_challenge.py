"""The challenge entry point on synthetic images: settings, pixel sizes, output checks and input errors.

A stand-in detector that finds dark discs runs through the real runner, so
the millimetre coordinates can be checked exactly without a trained model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from midog import challenge
from midog.challenge import OUTPUT_NAME, ChallengeSettings, run
from midog.errors import MidogError, OutputError, SlideOpenError, SlideReadError
from midog.io.writers import validate_midog_json
from tests.conftest import REPO_ROOT
from tests.deploy.images import write_metaimage, write_tiff_without_resolution
from tests.inference.stub_detector import StubDetector
from tests.inference.synthetic import draw_disc, pink_image, write_tiff

ENTRYPOINT = REPO_ROOT / "deploy" / "entrypoint.py"

# Disc centres in level-0 px of a 1200 x 900 px image. The second lies where the
# first two tiles overlap at 0.25 µm/px (x = 448 to 512).
DISC_CENTRES_PX = ((150.5, 120.5), (480.5, 300.5), (900.5, 700.5), (1100.5, 820.5))
IMAGE_SIZE_PX = (1200, 900)


def disc_image(radius_px: float = 12.0) -> np.ndarray:
    rgb = pink_image(*IMAGE_SIZE_PX)
    for centre in DISC_CENTRES_PX:
        draw_disc(rgb, centre, radius_px)
    return rgb


def points_mm(output_dir: Path) -> np.ndarray:
    obj = json.loads((output_dir / OUTPUT_NAME).read_text())
    return np.array([point["point"][:2] for point in obj["points"]], dtype=np.float64).reshape(-1, 2)


def max_error_um(found_mm: np.ndarray, expected_px: np.ndarray, mpp: float) -> float:
    """Largest distance in µm from an expected centre to the nearest found point."""
    expected_mm = expected_px * mpp / 1000.0
    distances_mm = np.linalg.norm(expected_mm[:, None, :] - found_mm[None, :, :], axis=-1)
    return float(distances_mm.min(axis=1).max() * 1000.0)


@pytest.fixture
def folders(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """Input and output folders, with temporary files kept in a folder of their own."""
    input_dir, output_dir, scratch_dir = tmp_path / "input", tmp_path / "output", tmp_path / "scratch"
    for folder in (input_dir, output_dir, scratch_dir):
        folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_dir))
    return input_dir, output_dir


# Settings


def test_settings_defaults():
    settings = ChallengeSettings.from_environment({})
    assert settings == ChallengeSettings(
        input_dir=Path("/input/images/histopathology-roi-cropout"),
        output_dir=Path("/output"),
        model_path=None,
        threshold=None,
        device="auto",
    )


def test_settings_from_environment():
    environ = {
        "MIDOG_INPUT_DIR": "/data/in",
        "MIDOG_OUTPUT_DIR": "/data/out",
        "MIDOG_MODEL": "/models/m.onnx",
        "MIDOG_THRESHOLD": "0.6",
        "MIDOG_DEVICE": "cpu",
    }
    settings = ChallengeSettings.from_environment(environ)
    assert settings == ChallengeSettings(
        Path("/data/in"), Path("/data/out"), Path("/models/m.onnx"), 0.6, "cpu"
    )


def test_settings_empty_values_use_defaults():
    settings = ChallengeSettings.from_environment({"MIDOG_THRESHOLD": " ", "MIDOG_MODEL": ""})
    assert (settings.threshold, settings.model_path) == (None, None)


@pytest.mark.parametrize("text", ["high", "1.5", "-0.1", "nan"])
def test_settings_bad_threshold(text):
    with pytest.raises(MidogError, match=f"MIDOG_THRESHOLD={text!r}"):
        ChallengeSettings.from_environment({"MIDOG_THRESHOLD": text})


def test_settings_bad_device():
    with pytest.raises(MidogError, match="MIDOG_DEVICE='gpu'"):
        ChallengeSettings.from_environment({"MIDOG_DEVICE": "gpu"})


# Runs with the stand-in detector


@pytest.fixture
def tiff_run(folders):
    input_dir, output_dir = folders
    write_tiff(input_dir / "roi.tiff", disc_image(), mpp=0.25)
    result = run(ChallengeSettings(input_dir, output_dir), detector=StubDetector())
    return result, output_dir


def test_tiff_points_at_mm(tiff_run):
    _, output_dir = tiff_run
    assert max_error_um(points_mm(output_dir), np.array(DISC_CENTRES_PX), 0.25) < 0.5


def test_tiff_one_point_per_disc(tiff_run):
    _, output_dir = tiff_run
    assert len(points_mm(output_dir)) == len(DISC_CENTRES_PX)


def test_tiff_json_valid(tiff_run):
    _, output_dir = tiff_run
    validate_midog_json(json.loads((output_dir / OUTPUT_NAME).read_text()))


def test_tiff_points_named_by_threshold(tiff_run):
    _, output_dir = tiff_run
    names = {point["name"] for point in json.loads((output_dir / OUTPUT_NAME).read_text())["points"]}
    assert names == {"mitotic figure"}


def test_tiff_result_counts(tiff_run):
    result, _ = tiff_run
    assert (result.num_figures, result.threshold, result.mpp) == (4, 0.5, 0.25)


def test_output_folder_only_json(tiff_run):
    _, output_dir = tiff_run
    assert sorted(p.name for p in output_dir.iterdir()) == [OUTPUT_NAME]


def test_scratch_files_removed(tiff_run):
    assert list(Path(tempfile.gettempdir()).iterdir()) == []


def test_resampled_tiff_points_at_mm(folders):
    # At 0.5 µm/px the runner upsamples 2x for the 0.25 µm/px detector.
    input_dir, output_dir = folders
    write_tiff(input_dir / "roi.tif", disc_image(radius_px=8.0), mpp=0.5)
    result = run(ChallengeSettings(input_dir, output_dir), detector=StubDetector())
    assert result.mpp == 0.5
    assert max_error_um(points_mm(output_dir), np.array(DISC_CENTRES_PX), 0.5) < 1.0


def test_threshold_setting_renames_points(folders):
    input_dir, output_dir = folders
    write_tiff(input_dir / "roi.tif", disc_image(), mpp=0.25)
    run(ChallengeSettings(input_dir, output_dir, threshold=0.95), detector=StubDetector(score=0.9))
    names = {point["name"] for point in json.loads((output_dir / OUTPUT_NAME).read_text())["points"]}
    assert names == {"non-mitotic figure"}


def test_tiff_without_resolution_read_at_default(folders, caplog):
    input_dir, output_dir = folders
    write_tiff_without_resolution(input_dir / "roi.tif", disc_image())
    with caplog.at_level(logging.WARNING, logger="midog.challenge"):
        result = run(ChallengeSettings(input_dir, output_dir), detector=StubDetector())
    assert result.mpp == 0.25
    assert "roi.tif has no usable pixel size in its file, so it is read at 0.25 µm/px" in caplog.text
    assert max_error_um(points_mm(output_dir), np.array(DISC_CENTRES_PX), 0.25) < 0.5


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zlib"])
def test_mha_points_at_mm(folders, compressed):
    # ElementSpacing 0.0003 mm is 0.3 µm/px. Reading it as 0.25 would put the points 17% off.
    input_dir, output_dir = folders
    write_metaimage(
        input_dir / "roi.mha", disc_image(radius_px=10.0), (0.0003, 0.0003), compressed=compressed
    )
    result = run(ChallengeSettings(input_dir, output_dir), detector=StubDetector())
    assert result.mpp == pytest.approx(0.3)
    assert max_error_um(points_mm(output_dir), np.array(DISC_CENTRES_PX), 0.3) < 1.0


def test_mha_without_spacing_read_at_default(folders, caplog):
    input_dir, output_dir = folders
    write_metaimage(input_dir / "roi.mha", disc_image(), spacing_mm=(1.0, 1.0))
    with caplog.at_level(logging.WARNING, logger="midog.challenge"):
        result = run(ChallengeSettings(input_dir, output_dir), detector=StubDetector())
    assert result.mpp == 0.25
    assert "roi.mha has no usable pixel size" in caplog.text


def test_upper_case_suffix_accepted(folders):
    input_dir, output_dir = folders
    write_tiff(input_dir / "ROI.TIFF", disc_image(), mpp=0.25)
    result = run(ChallengeSettings(input_dir, output_dir), detector=StubDetector())
    assert result.image_path.name == "ROI.TIFF"


def test_other_files_ignored(folders, caplog):
    input_dir, output_dir = folders
    write_tiff(input_dir / "roi.tif", disc_image(), mpp=0.25)
    (input_dir / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING, logger="midog.challenge"):
        run(ChallengeSettings(input_dir, output_dir), detector=StubDetector())
    assert "Ignoring 1 files" in caplog.text


def test_no_points_gives_empty_list(folders):
    input_dir, output_dir = folders
    write_tiff(input_dir / "roi.tif", pink_image(600, 400), mpp=0.25)
    run(ChallengeSettings(input_dir, output_dir), detector=StubDetector())
    assert json.loads((output_dir / OUTPUT_NAME).read_text())["points"] == []


def test_invalid_probability_writes_nothing(folders):
    input_dir, output_dir = folders
    write_tiff(input_dir / "roi.tif", disc_image(), mpp=0.25)
    with pytest.raises(OutputError, match="probability 1.5"):
        run(ChallengeSettings(input_dir, output_dir), detector=StubDetector(score=1.5))
    assert list(output_dir.iterdir()) == []


# Input errors: a clear message and no output


def assert_no_output(output_dir: Path) -> None:
    assert list(output_dir.iterdir()) == []


def test_missing_input_folder(folders):
    input_dir, output_dir = folders
    with pytest.raises(SlideOpenError, match=f"Input folder {input_dir / 'absent'} not found"):
        run(ChallengeSettings(input_dir / "absent", output_dir), detector=StubDetector())
    assert_no_output(output_dir)


def test_empty_input_folder(folders):
    input_dir, output_dir = folders
    with pytest.raises(SlideOpenError, match="it is empty"):
        run(ChallengeSettings(input_dir, output_dir), detector=StubDetector())
    assert_no_output(output_dir)


def test_folder_without_image_names_files(folders):
    input_dir, output_dir = folders
    (input_dir / "roi.png").write_bytes(b"")
    with pytest.raises(SlideOpenError, match=r"it contains roi\.png"):
        run(ChallengeSettings(input_dir, output_dir), detector=StubDetector())


def test_two_images(folders):
    input_dir, output_dir = folders
    write_tiff(input_dir / "a.tif", disc_image(), mpp=0.25)
    write_metaimage(input_dir / "b.mha", disc_image())
    with pytest.raises(SlideOpenError, match=r"has 2 images \(a\.tif, b\.mha\)"):
        run(ChallengeSettings(input_dir, output_dir), detector=StubDetector())
    assert_no_output(output_dir)


def test_unreadable_image(folders, shared_data):
    input_dir, output_dir = folders
    shutil.copy(shared_data / "slides" / "broken.svs", input_dir / "roi.tif")
    with pytest.raises(SlideOpenError, match="roi.tif"):
        run(ChallengeSettings(input_dir, output_dir), detector=StubDetector())
    assert_no_output(output_dir)


def test_truncated_tiff(folders):
    input_dir, output_dir = folders
    path = write_tiff(input_dir / "roi.tif", disc_image(), mpp=0.25)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises((SlideOpenError, SlideReadError), match="roi.tif"):
        run(ChallengeSettings(input_dir, output_dir), detector=StubDetector())
    assert_no_output(output_dir)
    assert list(Path(tempfile.gettempdir()).iterdir()) == []


def test_truncated_mha(folders):
    input_dir, output_dir = folders
    path = write_metaimage(input_dir / "roi.mha", disc_image(), compressed=True)
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(SlideReadError, match="roi.mha"):
        run(ChallengeSettings(input_dir, output_dir), detector=StubDetector())
    assert_no_output(output_dir)


# The command line: exit codes and one-line errors


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def test_main_error_exit_code(folders, monkeypatch):
    input_dir, output_dir = folders
    monkeypatch.setenv("MIDOG_INPUT_DIR", str(input_dir))
    monkeypatch.setenv("MIDOG_OUTPUT_DIR", str(output_dir))
    assert challenge.main([]) == 1


def test_main_error_one_line(folders, monkeypatch, capsys):
    input_dir, output_dir = folders
    write_tiff(input_dir / "a.tif", disc_image(), mpp=0.25)
    write_tiff(input_dir / "b.tif", disc_image(), mpp=0.25)
    monkeypatch.setenv("MIDOG_INPUT_DIR", str(input_dir))
    monkeypatch.setenv("MIDOG_OUTPUT_DIR", str(output_dir))
    challenge.main([])
    assert error_lines(capsys.readouterr().err) == [
        f"midog-challenge: error: Input folder {input_dir} has 2 images (a.tif, b.tif); expected exactly one"
    ]


def test_main_bad_threshold(monkeypatch, capsys):
    monkeypatch.setenv("MIDOG_THRESHOLD", "2")
    assert challenge.main([]) == 1
    assert "MIDOG_THRESHOLD='2' is not a number in 0-1" in capsys.readouterr().err


def test_main_missing_model(folders, monkeypatch, capsys):
    input_dir, output_dir = folders
    write_tiff(input_dir / "roi.tif", disc_image(), mpp=0.25)
    monkeypatch.setenv("MIDOG_INPUT_DIR", str(input_dir))
    monkeypatch.setenv("MIDOG_OUTPUT_DIR", str(output_dir))
    monkeypatch.setenv("MIDOG_MODEL", str(input_dir / "absent.onnx"))
    assert challenge.main([]) == 1
    assert "absent.onnx not found" in capsys.readouterr().err
    assert_no_output(output_dir)


def test_help_lists_variables(capsys):
    with pytest.raises(SystemExit) as excinfo:
        challenge.main(["--help"])
    assert excinfo.value.code == 0
    assert "MIDOG_INPUT_DIR" in capsys.readouterr().out


def run_entrypoint(input_dir: Path, output_dir: Path) -> subprocess.CompletedProcess:
    environ = {**os.environ, "MIDOG_INPUT_DIR": str(input_dir), "MIDOG_OUTPUT_DIR": str(output_dir)}
    return subprocess.run(
        [sys.executable, str(ENTRYPOINT)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_entrypoint_unreadable_image(tmp_path, shared_data):
    input_dir, output_dir = tmp_path / "input", tmp_path / "output"
    input_dir.mkdir()
    shutil.copy(shared_data / "slides" / "broken.svs", input_dir / "roi.tif")
    completed = run_entrypoint(input_dir, output_dir)
    assert completed.returncode == 1
    lines = error_lines(completed.stderr)
    assert len(lines) == 1
    assert lines[0].startswith(f"midog-challenge: error: Failed to open slide {input_dir / 'roi.tif'}")
    assert not (output_dir / OUTPUT_NAME).exists()


def test_entrypoint_missing_input_folder(tmp_path):
    completed = run_entrypoint(tmp_path / "absent", tmp_path / "output")
    assert completed.returncode == 1
    expected = (
        f"midog-challenge: error: Input folder {tmp_path / 'absent'} not found; "
        "mount the image folder there or set MIDOG_INPUT_DIR"
    )
    assert error_lines(completed.stderr) == [expected]
