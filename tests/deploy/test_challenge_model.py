"""The challenge entry point with the shipped model on real figures pasted onto real tissue.

Twelve held-out crops of real mitotic figures are pasted at known positions
onto held-out real tissue, and the image is written as a tiled TIFF with a
0.25 µm/px resolution tag. The entry point runs in this process and as a
subprocess, both with the model shipped in the package on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from midog.challenge import OUTPUT_NAME, ChallengeSettings, run
from midog.inference.onnx_detector import default_model_path
from midog.io.writers import validate_midog_json
from tests.conftest import REPO_ROOT
from tests.deploy.images import FIGURE_CANVAS_SIZE_PX, figure_canvas
from tests.inference.synthetic import write_tiff

ENTRYPOINT = REPO_ROOT / "deploy" / "entrypoint.py"
MPP = 0.25

# MIDOG counts a detection as a hit within 7.5 µm of a figure's centre.
HIT_RADIUS_UM = 7.5

# Shares of the pasted figures that must have a candidate point of any score,
# and a "mitotic figure" point, within the hit radius. The shipped model at
# threshold 0.46 gave 12 of 12 and 9 of 12 (CPU provider, onnxruntime 1.32).
MIN_CANDIDATE_SHARE = 1.0
MIN_FOUND_SHARE = 7 / 12


@pytest.fixture(scope="module")
def shipped_model() -> Path:
    path = default_model_path()
    if not path.is_file():
        pytest.skip(f"the shipped model {path} is missing; export the trained model there to run these tests")
    return path


@pytest.fixture(scope="module")
def figure_input(shared_data, shipped_model, tmp_path_factory) -> tuple[Path, np.ndarray]:
    input_dir = tmp_path_factory.mktemp("input")
    rgb, centres_px = figure_canvas(shared_data)
    write_tiff(input_dir / "roi.tiff", rgb, mpp=MPP)
    return input_dir, centres_px


@pytest.fixture(scope="module")
def in_process_output(figure_input, tmp_path_factory) -> Path:
    input_dir, _ = figure_input
    output_dir = tmp_path_factory.mktemp("output")
    run(ChallengeSettings(input_dir, output_dir, device="cpu"))
    return output_dir / OUTPUT_NAME


@pytest.fixture(scope="module")
def subprocess_run(figure_input, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    input_dir, _ = figure_input
    output_dir = tmp_path_factory.mktemp("output")
    environ = {
        **os.environ,
        "MIDOG_INPUT_DIR": str(input_dir),
        "MIDOG_OUTPUT_DIR": str(output_dir),
        "MIDOG_DEVICE": "cpu",
    }
    completed = subprocess.run(
        [sys.executable, str(ENTRYPOINT)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return completed, output_dir / OUTPUT_NAME


def figure_points_mm(path: Path) -> np.ndarray:
    points = json.loads(path.read_text())["points"]
    xy = [point["point"][:2] for point in points if point["name"] == "mitotic figure"]
    return np.array(xy, dtype=np.float64).reshape(-1, 2)


def all_points_mm(path: Path) -> np.ndarray:
    points = json.loads(path.read_text())["points"]
    return np.array([point["point"][:2] for point in points], dtype=np.float64).reshape(-1, 2)


def found_share(points_mm: np.ndarray, centres_px: np.ndarray) -> float:
    """Share of figure centres with a point within ``HIT_RADIUS_UM``."""
    if len(points_mm) == 0:
        return 0.0
    centres_mm = centres_px * MPP / 1000.0
    distances_um = np.linalg.norm(centres_mm[:, None, :] - points_mm[None, :, :], axis=-1) * 1000.0
    return float((distances_um.min(axis=1) <= HIT_RADIUS_UM).mean())


def test_json_valid(in_process_output):
    validate_midog_json(json.loads(in_process_output.read_text()))


def test_figures_have_candidates(figure_input, in_process_output):
    # Candidates of any score; a miss here means wrong coordinates, not a weak model.
    _, centres_px = figure_input
    assert found_share(all_points_mm(in_process_output), centres_px) >= MIN_CANDIDATE_SHARE


def test_most_figures_found(figure_input, in_process_output):
    _, centres_px = figure_input
    assert found_share(figure_points_mm(in_process_output), centres_px) >= MIN_FOUND_SHARE


def test_points_inside_image(in_process_output):
    width_mm, height_mm = (size * MPP / 1000.0 for size in FIGURE_CANVAS_SIZE_PX)
    xy_mm = all_points_mm(in_process_output)
    assert ((xy_mm >= 0) & (xy_mm <= (width_mm, height_mm))).all()


def test_entrypoint_exit_code(subprocess_run):
    completed, _ = subprocess_run
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_entrypoint_summary_line(subprocess_run):
    completed, output_path = subprocess_run
    assert f"Wrote {output_path}: " in completed.stderr.splitlines()[-1]


def test_entrypoint_finds_figures(figure_input, subprocess_run):
    _, centres_px = figure_input
    _, output_path = subprocess_run
    assert found_share(figure_points_mm(output_path), centres_px) >= MIN_FOUND_SHARE


def test_entrypoint_matches_in_process(in_process_output, subprocess_run):
    _, output_path = subprocess_run
    np.testing.assert_allclose(all_points_mm(output_path), all_points_mm(in_process_output), atol=1e-6)
