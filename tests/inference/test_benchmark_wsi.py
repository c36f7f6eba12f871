"""The whole-slide benchmark script on tiny inputs: built slides, measured subprocesses and the report."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from midog.inference.runner import plan_slide
from midog.io.slide import open_slide
from tests.conftest import REPO_ROOT
from tests.inference.tiny_model import write_tiny_model

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_wsi", REPO_ROOT / "tools" / "benchmark_wsi.py")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the module up by name while the class is created.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def built_slide(benchmark, shared_data, tmp_path_factory):
    return benchmark.build_tissue_slide(tmp_path_factory.mktemp("built") / "tissue.tiff", 2048, shared_data)


def test_built_slide_resolution(built_slide):
    with open_slide(built_slide) as slide:
        assert slide.mpp == pytest.approx(0.25)


def test_built_slide_pyramid(built_slide):
    with open_slide(built_slide) as slide:
        assert slide.level_dimensions == ((2048, 2048), (512, 512), (128, 128))


def test_built_slide_mostly_tissue(built_slide):
    # 2048 x 2048 px at 0.25 µm/px is 0.262 mm².
    with open_slide(built_slide) as slide:
        plan = plan_slide(slide, 0.25, 512, 64)
    assert plan.tissue_area_mm2 / 0.262 > 0.5


def test_built_slide_rejects_odd_size(benchmark, shared_data, tmp_path):
    with pytest.raises(ValueError, match="multiple of 512"):
        benchmark.build_tissue_slide(tmp_path / "odd.tiff", 1000, shared_data)


def test_run_measured_reads_json_and_memory(benchmark):
    measured = benchmark.run_measured([sys.executable, "-c", "print('log line'); print('{\"x\": 1}')"])
    assert measured.result == {"x": 1}
    assert measured.max_rss_mib > 1


def test_run_measured_reports_failure(benchmark):
    with pytest.raises(RuntimeError, match="exit code 3"):
        benchmark.run_measured([sys.executable, "-c", "import sys; sys.exit(3)"])


def test_write_docs_newest_first(benchmark, tmp_path):
    page = tmp_path / "benchmarks.md"
    benchmark.write_docs(page, "### first\n")
    benchmark.write_docs(page, "### second\n")
    text = page.read_text()
    assert text.index("### second") < text.index("### first")


def test_write_docs_keeps_header(benchmark, tmp_path):
    page = tmp_path / "benchmarks.md"
    benchmark.write_docs(page, "### first\n")
    assert page.read_text().startswith("# Benchmarks")


@pytest.mark.slow
def test_benchmark_end_to_end(benchmark, shared_data, tmp_path):
    model = write_tiny_model(tmp_path / "tiny.onnx")
    page = tmp_path / "benchmarks.md"
    code = benchmark.main(
        [
            "--model", str(model), "--slides", "quarter", "large", "--large-size-px", "2048",
            "--cache-dir", str(tmp_path / "cache"), "--data-dir", str(shared_data), "--compute-tiles", "2",
            "--no-torch", "--repeats", "2", "--docs", str(page),
        ]
    )  # fmt: skip
    assert code == 0
    text = page.read_text()
    rows = [line for line in text.splitlines() if line.startswith(("| quarter |", "| large |"))]
    assert len(rows) == 2
    assert all(row.count("|") == 16 for row in rows)
    assert "medians of 2 runs of (b) and 3 of (a)" in text


def test_benchmark_rejects_zero_repeats(benchmark, tmp_path):
    with pytest.raises(SystemExit, match="--repeats must be at least 1, got 0"):
        benchmark.main(["--repeats", "0", "--no-docs", "--cache-dir", str(tmp_path)])


def test_compute_measure_json(benchmark, shared_data, tmp_path, capsys):
    model = write_tiny_model(tmp_path / "tiny.onnx")
    slide = shared_data / "slides" / "cmu-1-small-region.svs"
    benchmark.main(["--measure", "compute", "--model", str(model), "--slide", str(slide), "--compute-tiles", "2",
                    "--batch-size", "2"])  # fmt: skip
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["tiles"], result["precision"]) == (2, "fp32")
