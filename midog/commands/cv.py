"""``midog cv``: grouped k-fold cross-validation of a training config on MIDOG++-style data."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from midog.errors import MidogError

if TYPE_CHECKING:
    import pandas as pd

    from midog.training.cv import CvSettings, FoldPlan

__all__ = ["register", "run"]

logger = logging.getLogger(__name__)

DEFAULT_FOLDS = 5

EPILOG = """examples:
  midog cv configs/rtmdet_s_midogpp.py --images images/ --annotations MIDOG++.json \\
      --domains datasets_xvalidation.csv --dry-run
  midog cv configs/rtmdet_s_midogpp.py --images images/ --annotations MIDOG++.json \\
      --domains datasets_xvalidation.csv --work-dir work_dirs/cv_midogpp
  midog cv configs/rtmdet_s_midogpp.py --images images/ --annotations MIDOG++.json \\
      --split work_dirs/cv_midogpp/folds.csv --work-dir work_dirs/cv_longer --max-iters 20000

Rerun the same command to continue: finished folds are read back, a fold whose training
stopped resumes from its last checkpoint, and failed folds run again.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from midog.io.annotations import FORMATS

    parser = subparsers.add_parser(
        "cv",
        help="grouped k-fold cross-validation: train, export and score each fold",
        description="Split the labelled images into folds grouped by case and stratified by domain, then "
        "for each fold train on the other folds, export to ONNX, choose the F1-optimal threshold on a "
        "validation part of the training folds, and report F1 on the held-out fold, overall and per "
        "domain, with mean ± sd over folds, tables and plots in --work-dir.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", type=Path, help="training config, e.g. configs/rtmdet_s_midogpp.py")
    parser.add_argument("--images", type=Path, required=True, help="folder with the images (001.tiff ...)")
    parser.add_argument("--annotations", type=Path, required=True, help="annotation file, e.g. MIDOG++.json")
    parser.add_argument(
        "--annotation-format",
        choices=FORMATS,
        default="auto",
        help="format of --annotations (default: auto, from the suffix and content)",
    )
    parser.add_argument(
        "--domains",
        type=Path,
        help="per-image domain CSV (Slide;Dataset;Tumor;Scanner;Origin;Species), e.g. datasets_xvalidation.csv",
    )
    parser.add_argument(
        "--dataset-split",
        metavar="VALUE",
        help="use only images whose split (the Dataset column of datasets_xvalidation.csv) is VALUE, "
        "e.g. train to leave the MIDOG++ test images untouched (default: all labelled images)",
    )
    parser.add_argument(
        "--folds",
        type=int,
        help=f"number of folds, at least 2 (default: {DEFAULT_FOLDS}, or the --split file's)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the split, the validation draw and training (default: 0)"
    )
    parser.add_argument(
        "--split",
        type=Path,
        help="reuse a saved split (the folds.csv of an earlier run) instead of making one",
    )
    parser.add_argument(
        "--group-column",
        help="image column whose equal values share a fold (default: 'case' where present, else each image)",
    )
    parser.add_argument(
        "--stratify",
        nargs="+",
        default=["tumor"],
        metavar="COLUMN",
        help="domain column(s) whose shares every fold matches (default: tumor)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of the training folds' groups used to choose the threshold, 0-1 (default: 0.1)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="folder for the split, folds and reports (default: work_dirs/cv_<config name>)",
    )
    parser.add_argument("--max-iters", type=int, help="training iterations per fold (default: the config's)")
    parser.add_argument(
        "--mpp",
        type=float,
        help="µm/px of images whose annotation file gives none (default: read from each image file)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the split and what each fold would do; train nothing"
    )
    parser.set_defaults(func=run)


def _check_arguments(args: argparse.Namespace) -> None:
    if not args.config.is_file():
        raise MidogError(f"config file {args.config} not found")
    if args.folds is not None and args.folds < 2:
        raise MidogError(f"--folds must be at least 2, got {args.folds}")
    if args.max_iters is not None and args.max_iters < 1:
        raise MidogError(f"--max-iters must be at least 1, got {args.max_iters}")
    if not 0.0 < args.val_fraction < 1.0:
        raise MidogError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    if args.mpp is not None and not args.mpp > 0:
        raise MidogError(f"--mpp must be a positive number of µm/px, got {args.mpp}")


def _print_plan(folds: pd.DataFrame, settings: CvSettings, plans: list[FoldPlan]) -> None:
    from midog.training.cv import split_summary

    print(f"split of {len(folds)} images in {folds['group'].nunique()} groups into {len(plans)} folds:")
    print(split_summary(folds))
    print()
    print(f"work folder {settings.work_dir}; per fold (images for train / val / test):")
    for plan in plans:
        print(f"  fold {plan.fold}: {plan.num_train} / {plan.num_val} / {plan.num_test}: {plan.action}")
    iterations = settings.max_iters if settings.max_iters is not None else "the config's"
    print(f"each fold trains {settings.config_path} for {iterations} iterations, exports ONNX and predicts")


def run(args: argparse.Namespace) -> int:
    from midog.evaluation.folds import load_folds, make_folds
    from midog.io.annotations import read_annotations
    from midog.training.cv import (
        CvSettings,
        check_config,
        check_image_files,
        plan_folds,
        prepare_split,
        run_cv,
    )

    _check_arguments(args)
    check_config(args.config)
    annotations, images = read_annotations(
        args.annotations, format=args.annotation_format, domains_csv=args.domains
    )

    if args.dataset_split is not None:
        keep = images["split"] == args.dataset_split
        if not keep.any():
            present = sorted({str(v) for v in images["split"] if v is not None})
            raise MidogError(
                f"no image of {args.annotations} has split {args.dataset_split!r} (present: "
                f"{', '.join(present) or 'none'}); pass --domains with a Dataset column or drop --dataset-split"
            )
        images = images[keep].reset_index(drop=True)

    if args.split is not None:
        folds = load_folds(args.split, images)
        num_folds = folds["fold"].nunique()
        if args.folds is not None and args.folds != num_folds:
            raise MidogError(
                f"--folds {args.folds} disagrees with the {num_folds} folds of --split {args.split}"
            )
    else:
        folds = make_folds(
            images,
            n_folds=args.folds or DEFAULT_FOLDS,
            group_column=args.group_column,
            stratify_column=args.stratify,
            seed=args.seed,
        )

    settings = CvSettings(
        config_path=args.config,
        images_dir=args.images,
        annotation_file=args.annotations,
        work_dir=args.work_dir or Path("work_dirs") / f"cv_{args.config.stem}",
        annotation_format=args.annotation_format,
        domains_csv=args.domains,
        max_iters=args.max_iters,
        val_fraction=args.val_fraction,
        seed=args.seed,
        mpp=args.mpp,
    )

    if args.dry_run:
        prepare_split(folds, images, settings.work_dir, write=False)
        _print_plan(folds, settings, plan_folds(folds, settings))
        print("dry run: nothing was trained or written")
        # Last, so that the plan is printed even when the images are not there yet.
        check_image_files(folds, settings.images_dir, settings.mpp)
        return 0

    results = run_cv(folds, annotations, images, settings)
    done = [r for r in results if r.status == "done"]
    failed = [r for r in results if r.status == "failed"]
    overall_rows = [r.overall() for r in done]
    f1_values = [float(row["f1"]) for row in overall_rows if row is not None]
    if f1_values:
        sd = float(np.std(f1_values, ddof=1)) if len(f1_values) > 1 else float("nan")
        print(f"test F1 {np.mean(f1_values):.4f} ± {sd:.4f} over {len(f1_values)} folds")
    print(f"{len(done)} of {len(results)} folds done; report in {settings.work_dir / 'cv_report.md'}")
    if failed:
        first = failed[0]
        raise MidogError(
            f"{len(failed)} of {len(results)} folds failed (fold {first.fold}: {first.error}); "
            "fix the cause and rerun the same command to run them again"
        )
    return 0
