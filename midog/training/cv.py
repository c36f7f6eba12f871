"""Grouped k-fold cross-validation: train, export, predict and score every fold.

For fold ``k`` of a split (:mod:`midog.evaluation.folds`):

1. The other folds' images are split into ``train`` and ``val`` groups
   (:func:`midog.evaluation.folds.split_validation`).
2. The config is trained on the ``train`` images only, by overriding the
   dataset's ``image_ids``.
3. The last checkpoint is exported to ONNX, the format users deploy, and the
   ONNX model predicts every ``val`` and ``test`` image with the whole-slide
   runner.
4. The F1-optimal score threshold of the ``val`` images is applied to the
   held-out ``test`` images, whose F1 (overall and per domain) is the fold's
   result.

Layout of the work folder::

    folds.csv                 the split, reused by later runs
    fold_<k>/train/           mmengine work folder: checkpoints, logs, config
    fold_<k>/trained.json     the finished checkpoint, so training is not repeated
    fold_<k>/model.onnx       the exported model; it keeps the config's threshold, and
                              the chosen one is in result.json
    fold_<k>/predictions/     the runner's outputs per image
    fold_<k>/detections.csv   every candidate of the val and test images
    fold_<k>/test_report.csv  test rows at the chosen threshold (overall and per domain)
    fold_<k>/test_sweep.csv   test F1 against the threshold
    fold_<k>/val_sweep.csv    val F1 against the threshold
    fold_<k>/result.json      written last: marks the fold done
    cv_folds.csv, cv_domains.csv, cv_summary.csv, cv_report.md,
    f1_vs_threshold.png, f1_per_domain.png   (see midog.evaluation.cv_report)

A fold with ``result.json`` is not run again. A fold whose training stopped
half-way resumes from its last checkpoint. A fold that raises is logged and
recorded as failed, and the other folds still run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from midog.errors import MidogError
from midog.evaluation.cv_report import CV_GROUP_COLUMNS, FoldResult, write_cv_report
from midog.evaluation.folds import count_per_fold, load_folds, save_folds, split_validation
from midog.evaluation.matching import MIDOG_RADIUS_UM
from midog.inference.detector import TileDetector
from midog.io.annotations import MITOTIC_FIGURE
from midog.io.writers import atomic_output

__all__ = [
    "CvSettings",
    "CvSteps",
    "FoldPlan",
    "check_config",
    "check_image_files",
    "fold_dir",
    "plan_folds",
    "prepare_split",
    "run_cv",
    "split_summary",
]

logger = logging.getLogger(__name__)

# Dataset fields of the MIDOG++ patch dataset that cross-validation overrides.
DATASET_KEY = "train_dataloader.dataset"

RESULT_FILE = "result.json"
TRAINED_FILE = "trained.json"
SPLIT_FILE = "folds.csv"

# Parity crops for the ONNX export: this many, of this size in px (a multiple of 32).
PARITY_CROPS = 2
PARITY_CROP_PX = 128

# train(config_path, work_dir, overrides, resume=...) -> last checkpoint
TrainFunction = Callable[..., Path]
# export(config_path, checkpoint_path, onnx_path, parity_images) -> anything
ExportFunction = Callable[[Path, Path, Path, np.ndarray], object]
LoadDetectorFunction = Callable[[Path], TileDetector]


def _default_train(
    config_path: Path, work_dir: Path, overrides: dict[str, Any], resume: bool = False
) -> Path:
    from midog.training.train import train

    return train(config_path, work_dir, overrides, resume=resume)


def _default_export(
    config_path: Path, checkpoint_path: Path, onnx_path: Path, parity_images: np.ndarray
) -> object:
    from midog.training.export import export_onnx

    return export_onnx(config_path, checkpoint_path, onnx_path, parity_images)


def _default_load_detector(onnx_path: Path) -> TileDetector:
    from midog.inference.onnx_detector import OnnxDetector

    return OnnxDetector(onnx_path, device="auto")


@dataclass(frozen=True)
class CvSettings:
    """Inputs and options of a cross-validation run.

    Attributes:
        config_path: mmdet-style config of the MIDOG++ patch dataset.
        images_dir: folder with the images (``001.tiff`` ...).
        annotation_file: annotation file the config's dataset reads.
        work_dir: folder for the split, the folds and the reports.
        annotation_format: format of ``annotation_file``, as in ``read_annotations``.
        domains_csv: per-image domain table, or None.
        max_iters: training iterations per fold; None keeps the config's.
        val_fraction: share of the training folds' groups used to choose the threshold.
        seed: seed of the validation draw and of training.
        mpp: µm/px of images whose annotation file gives none; None reads it
            from each image file.
        radius_um: hit radius of the F1 matching in µm.
    """

    config_path: Path
    images_dir: Path
    annotation_file: Path
    work_dir: Path
    annotation_format: str = "auto"
    domains_csv: Path | None = None
    max_iters: int | None = None
    val_fraction: float = 0.1
    seed: int = 0
    mpp: float | None = None
    radius_um: float = MIDOG_RADIUS_UM


@dataclass
class CvSteps:
    """The three heavy steps of a fold, replaceable for tests and other back ends.

    Attributes:
        train: ``train(config_path, work_dir, overrides, resume=...)`` returning
            the last checkpoint, like :func:`midog.training.train.train`.
        export: ``export(config_path, checkpoint_path, onnx_path, parity_images)``,
            like :func:`midog.training.export.export_onnx`.
        load_detector: builds a ``TileDetector`` from the exported file.
    """

    train: TrainFunction = _default_train
    export: ExportFunction = _default_export
    load_detector: LoadDetectorFunction = _default_load_detector


@dataclass(frozen=True)
class FoldPlan:
    """The planned action and image counts of one fold.

    Attributes:
        fold: fold index.
        num_train: training images.
        num_val: validation images (threshold choice).
        num_test: held-out images.
        action: ``"skip (done)"``, ``"resume training"``, ``"predict (trained)"`` or ``"train"``.
    """

    fold: int
    num_train: int
    num_val: int
    num_test: int
    action: str


# ---------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------


def fold_dir(work_dir: Path, fold: int) -> Path:
    """Return the folder of fold ``fold``."""
    return Path(work_dir) / f"fold_{fold}"


def _is_trained(directory: Path, max_iters: int | None) -> Path | None:
    """Return the finished checkpoint recorded in ``trained.json``, when it fits ``max_iters``."""
    marker = directory / TRAINED_FILE
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        checkpoint = Path(record["checkpoint"])
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("ignoring unreadable %s; the fold is trained again", marker)
        return None
    if record.get("max_iters") != max_iters or not checkpoint.is_file():
        return None
    return checkpoint


def _has_checkpoint(directory: Path) -> bool:
    return (directory / "train" / "last_checkpoint").is_file()


def plan_folds(folds: pd.DataFrame, settings: CvSettings) -> list[FoldPlan]:
    """Describe what :func:`run_cv` does for each fold, without running anything."""
    plans = []
    for fold in sorted(set(folds["fold"])):
        roles = split_validation(folds, fold, settings.val_fraction, settings.seed)["role"].value_counts()
        directory = fold_dir(settings.work_dir, fold)
        if (directory / RESULT_FILE).is_file():
            action = "skip (done)"
        elif _is_trained(directory, settings.max_iters) is not None:
            action = "predict (trained)"
        elif _has_checkpoint(directory):
            action = "resume training"
        else:
            action = "train"
        plans.append(
            FoldPlan(
                fold=int(fold),
                num_train=int(roles.get("train", 0)),
                num_val=int(roles.get("val", 0)),
                num_test=int(roles.get("test", 0)),
                action=action,
            )
        )
    return plans


def prepare_split(
    folds: pd.DataFrame, images: pd.DataFrame, work_dir: Path, write: bool = True
) -> pd.DataFrame:
    """Check the split against the one stored in ``work_dir`` and store it there.

    Args:
        folds: the split to run.
        images: the image table, to check a stored split against.
        work_dir: the cross-validation work folder.
        write: save the split as ``work_dir/folds.csv`` when none is stored.

    Returns:
        ``folds``.

    Raises:
        MidogError: ``work_dir`` contains another split, whose fold results
            must not be mixed with this one.
    """
    stored_path = Path(work_dir) / SPLIT_FILE
    if stored_path.is_file():
        stored = load_folds(stored_path, images)
        same = len(stored) == len(folds) and stored.set_index("image")["fold"].sort_index().equals(
            folds.set_index("image")["fold"].sort_index()
        )
        if not same:
            raise MidogError(
                f"work folder {work_dir} contains another split ({stored_path}); pass --split {stored_path} "
                "to continue it, or choose another --work-dir"
            )
    elif write:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        save_folds(folds, stored_path)
        logger.info("saved the split to %s", stored_path)
    return folds


def check_config(config_path: Path) -> None:
    """Check that the config's training dataset takes ``image_ids``, so a fold can restrict it.

    A dataset without that field would train on every image, held-out fold included.

    Raises:
        MidogError: the config is missing, unreadable, or its training dataset has no ``image_ids``.
    """
    from midog.training.train import load_config

    try:
        cfg = load_config(config_path)
    except FileNotFoundError as exc:
        raise MidogError(f"config file {config_path} not found") from exc
    dataset = cfg.get("train_dataloader", {}).get("dataset", {})
    if "image_ids" not in dataset:
        raise MidogError(
            f"config {config_path}: the training dataset {dataset.get('type', '(none)')!r} has no image_ids "
            "field, so training cannot be limited to a fold's images; use a MIDOG++ patch dataset config "
            "such as configs/rtmdet_s_midogpp.py"
        )


def check_image_files(folds: pd.DataFrame, images_dir: Path, mpp: float | None = None) -> None:
    """Check that every image of the split has a file in ``images_dir`` and that the first one opens.

    Args:
        folds: the split.
        images_dir: the image folder.
        mpp: µm/px to open the first image with; None reads it from the file.

    Raises:
        MidogError: the folder or an image is missing, or the first image
            cannot be opened or has no µm/px (``SlideOpenError``,
            ``SlideResolutionError``).
    """
    from midog.io.slide import open_slide

    if not Path(images_dir).is_dir():
        raise MidogError(f"image folder {images_dir} not found; pass the folder with the images as --images")
    missing = [name for name in folds["image"] if not (Path(images_dir) / name).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise MidogError(
            f"{len(missing)} of {len(folds)} images of the split are missing from {images_dir} ({shown}); "
            "pass the folder that holds them as --images"
        )
    if len(folds):
        with open_slide(Path(images_dir) / folds["image"].iloc[0], mpp):
            pass


# ---------------------------------------------------------------------------
# One fold
# ---------------------------------------------------------------------------


def _train_overrides(settings: CvSettings, train_images: Sequence[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        f"{DATASET_KEY}.images_dir": str(settings.images_dir),
        f"{DATASET_KEY}.annotation_file": str(settings.annotation_file),
        f"{DATASET_KEY}.annotation_format": settings.annotation_format,
        f"{DATASET_KEY}.domains_csv": None if settings.domains_csv is None else str(settings.domains_csv),
        f"{DATASET_KEY}.image_ids": list(train_images),
        # The fold's image list alone decides; a split filter would drop some of its images.
        f"{DATASET_KEY}.split": None,
        f"{DATASET_KEY}.seed": settings.seed,
        "randomness": {"seed": settings.seed},
    }
    if settings.max_iters is not None:
        overrides["train_cfg.max_iters"] = settings.max_iters
    return overrides


def _write_json(path: Path, record: dict[str, Any]) -> None:
    with atomic_output(path) as temporary_path:
        temporary_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _write_csv(path: Path, table: pd.DataFrame) -> None:
    with atomic_output(path) as temporary_path:
        table.to_csv(temporary_path, index=False)


def _train_fold(
    settings: CvSettings, steps: CvSteps, directory: Path, train_images: Sequence[str], fold: int
) -> Path:
    checkpoint = _is_trained(directory, settings.max_iters)
    if checkpoint is not None:
        logger.info("fold %d: already trained (%s)", fold, checkpoint)
        return checkpoint
    resume = _has_checkpoint(directory)
    logger.info(
        "fold %d: %s on %d images in %s",
        fold,
        "resuming training" if resume else "training",
        len(train_images),
        directory / "train",
    )
    checkpoint = Path(
        steps.train(
            settings.config_path, directory / "train", _train_overrides(settings, train_images), resume=resume
        )
    )
    _write_json(directory / TRAINED_FILE, {"checkpoint": str(checkpoint), "max_iters": settings.max_iters})
    return checkpoint


def _parity_images(images_dir: Path, names: Sequence[str], mpp: float | None) -> np.ndarray:
    """Read the centre ``PARITY_CROP_PX`` square of the first images, ``(B, H, W, 3)`` uint8 RGB."""
    from midog.io.slide import open_slide

    crops = []
    for name in list(names)[:PARITY_CROPS]:
        with open_slide(Path(images_dir) / name, mpp) as slide:
            width, height = slide.dimensions
            l0_xy = ((width - PARITY_CROP_PX) // 2, (height - PARITY_CROP_PX) // 2)
            crops.append(slide.read_region(l0_xy, 0, (PARITY_CROP_PX, PARITY_CROP_PX)))
    return np.stack(crops)


def _image_mpp(images: pd.DataFrame, settings: CvSettings) -> dict[str, float | None]:
    """Return the µm/px to open each image with: the annotation file's, else ``settings.mpp``."""
    values = pd.to_numeric(images.get("mpp", pd.Series(np.nan, index=images.index)), errors="coerce")
    return {
        str(name): float(value) if np.isfinite(value) else settings.mpp
        for name, value in zip(images["image"], values)
    }


def _predict(
    detector: TileDetector,
    settings: CvSettings,
    names: Sequence[str],
    mpp_of: dict[str, float | None],
    output: Path,
    progress: bool,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Run the whole-slide runner on each image; return all candidates and the µm/px used."""
    from midog.inference.runner import detect_slide

    parts = []
    used_mpp: dict[str, float] = {}
    for name in tqdm(names, desc="predict", unit="image", leave=False, disable=not progress):
        result = detect_slide(
            Path(settings.images_dir) / name, detector, output, mpp=mpp_of.get(name), progress=False
        )
        candidates = result.candidates
        class_names = np.asarray(candidates.class_names, dtype=object)
        parts.append(
            pd.DataFrame(
                {
                    "image": name,
                    "x": candidates.xy[:, 0],
                    "y": candidates.xy[:, 1],
                    "label": class_names[candidates.labels] if len(candidates) else np.zeros(0, dtype=object),
                    "score": candidates.scores.astype(np.float64),
                }
            )
        )
        used_mpp[name] = result.mpp
    detections = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=["image", "x", "y", "label", "score"])
    )
    return detections, used_mpp


def _run_fold(
    fold: int,
    roles: pd.DataFrame,
    annotations: pd.DataFrame,
    images: pd.DataFrame,
    settings: CvSettings,
    steps: CvSteps,
    progress: bool,
) -> FoldResult:
    from midog.evaluation.metrics import evaluate_detections

    started = time.perf_counter()
    directory = fold_dir(settings.work_dir, fold)
    directory.mkdir(parents=True, exist_ok=True)
    names = {role: roles.loc[roles["role"] == role, "image"].tolist() for role in ("train", "val", "test")}

    checkpoint = _train_fold(settings, steps, directory, names["train"], fold)

    mpp_of = _image_mpp(images, settings)
    onnx_path = directory / "model.onnx"
    logger.info("fold %d: exporting %s to %s", fold, checkpoint, onnx_path)
    parity_names = names["val"] or names["test"]
    parity = _parity_images(settings.images_dir, parity_names, mpp_of.get(parity_names[0]))
    steps.export(settings.config_path, checkpoint, onnx_path, parity)
    detector = steps.load_detector(onnx_path)

    logger.info(
        "fold %d: predicting %d validation and %d test images", fold, len(names["val"]), len(names["test"])
    )
    detections, used_mpp = _predict(
        detector, settings, names["val"] + names["test"], mpp_of, directory / "predictions", progress
    )
    _write_csv(directory / "detections.csv", detections)

    # Evaluate with the µm/px the runner used, so the hit radius in px matches the image.
    images = images.copy()
    images["mpp"] = images["image"].map(used_mpp).astype(np.float64)
    default_mpp = settings.mpp if settings.mpp is not None else 0.25
    evaluate_options: dict[str, Any] = {
        "radius_um": settings.radius_um,
        "default_mpp": default_mpp,
        "group_columns": CV_GROUP_COLUMNS,
    }

    val_report = evaluate_detections(
        annotations,
        images[images["image"].isin(names["val"])],
        detections[detections["image"].isin(names["val"])],
        threshold=float(detector.score_thresh),
        **evaluate_options,
    )
    # Without a mitotic figure candidate on the validation images the sweep has nothing to choose from.
    val_candidates = detections["image"].isin(names["val"]) & (detections["label"] == MITOTIC_FIGURE)
    threshold, source = val_report.best_threshold, "validation"
    if not val_candidates.any() or not np.isfinite(threshold):
        threshold, source = float(detector.score_thresh), "model default"
        logger.warning(
            "fold %d: no mitotic figure candidate on the validation images; using the model's threshold %g",
            fold,
            threshold,
        )
    val_f1 = float(val_report.sweep.loc[np.isclose(val_report.sweep["threshold"], threshold), "f1"].max())

    test_report = evaluate_detections(
        annotations,
        images[images["image"].isin(names["test"])],
        detections[detections["image"].isin(names["test"])],
        threshold=threshold,
        **evaluate_options,
    )
    # The report ends with an overall row at the test set's own F1-optimal threshold when it has one.
    test_rows, oracle_f1 = test_report.rows, math.nan
    if np.isfinite(test_report.best_threshold):
        test_rows = test_report.rows.iloc[:-1]
        oracle_f1 = float(test_report.overall(at_best_threshold=True)["f1"])

    result = FoldResult(
        fold=fold,
        status="done",
        num_train=len(names["train"]),
        num_val=len(names["val"]),
        num_test=len(names["test"]),
        threshold=float(threshold),
        threshold_source=source,
        val_f1=val_f1,
        test_rows=test_rows.reset_index(drop=True),
        test_sweep=test_report.sweep,
        oracle_f1=oracle_f1,
        seconds=time.perf_counter() - started,
    )
    _write_csv(directory / "test_report.csv", result.test_rows)
    _write_csv(directory / "test_sweep.csv", result.test_sweep)
    _write_csv(directory / "val_sweep.csv", val_report.sweep)
    _write_json(directory / RESULT_FILE, _result_record(result, names))
    overall = result.overall()
    logger.info(
        "fold %d: done in %.0f s; threshold %.3f (%s, val F1 %.4f); test F1 %.4f on %d images",
        fold,
        result.seconds,
        result.threshold,
        source,
        val_f1,
        float(overall["f1"]) if overall is not None else math.nan,
        len(names["test"]),
    )
    return result


def _number_or_none(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _result_record(result: FoldResult, names: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "fold": result.fold,
        "threshold": _number_or_none(result.threshold),
        "threshold_source": result.threshold_source,
        "val_f1": _number_or_none(result.val_f1),
        "oracle_f1": _number_or_none(result.oracle_f1),
        "seconds": _number_or_none(result.seconds),
        "images": names,
    }


def _load_result(fold: int, directory: Path) -> FoldResult | None:
    """Read a finished fold; None when its files are missing or unreadable."""
    try:
        record = json.loads((directory / RESULT_FILE).read_text(encoding="utf-8"))
        test_rows = pd.read_csv(directory / "test_report.csv", dtype={"group": str})
        test_sweep = pd.read_csv(directory / "test_sweep.csv")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        logger.warning(
            "fold %d: result files in %s are unreadable (%s); the fold runs again", fold, directory, exc
        )
        return None

    def number(key: str) -> float:
        value = record.get(key)
        return math.nan if value is None else float(value)

    images = record.get("images", {})
    return FoldResult(
        fold=fold,
        status="done",
        num_train=len(images.get("train", [])),
        num_val=len(images.get("val", [])),
        num_test=len(images.get("test", [])),
        threshold=number("threshold"),
        threshold_source=str(record.get("threshold_source", "")),
        val_f1=number("val_f1"),
        test_rows=test_rows,
        test_sweep=test_sweep,
        oracle_f1=number("oracle_f1"),
        seconds=number("seconds"),
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# ---------------------------------------------------------------------------
# All folds
# ---------------------------------------------------------------------------


def run_cv(
    folds: pd.DataFrame,
    annotations: pd.DataFrame,
    images: pd.DataFrame,
    settings: CvSettings,
    steps: CvSteps | None = None,
    progress: bool = True,
) -> list[FoldResult]:
    """Run every fold of a split and write the cross-validation report.

    Folds with a ``result.json`` are read back and not run again. An
    exception inside a fold is logged with the fold index and recorded as a
    failed fold, and the next fold starts. Only ``KeyboardInterrupt`` and
    other exceptions outside ``Exception`` stop the run.

    Args:
        folds: the split (:func:`midog.evaluation.folds.make_folds` or ``load_folds``).
        annotations: annotation table of ``read_annotations`` for ``settings.annotation_file``.
        images: image table of the same call.
        settings: inputs and options.
        steps: train, export and detector functions; None uses mmengine, the
            ONNX export and onnxruntime.
        progress: show a progress bar over the folds.

    Returns:
        One result per fold, in fold order.

    Raises:
        MidogError: ``settings.work_dir`` contains another split, or an image file is missing.
        OutputError: a report file cannot be written.
    """
    steps = steps or CvSteps()
    mpp_of = _image_mpp(images, settings)
    check_image_files(
        folds, settings.images_dir, mpp_of.get(str(folds["image"].iloc[0])) if len(folds) else None
    )
    prepare_split(folds, images, settings.work_dir)

    fold_ids = sorted(int(f) for f in set(folds["fold"]))
    results: list[FoldResult] = []
    for fold in tqdm(fold_ids, desc="cv folds", unit="fold", disable=not progress):
        directory = fold_dir(settings.work_dir, fold)
        if (directory / RESULT_FILE).is_file():
            previous = _load_result(fold, directory)
            if previous is not None:
                logger.info("fold %d: done in an earlier run; not run again", fold)
                results.append(previous)
                continue

        roles = split_validation(folds, fold, settings.val_fraction, settings.seed)
        started = time.perf_counter()
        try:
            results.append(_run_fold(fold, roles, annotations, images, settings, steps, progress))
        except Exception as exc:  # a failed fold must not stop the others
            logger.exception("fold %d failed: %s", fold, _one_line(exc))  # noqa: TRY401
            counts = roles["role"].value_counts()
            results.append(
                FoldResult(
                    fold=fold,
                    status="failed",
                    num_train=int(counts.get("train", 0)),
                    num_val=int(counts.get("val", 0)),
                    num_test=int(counts.get("test", 0)),
                    seconds=time.perf_counter() - started,
                    error=_one_line(exc),
                )
            )

    write_cv_report(
        results,
        settings.work_dir,
        title=f"Cross-validation of {Path(settings.config_path).name}",
        val_fraction=settings.val_fraction,
        radius_um=settings.radius_um,
    )
    return results


def split_summary(folds: pd.DataFrame) -> str:
    """Return the image counts per stratum (rows) and fold (columns) as aligned text."""
    return count_per_fold(folds).T.to_string()
