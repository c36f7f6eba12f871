"""Cross-validation on generated MIDOG++-layout images.

Most tests replace training and export by fakes and the ONNX model by the
blob-finding stub detector, so they check the orchestration, resumption,
failure handling and scores in seconds. The test marked ``train`` runs
``midog cv`` end to end with real mmdet training of the tiny MIDOG++ config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from midog.cli import main
from midog.errors import MidogError
from midog.evaluation.folds import load_folds, make_folds
from midog.io.annotations import read_annotations
from midog.training import cv
from midog.training.cv import CvSettings, CvSteps, run_cv
from tests.inference.stub_detector import StubDetector
from tests.inference.synthetic import draw_disc, pink_image, write_tiff

REPO = Path(__file__).resolve().parents[2]
MIDOGPP_CONFIG = REPO / "configs" / "rtmdet_s_midogpp.py"
TINY_CONFIG = REPO / "configs" / "tests" / "rtmdet_s_tiny_midogpp.py"

TUMORS = ("human breast cancer", "canine lung cancer", "human melanoma")
IMAGE_WIDTH_PX = 480
IMAGE_HEIGHT_PX = 352
FIGURES_PER_IMAGE = 2
DISC_RADIUS_PX = 12


@dataclass
class MidogppLayout:
    """Files of a generated MIDOG++-layout data set."""

    images_dir: Path
    annotation_file: Path
    domains_csv: Path
    # Images with one dark disc that no annotation marks: a false positive of the stub.
    images_with_extra_disc: set[str]


def write_midogpp_layout(root: Path, num_images: int = 12) -> MidogppLayout:
    """Write ``001.tiff`` ... with dark discs on pink at the figures, a MIDOG++ JSON and a domains CSV.

    Image ``i`` (from 1) has tumour ``TUMORS[(i - 1) % 3]``, two mitotic figures
    drawn as discs, one imposter that is not drawn, and, when ``i % 4 == 0``, a
    drawn disc without annotation. Image 13 onward, if any, is unlabelled.
    """
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    images, annotations, csv_rows = [], [], ["Slide;Dataset;Tumor;Scanner;Origin;Species"]
    extra: set[str] = set()
    for image_id in range(1, num_images + 1):
        name = f"{image_id:03d}.tiff"
        tumor = TUMORS[(image_id - 1) % len(TUMORS)]
        rgb = pink_image(IMAGE_WIDTH_PX, IMAGE_HEIGHT_PX)
        figures = [(100.0 + 60 * k + 7 * image_id % 50, 120.0 + 90 * k) for k in range(FIGURES_PER_IMAGE)]
        for centre in figures:
            draw_disc(rgb, centre, DISC_RADIUS_PX)
        if image_id % 4 == 0:
            draw_disc(rgb, (400.0, 280.0), DISC_RADIUS_PX)
            extra.add(name)
        write_tiff(images_dir / name, rgb, mpp=0.25)
        images.append(
            {
                "license": 1,
                "file_name": name,
                "id": image_id,
                "width": IMAGE_WIDTH_PX,
                "height": IMAGE_HEIGHT_PX,
                "tumor_type": tumor,
            }
        )
        cells = [(x, y, 1) for x, y in figures] + [(300.0, 60.0, 2)]
        for x, y, category in cells:
            annotations.append(
                {
                    "bbox": [x - 25, y - 25, x + 25, y + 25],
                    "category_id": category,
                    "image_id": image_id,
                    "labels": [category, category],
                    "id": len(annotations) + 1,
                }
            )
        species = "Canine" if tumor.startswith("canine") else "Human"
        csv_rows.append(f"{image_id};train;{tumor};Aperio CS2;Lab;{species}")
    data = {
        "info": {},
        "licenses": [],
        "images": images,
        "categories": [{"id": 1, "name": "mitotic figure"}, {"id": 2, "name": "not mitotic figure"}],
        "annotations": annotations,
    }
    annotation_file = root / "MIDOG++.json"
    annotation_file.write_text(json.dumps(data), encoding="utf-8")
    domains_csv = root / "datasets_xvalidation.csv"
    domains_csv.write_text("\n".join(csv_rows) + "\n", encoding="utf-8")
    return MidogppLayout(images_dir, annotation_file, domains_csv, extra)


@dataclass
class FakeSteps:
    """Training and export that only write files, and the stub detector; records every call."""

    fail_folds: set[int] = field(default_factory=set)
    detector: StubDetector = field(default_factory=StubDetector)
    train_calls: list[dict[str, Any]] = field(default_factory=list)
    export_calls: list[tuple[Path, tuple[int, ...]]] = field(default_factory=list)

    def train(
        self, config_path: Path, work_dir: Path, overrides: dict[str, Any], resume: bool = False
    ) -> Path:
        fold = int(Path(work_dir).parent.name.removeprefix("fold_"))
        self.train_calls.append({"fold": fold, "resume": resume, "overrides": overrides})
        if fold in self.fail_folds:
            raise RuntimeError(f"out of memory in fold {fold}")
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        checkpoint = Path(work_dir) / "iter_1.pth"
        checkpoint.write_bytes(b"weights")
        (Path(work_dir) / "last_checkpoint").write_text(str(checkpoint))
        return checkpoint

    def export(self, config_path: Path, checkpoint: Path, onnx_path: Path, parity_images: np.ndarray) -> None:
        self.export_calls.append((onnx_path, parity_images.shape))
        Path(onnx_path).write_bytes(b"model")

    def steps(self) -> CvSteps:
        return CvSteps(train=self.train, export=self.export, load_detector=lambda path: self.detector)


@pytest.fixture
def layout(tmp_path: Path) -> MidogppLayout:
    return write_midogpp_layout(tmp_path / "data")


@dataclass
class FinishedRun:
    layout: MidogppLayout
    work_dir: Path
    fake: FakeSteps
    results: list[cv.FoldResult]
    folds: pd.DataFrame


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """One 3-fold run with fake training, shared by the tests that only read its outputs."""
    root = tmp_path_factory.mktemp("finished")
    layout = write_midogpp_layout(root / "data")
    fake = FakeSteps()
    results, folds = run_fake(layout, root / "cv", fake)
    return FinishedRun(layout, root / "cv", fake, results, folds)


def read_layout(layout: MidogppLayout) -> tuple[pd.DataFrame, pd.DataFrame]:
    return read_annotations(layout.annotation_file, domains_csv=layout.domains_csv)


def settings_for(layout: MidogppLayout, work_dir: Path, **changes: Any) -> CvSettings:
    values: dict[str, Any] = {
        "config_path": MIDOGPP_CONFIG,
        "images_dir": layout.images_dir,
        "annotation_file": layout.annotation_file,
        "work_dir": work_dir,
        "domains_csv": layout.domains_csv,
        "val_fraction": 0.25,
    }
    values.update(changes)
    return CvSettings(**values)


def run_fake(
    layout: MidogppLayout, work_dir: Path, fake: FakeSteps, n_folds: int = 3
) -> tuple[list[cv.FoldResult], pd.DataFrame]:
    annotations, images = read_layout(layout)
    folds = make_folds(images, n_folds=n_folds, seed=0)
    results = run_cv(folds, annotations, images, settings_for(layout, work_dir), fake.steps(), progress=False)
    return results, folds


def expected_f1(images: list[str], extra: set[str]) -> float:
    """F1 of the stub on these images: every figure found, one false positive per extra disc."""
    tp = FIGURES_PER_IMAGE * len(images)
    fp = sum(name in extra for name in images)
    return 2 * tp / (2 * tp + fp)


# ---------------------------------------------------------------------------
# Orchestration with fake training
# ---------------------------------------------------------------------------


def test_cv_writes_reports(finished: FinishedRun) -> None:
    names = {
        "folds.csv",
        "cv_folds.csv",
        "cv_domains.csv",
        "cv_summary.csv",
        "cv_report.md",
        "f1_vs_threshold.png",
        "f1_per_domain.png",
    }
    assert names <= {p.name for p in finished.work_dir.iterdir()}
    assert all((finished.work_dir / f"fold_{k}" / "result.json").is_file() for k in range(3))
    assert (finished.work_dir / "f1_per_domain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cv_leaves_no_temporary_files(finished: FinishedRun) -> None:
    assert not list(finished.work_dir.rglob("*.tmp"))


def test_cv_trains_without_held_out_images(finished: FinishedRun) -> None:
    folds = finished.folds
    for call in finished.fake.train_calls:
        trained = set(call["overrides"]["train_dataloader.dataset.image_ids"])
        held_out = set(folds.loc[folds["fold"] == call["fold"], "image"])
        assert trained
        assert not trained & held_out


def test_cv_trains_without_validation_images(finished: FinishedRun) -> None:
    for call in finished.fake.train_calls:
        record = json.loads((finished.work_dir / f"fold_{call['fold']}" / "result.json").read_text())
        trained = set(call["overrides"]["train_dataloader.dataset.image_ids"])
        assert record["images"]["val"]
        assert not trained & set(record["images"]["val"])


def test_cv_passes_dataset_overrides(finished: FinishedRun) -> None:
    overrides = finished.fake.train_calls[0]["overrides"]
    layout = finished.layout
    assert overrides["train_dataloader.dataset.images_dir"] == str(layout.images_dir)
    assert overrides["train_dataloader.dataset.annotation_file"] == str(layout.annotation_file)
    assert overrides["train_dataloader.dataset.domains_csv"] == str(layout.domains_csv)
    assert overrides["train_dataloader.dataset.split"] is None


def test_cv_exports_with_image_crops(finished: FinishedRun) -> None:
    assert len(finished.fake.export_calls) == 3
    assert finished.fake.export_calls[0][1][1:] == (128, 128, 3)


def test_cv_test_f1_matches_stub(finished: FinishedRun) -> None:
    folds = finished.folds
    for result in finished.results:
        held_out = folds.loc[folds["fold"] == result.fold, "image"].tolist()
        expected = expected_f1(held_out, finished.layout.images_with_extra_disc)
        assert result.overall()["f1"] == pytest.approx(expected)


def test_cv_threshold_from_validation(finished: FinishedRun) -> None:
    # The stub scores every disc 0.9, so the highest of the tied F1-optimal thresholds is 0.9.
    assert [r.threshold for r in finished.results] == pytest.approx([0.9, 0.9, 0.9])
    assert {r.threshold_source for r in finished.results} == {"validation"}


def test_cv_threshold_default_without_candidates(layout: MidogppLayout, tmp_path: Path) -> None:
    # A stub that finds nothing: no pixel is darker than 0.
    results, _ = run_fake(layout, tmp_path / "cv", FakeSteps(detector=StubDetector(dark_max=0.0)))
    assert {r.threshold_source for r in results} == {"model default"}
    assert [r.threshold for r in results] == pytest.approx([0.5, 0.5, 0.5])
    assert [r.overall()["f1"] for r in results] == [0.0, 0.0, 0.0]


def test_cv_domain_rows_per_tumour(finished: FinishedRun) -> None:
    domains = pd.read_csv(finished.work_dir / "cv_domains.csv")
    tumours = domains[domains["group_by"] == "tumor"]
    assert set(tumours["group"]) == set(TUMORS)
    assert tumours.groupby("fold").size().tolist() == [3, 3, 3]


def test_cv_summary_mean_and_sd(finished: FinishedRun) -> None:
    summary = pd.read_csv(finished.work_dir / "cv_summary.csv")
    overall = summary[summary["group_by"] == "overall"].iloc[0]
    f1_values = [r.overall()["f1"] for r in finished.results]
    assert overall["folds"] == 3
    assert overall["f1_mean"] == pytest.approx(np.mean(f1_values))
    assert overall["f1_sd"] == pytest.approx(np.std(f1_values, ddof=1))


def test_cv_markdown_tables(finished: FinishedRun) -> None:
    report = (finished.work_dir / "cv_report.md").read_text(encoding="utf-8")
    assert "## Mean ± sd over folds" in report
    assert "| overall | all | 3 |" in report
    assert "| tumor | canine lung cancer |" in report


def test_cv_saves_reusable_split(finished: FinishedRun) -> None:
    _, images = read_layout(finished.layout)
    pd.testing.assert_frame_equal(load_folds(finished.work_dir / "folds.csv", images), finished.folds)


def test_cv_rerun_does_not_train(layout: MidogppLayout, tmp_path: Path) -> None:
    work_dir = tmp_path / "cv"
    first, _ = run_fake(layout, work_dir, FakeSteps())
    again = FakeSteps()
    second, _ = run_fake(layout, work_dir, again)
    assert again.train_calls == []
    assert again.export_calls == []
    assert [r.overall()["f1"] for r in second] == pytest.approx([r.overall()["f1"] for r in first])


def test_cv_resumes_half_trained_fold(layout: MidogppLayout, tmp_path: Path) -> None:
    work_dir = tmp_path / "cv"
    train_dir = work_dir / "fold_1" / "train"
    train_dir.mkdir(parents=True)
    (train_dir / "iter_1.pth").write_bytes(b"half")
    (train_dir / "last_checkpoint").write_text(str(train_dir / "iter_1.pth"))
    fake = FakeSteps()
    run_fake(layout, work_dir, fake)
    resumed = {call["fold"]: call["resume"] for call in fake.train_calls}
    assert resumed == {0: False, 1: True, 2: False}


def test_cv_trained_fold_not_retrained(layout: MidogppLayout, tmp_path: Path) -> None:
    work_dir = tmp_path / "cv"
    run_fake(layout, work_dir, FakeSteps())
    (work_dir / "fold_2" / "result.json").unlink()
    again = FakeSteps()
    run_fake(layout, work_dir, again)
    assert again.train_calls == []
    assert [call[0].parent.name for call in again.export_calls] == ["fold_2"]


def test_cv_failed_fold_recorded(layout: MidogppLayout, tmp_path: Path) -> None:
    work_dir = tmp_path / "cv"
    results, _ = run_fake(layout, work_dir, FakeSteps(fail_folds={1}))
    folds_table = pd.read_csv(work_dir / "cv_folds.csv", keep_default_na=False)
    assert [r.status for r in results] == ["done", "failed", "done"]
    assert folds_table["status"].tolist() == ["done", "failed", "done"]
    assert folds_table.loc[1, "error"] == "RuntimeError: out of memory in fold 1"
    assert not (work_dir / "fold_1" / "result.json").exists()


def test_cv_failed_fold_logged(
    layout: MidogppLayout, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_fake(layout, tmp_path / "cv", FakeSteps(fail_folds={1}))
    assert "fold 1 failed: RuntimeError: out of memory in fold 1" in caplog.text


def test_cv_failed_fold_runs_again(layout: MidogppLayout, tmp_path: Path) -> None:
    work_dir = tmp_path / "cv"
    run_fake(layout, work_dir, FakeSteps(fail_folds={1}))
    again = FakeSteps()
    results, _ = run_fake(layout, work_dir, again)
    assert [call["fold"] for call in again.train_calls] == [1]
    assert [r.status for r in results] == ["done", "done", "done"]


def test_cv_summary_skips_failed_fold(layout: MidogppLayout, tmp_path: Path) -> None:
    work_dir = tmp_path / "cv"
    run_fake(layout, work_dir, FakeSteps(fail_folds={0}))
    summary = pd.read_csv(work_dir / "cv_summary.csv")
    assert summary.loc[summary["group_by"] == "overall", "folds"].item() == 2


def test_cv_rejects_other_split(layout: MidogppLayout, tmp_path: Path) -> None:
    work_dir = tmp_path / "cv"
    run_fake(layout, work_dir, FakeSteps())
    annotations, images = read_layout(layout)
    other = make_folds(images, n_folds=3, seed=7)
    with pytest.raises(MidogError, match="contains another split"):
        run_cv(
            other, annotations, images, settings_for(layout, work_dir), FakeSteps().steps(), progress=False
        )


def test_cv_missing_image_stops_before_training(layout: MidogppLayout, tmp_path: Path) -> None:
    (layout.images_dir / "005.tiff").unlink()
    fake = FakeSteps()
    with pytest.raises(MidogError, match=r"1 of 12 images of the split are missing .*\(005.tiff\)"):
        run_fake(layout, tmp_path / "cv", fake)
    assert fake.train_calls == []


# ---------------------------------------------------------------------------
# The command line, with fake training
# ---------------------------------------------------------------------------


def cv_arguments(layout: MidogppLayout, work_dir: Path, *extra: str) -> list[str]:
    return [
        "cv",
        str(MIDOGPP_CONFIG),
        "--images",
        str(layout.images_dir),
        "--annotations",
        str(layout.annotation_file),
        "--domains",
        str(layout.domains_csv),
        "--folds",
        "3",
        "--val-fraction",
        "0.25",
        "--work-dir",
        str(work_dir),
        *extra,
    ]


@pytest.fixture
def fake_cli_steps(monkeypatch: pytest.MonkeyPatch) -> FakeSteps:
    """Make ``midog cv`` use fake training; failing folds can be set on the returned object."""
    fake = FakeSteps()
    monkeypatch.setattr(cv, "CvSteps", fake.steps)
    return fake


def test_cli_dry_run_trains_nothing(
    layout: MidogppLayout, tmp_path: Path, fake_cli_steps: FakeSteps, capsys: pytest.CaptureFixture[str]
) -> None:
    work_dir = tmp_path / "cv"
    code = main(cv_arguments(layout, work_dir, "--dry-run"))
    printed = capsys.readouterr().out
    assert code == 0
    assert fake_cli_steps.train_calls == []
    assert not work_dir.exists()
    assert "fold 2: " in printed
    assert "human melanoma" in printed


def test_cli_runs_and_prints_f1(
    layout: MidogppLayout, tmp_path: Path, fake_cli_steps: FakeSteps, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(cv_arguments(layout, tmp_path / "cv"))
    printed = capsys.readouterr().out
    assert code == 0
    assert "test F1 " in printed
    assert "3 of 3 folds done" in printed


def test_cli_failed_fold_exit_code(
    layout: MidogppLayout, tmp_path: Path, fake_cli_steps: FakeSteps, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_cli_steps.fail_folds = {2}
    code = main(cv_arguments(layout, tmp_path / "cv"))
    error = capsys.readouterr().err
    assert code == 1
    assert "1 of 3 folds failed (fold 2: RuntimeError: out of memory in fold 2)" in error
    assert (tmp_path / "cv" / "fold_0" / "result.json").is_file()


def test_cli_reuses_split_file(
    layout: MidogppLayout, tmp_path: Path, fake_cli_steps: FakeSteps, capsys: pytest.CaptureFixture[str]
) -> None:
    main(cv_arguments(layout, tmp_path / "first"))
    split = tmp_path / "first" / "folds.csv"
    arguments = cv_arguments(layout, tmp_path / "second", "--split", str(split), "--seed", "9")
    arguments.remove("--folds")
    arguments.remove("3")
    code = main(arguments)
    assert code == 0
    assert (tmp_path / "second" / "folds.csv").read_text() == split.read_text()


def test_cli_split_fold_count_conflict(
    layout: MidogppLayout, tmp_path: Path, fake_cli_steps: FakeSteps, capsys: pytest.CaptureFixture[str]
) -> None:
    main(cv_arguments(layout, tmp_path / "first"))
    arguments = cv_arguments(layout, tmp_path / "second", "--split", str(tmp_path / "first" / "folds.csv"))
    arguments[arguments.index("--folds") + 1] = "4"
    code = main(arguments)
    assert code == 1
    assert "--folds 4 disagrees with the 3 folds" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--folds", "1", "--folds must be at least 2"),
        ("--val-fraction", "1.5", "--val-fraction must be between 0 and 1"),
        ("--max-iters", "0", "--max-iters must be at least 1"),
        ("--mpp", "-1", "--mpp must be a positive number"),
    ],
)
def test_cli_rejects_bad_option(
    layout: MidogppLayout,
    tmp_path: Path,
    fake_cli_steps: FakeSteps,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    message: str,
) -> None:
    arguments = cv_arguments(layout, tmp_path / "cv")
    if option in arguments:
        arguments[arguments.index(option) + 1] = value
    else:
        arguments += [option, value]
    code = main(arguments)
    assert code == 1
    assert message in capsys.readouterr().err


def test_cli_missing_config(
    layout: MidogppLayout, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = cv_arguments(layout, tmp_path / "cv")
    arguments[1] = str(tmp_path / "absent.py")
    assert main(arguments) == 1
    assert "config file" in capsys.readouterr().err


def test_cli_rejects_config_without_image_ids(
    layout: MidogppLayout, tmp_path: Path, fake_cli_steps: FakeSteps, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("mmengine")
    arguments = cv_arguments(layout, tmp_path / "cv")
    arguments[1] = str(REPO / "configs" / "rtmdet_s_mf_crops.py")
    assert main(arguments) == 1
    assert "'MitoticCanvasDataset' has no image_ids field" in capsys.readouterr().err
    assert fake_cli_steps.train_calls == []


def test_cli_dataset_split_unknown(
    layout: MidogppLayout, tmp_path: Path, fake_cli_steps: FakeSteps, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(cv_arguments(layout, tmp_path / "cv", "--dataset-split", "test"))
    assert code == 1
    assert "no image of" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# End to end with real training of the tiny MIDOG++ config
# ---------------------------------------------------------------------------


@dataclass
class TrainedRuns:
    """Three ``midog cv`` runs in one work folder and what each left behind."""

    work_dir: Path
    exit_codes: list[int]
    # Checkpoint path -> modification time, after each run.
    checkpoints: list[dict[str, int]]
    outputs: list[str]


def checkpoint_times(work_dir: Path) -> dict[str, int]:
    return {str(path.relative_to(work_dir)): path.stat().st_mtime_ns for path in work_dir.rglob("*.pth")}


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory: pytest.TempPathFactory) -> TrainedRuns:
    """Run ``midog cv`` with 2 folds of 1 iteration, rerun it, then resume fold 1 to 2 iterations."""
    pytest.importorskip("torch")
    pytest.importorskip("mmdet")
    root = tmp_path_factory.mktemp("trained")
    layout = write_midogpp_layout(root / "data", num_images=8)
    work_dir = root / "cv"
    arguments = [
        "cv",
        str(TINY_CONFIG),
        "--images",
        str(layout.images_dir),
        "--annotations",
        str(layout.annotation_file),
        "--domains",
        str(layout.domains_csv),
        "--folds",
        "2",
        "--val-fraction",
        "0.25",
        "--work-dir",
        str(work_dir),
    ]
    runs = TrainedRuns(work_dir, [], [], [])
    for step in ("first", "rerun", "resume"):
        if step == "resume":
            # Fold 1 as if stopped after its first iteration of a 2-iteration run.
            (work_dir / "fold_1" / "result.json").unlink()
            (work_dir / "fold_1" / "trained.json").unlink()
        max_iters = "2" if step == "resume" else "1"
        runs.exit_codes.append(main([*arguments, "--max-iters", max_iters]))
        runs.checkpoints.append(checkpoint_times(work_dir))
        runs.outputs.append((work_dir / "cv_folds.csv").read_text(encoding="utf-8"))
    return runs


@pytest.mark.train
@pytest.mark.slow
def test_trained_cv_succeeds(trained_runs: TrainedRuns) -> None:
    assert trained_runs.exit_codes == [0, 0, 0]


@pytest.mark.train
@pytest.mark.slow
def test_trained_cv_writes_models_and_reports(trained_runs: TrainedRuns) -> None:
    work_dir = trained_runs.work_dir
    for name in ("cv_folds.csv", "cv_domains.csv", "cv_summary.csv", "cv_report.md", "f1_vs_threshold.png"):
        assert (work_dir / name).is_file()
    assert (work_dir / "fold_0" / "model.onnx").stat().st_size > 1_000_000
    assert (work_dir / "fold_1" / "predictions").is_dir()


@pytest.mark.train
@pytest.mark.slow
def test_trained_cv_folds_done(trained_runs: TrainedRuns) -> None:
    folds_table = pd.read_csv(trained_runs.work_dir / "cv_folds.csv")
    assert folds_table["status"].tolist() == ["done", "done"]


@pytest.mark.train
@pytest.mark.slow
def test_trained_cv_one_checkpoint_per_fold(trained_runs: TrainedRuns) -> None:
    assert sorted(trained_runs.checkpoints[0]) == ["fold_0/train/iter_1.pth", "fold_1/train/iter_1.pth"]


@pytest.mark.train
@pytest.mark.slow
def test_trained_cv_rerun_trains_nothing(trained_runs: TrainedRuns) -> None:
    assert trained_runs.checkpoints[1] == trained_runs.checkpoints[0]
    assert trained_runs.outputs[1] == trained_runs.outputs[0]


@pytest.mark.train
@pytest.mark.slow
def test_trained_cv_resumes_checkpoint(trained_runs: TrainedRuns) -> None:
    after = trained_runs.checkpoints[2]
    before = trained_runs.checkpoints[1]
    assert "fold_1/train/iter_2.pth" in after
    assert "fold_0/train/iter_2.pth" not in after
    assert after["fold_0/train/iter_1.pth"] == before["fold_0/train/iter_1.pth"]
    logs = "".join(p.read_text() for p in (trained_runs.work_dir / "fold_1" / "train").rglob("*.log"))
    assert "resumed epoch: 0, iter: 1" in logs
