"""``midog detect`` end to end, with the stub detector in place of the ONNX model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from midog.cli import build_parser, main
from tests.conftest import REPO_ROOT
from tests.inference.stub_detector import StubDetector
from tests.inference.synthetic import draw_disc, pink_image, write_tiff


@pytest.fixture
def stub_model(monkeypatch):
    """Make ``load_detector`` return the stub for any --model value."""
    detector = StubDetector()
    monkeypatch.setattr("midog.inference.onnx_detector.load_detector", lambda *args, **kwargs: detector)
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


@pytest.mark.parametrize(
    "text",
    [
        "(default: midog-output)",
        "at the model's µm/px (default: 512)",
        "at most half the tile size (default: 64)",
        "(default: the model's threshold)",
        "level-0 µm/px of the slides",
        "0 reads them in the main process (default: 0)",
        "{auto,cpu,cuda}",
        "midog detect slide.svs --output out/",
    ],
)
def test_help_gives_units_and_defaults(capsys, text):
    assert text in detect_help(capsys)


def test_detect_prints_summary(stub_model, two_disc_slide, tmp_path, capsys):
    assert main(["detect", str(two_disc_slide), "--output", str(tmp_path), "--no-progress"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("two-discs.tiff: 2 mitotic figures (score >= 0.5), tissue 0.04 mm²")
    assert f"outputs in {tmp_path}" in line


def test_detect_writes_outputs(stub_model, two_disc_slide, tmp_path):
    main(["detect", str(two_disc_slide), "--output", str(tmp_path), "--no-progress"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "two-discs.csv", "two-discs.geojson", "two-discs.mitotic-figures.json", "two-discs.summary.json",
    ]  # fmt: skip


def test_detect_threshold_option(stub_model, two_disc_slide, tmp_path, capsys):
    main(["detect", str(two_disc_slide), "--output", str(tmp_path), "--no-progress", "--threshold", "0.95"])
    assert "0 mitotic figures (score >= 0.95)" in capsys.readouterr().out


def test_detect_missing_slide(stub_model, tmp_path, capsys):
    missing = tmp_path / "missing.svs"
    assert main(["detect", str(missing), "--output", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip() == f"midog detect: error: Slide file not found: {missing}"


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


def test_detect_checks_all_slides_first(stub_model, two_disc_slide, tmp_path, capsys):
    missing = tmp_path / "missing.svs"
    assert main(["detect", str(two_disc_slide), str(missing), "--output", str(tmp_path / "out")]) == 1
    assert stub_model.num_calls == 0


def test_detect_same_stem_rejected(stub_model, two_disc_slide, tmp_path, capsys):
    other = tmp_path / "two-discs.png"
    other.write_bytes(b"")
    assert main(["detect", str(two_disc_slide), str(other), "--output", str(tmp_path / "out")]) == 1
    assert "would both write two-discs.csv" in capsys.readouterr().err


def test_detect_mpp_needed_without_resolution(stub_model, tmp_path, capsys):
    path = tmp_path / "no-resolution.tiff"
    tifffile.imwrite(path, pink_image(600, 600), photometric="rgb", tile=(256, 256))
    assert main(["detect", str(path), "--output", str(tmp_path / "out"), "--no-progress"]) == 1
    assert "--mpp" in capsys.readouterr().err


def test_detect_mpp_option(stub_model, tmp_path, capsys):
    path = tmp_path / "no-resolution.tiff"
    tifffile.imwrite(path, pink_image(600, 600), photometric="rgb", tile=(256, 256))
    assert (
        main(["detect", str(path), "--output", str(tmp_path / "out"), "--no-progress", "--mpp", "0.25"]) == 0
    )


@pytest.mark.parametrize(
    "options",
    [
        ["--overlap", "300"],
        ["--threshold", "1.5"],
        ["--tile-size", "16"],
        ["--workers", "-1"],
        ["--mpp", "0"],
    ],
)
def test_detect_rejects_invalid_option(stub_model, two_disc_slide, tmp_path, options):
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", str(two_disc_slide), "--output", str(tmp_path), *options])
    assert exit_info.value.code == 2


def test_inference_never_imports_torch():
    code = (
        "import sys, midog.cli, midog.commands.detect, midog.inference.runner, "
        "midog.inference.onnx_detector; "
        "midog.cli.build_parser('detect'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mmdet', 'mmcv', 'mmengine')))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    assert completed.stdout.strip() == "[]"


def test_summary_line_without_tissue(stub_model, tmp_path, capsys):
    path = write_tiff(tmp_path / "blank.tiff", np.full((300, 300, 3), 245, dtype=np.uint8))
    main(["detect", str(path), "--output", str(tmp_path / "out"), "--no-progress"])
    assert "0 mitotic figures (score >= 0.5), tissue 0.00 mm², no tissue found" in capsys.readouterr().out
