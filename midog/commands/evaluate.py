"""``midog evaluate``: score detections against ground truth with the MIDOG rules."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from midog.errors import MidogError, OutputError

if TYPE_CHECKING:
    from midog.evaluation.metrics import EvaluationReport

__all__ = ["register", "resolve_image_names", "run"]

logger = logging.getLogger(__name__)

EPILOG = """examples:
  midog evaluate --ground-truth MIDOG++.json --domains datasets_xvalidation.csv \\
      --detections out/detections.csv --output eval/
  midog evaluate --ground-truth points.csv --detections out/ --mpp 0.25 --threshold 0.6
"""

DETECTION_SUFFIXES = (".csv", ".json")


def register(subparsers: argparse._SubParsersAction) -> None:
    from midog.io.annotations import FORMATS

    parser = subparsers.add_parser(
        "evaluate",
        help="score detections against ground truth (MIDOG F1 and AP)",
        description="Match detections to ground-truth mitotic figures within --radius-um (7.5 µm, the "
        "MIDOG rule), print the micro F1 over all images, and write per-tumour, per-scanner and "
        "per-split results, the per-image counts and a threshold sweep.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--ground-truth",
        type=Path,
        required=True,
        help="annotation file: MIDOG++ or MIDOG 2021 JSON, COCO JSON, point CSV (image,x,y,label), "
        "QuPath GeoJSON or MIDOG ground-truth JSON",
    )
    parser.add_argument(
        "--ground-truth-format",
        choices=FORMATS,
        default="auto",
        help="format of --ground-truth (default: auto, from the suffix and content)",
    )
    parser.add_argument(
        "--domains",
        type=Path,
        help="per-image domain CSV (Slide;Dataset;Tumor;Scanner;Origin;Species), e.g. datasets_xvalidation.csv",
    )
    parser.add_argument(
        "--detections",
        type=Path,
        required=True,
        help="detection CSV (image,x,y,label,score), a MIDOG JSON of one image, or a folder of them",
    )
    parser.add_argument(
        "--mpp",
        type=float,
        default=0.25,
        help="µm/px of images whose ground truth gives none; also converts MIDOG JSON millimetres "
        "(default: 0.25)",
    )
    parser.add_argument(
        "--radius-um",
        type=float,
        default=7.5,
        help="hit radius between a detection and a mitotic figure, in µm (default: 7.5, the MIDOG value)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="minimum score of a detection that counts for F1, 0-1 (default: 0.5); the F1-optimal "
        "threshold is reported as well",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="folder for report.csv, report.md, per_image.csv and threshold_sweep.csv (default: print only)",
    )
    parser.set_defaults(func=run)


# ---------------------------------------------------------------------------
# Detection input
# ---------------------------------------------------------------------------


def resolve_image_names(names: pd.Series, gt_images: pd.Series) -> pd.Series:
    """Map image names of detections to the ground truth's image file names.

    A name matches a ground-truth image when it is equal to it, to its file
    name, or to its stem (``001`` and ``001.tiff.json`` both match
    ``001.tiff``), or when it starts with the image stem followed by
    ``.``, ``_`` or ``-`` (``001_detections`` matches ``001.tiff``).

    Args:
        names: image names as found in the detections.
        gt_images: the ground truth's image file names.

    Returns:
        ``names`` with each matched name replaced by its ground-truth image;
        unmatched names are kept.
    """
    exact = {str(g): str(g) for g in gt_images}
    by_stem: dict[str, str] = {}
    for g in gt_images:
        by_stem.setdefault(Path(str(g)).stem, str(g))
    stems_longest_first = sorted(by_stem, key=len, reverse=True)

    def resolve(name: str) -> str:
        candidate = Path(str(name)).name
        for key in (str(name), candidate):
            if key in exact:
                return exact[key]
        while True:
            if candidate in exact:
                return exact[candidate]
            if candidate in by_stem:
                return by_stem[candidate]
            stripped = Path(candidate).stem
            if stripped == candidate:
                break
            candidate = stripped
        for stem in stems_longest_first:
            if re.match(re.escape(stem) + r"[._-]", Path(str(name)).name):
                return by_stem[stem]
        return str(name)

    cache = {name: resolve(name) for name in pd.unique(names)}
    return names.map(cache)


def _detection_files(path: Path) -> list[Path]:
    if not path.exists():
        raise MidogError(
            f"detections {path} not found; pass a detection CSV, a MIDOG JSON or a folder of them"
        )
    if path.is_file():
        if path.suffix.lower() not in DETECTION_SUFFIXES:
            raise MidogError(f"detections {path} is neither .csv nor .json")
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in DETECTION_SUFFIXES)
    if not files:
        raise MidogError(f"folder {path} contains no .csv or .json detection files")
    return files


def _read_json_detections(
    path: Path, gt_images: pd.DataFrame, default_mpp: float
) -> tuple[pd.DataFrame, str]:
    from midog.io.writers import read_midog_json

    image = resolve_image_names(pd.Series([path.name.removesuffix(path.suffix)]), gt_images["image"]).iloc[0]
    mpp = default_mpp
    row = gt_images.loc[gt_images["image"] == image, "mpp"]
    if len(row) and np.isfinite(row.iloc[0]):
        mpp = float(row.iloc[0])
    detections = read_midog_json(path, mpp)
    class_names = np.asarray(detections.class_names, dtype=object)
    if len(detections) and (detections.labels.min() < 0 or detections.labels.max() >= len(class_names)):
        raise MidogError(
            f"{path}: class index outside the {len(class_names)} class names {tuple(class_names)}"
        )
    frame = pd.DataFrame(
        {
            "image": image,
            "x": detections.xy[:, 0],
            "y": detections.xy[:, 1],
            "label": class_names[detections.labels] if len(detections) else np.zeros(0, dtype=object),
            "score": detections.scores.astype(np.float64),
        }
    )
    return frame, image


def read_detections(
    path: Path, gt_images: pd.DataFrame, default_mpp: float
) -> tuple[pd.DataFrame, set[str] | None]:
    """Read detection CSVs and MIDOG JSONs into one table.

    Args:
        path: a detection CSV, a MIDOG JSON of one image, or a folder of them.
        gt_images: the ground truth's image table, for names and µm/px.
        default_mpp: µm/px for MIDOG JSONs of images without one.

    Returns:
        ``(detections, json_images)``: the table has columns ``image``,
        ``x``, ``y`` (level-0 px), ``label``, ``score``, with image names
        resolved to the ground truth's. ``json_images`` holds the images that
        have a MIDOG JSON, even an empty one; it is None when any CSV was
        read, because a CSV lists no row for an image without detections.

    Raises:
        MidogError: a path is missing or a file cannot be read.
    """
    parts: list[pd.DataFrame] = []
    from_csv = False
    json_images: set[str] = set()
    for file in _detection_files(path):
        if file.suffix.lower() == ".csv":
            from midog.io.writers import read_detections_csv

            frame = read_detections_csv(file)
            frame = frame.assign(image=resolve_image_names(frame["image"].astype(str), gt_images["image"]))
            parts.append(frame[["image", "x", "y", "label", "score"]])
            from_csv = True
        else:
            frame, image = _read_json_detections(file, gt_images, default_mpp)
            parts.append(frame)
            json_images.add(image)
    detections = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=["image", "x", "y", "label", "score"])
    )
    logger.info(
        "read %d detections on %d images from %s", len(detections), detections["image"].nunique(), path
    )
    return detections, None if from_csv else json_images


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def write_report_files(report: EvaluationReport, output_dir: Path) -> list[Path]:
    """Write report.csv, report.md, per_image.csv and threshold_sweep.csv atomically.

    Args:
        report: an :class:`midog.evaluation.metrics.EvaluationReport`.
        output_dir: folder to create or reuse.

    Returns:
        The written paths.

    Raises:
        OutputError: the folder cannot be created or written.
    """
    from midog.io.writers import atomic_output

    contents = {
        "report.csv": report.to_frame().to_csv(index=False),
        "report.md": report.to_markdown(),
        "per_image.csv": report.per_image.to_csv(index=False),
        "threshold_sweep.csv": report.sweep.to_csv(index=False),
    }

    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create the report folder {output_dir} ({exc.strerror}); pass a writable --output"
        ) from exc
    written = []
    for name, text in contents.items():
        with atomic_output(output_dir / name) as temporary_path:
            temporary_path.write_text(text, encoding="utf-8")
        written.append(output_dir / name)
    return written


# ---------------------------------------------------------------------------
# Command
# ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from midog.evaluation.metrics import evaluate_detections
    from midog.io.annotations import read_annotations

    if not 0.0 <= args.threshold <= 1.0:
        raise MidogError(f"--threshold must be between 0 and 1, got {args.threshold}")
    if not args.radius_um > 0:
        raise MidogError(f"--radius-um must be a positive length in µm, got {args.radius_um}")
    if not args.mpp > 0:
        raise MidogError(f"--mpp must be a positive number of µm/px, got {args.mpp}")

    annotations, images = read_annotations(
        args.ground_truth, format=args.ground_truth_format, domains_csv=args.domains, mpp=args.mpp
    )
    detections, json_images = read_detections(args.detections, images, args.mpp)

    unmatched = set(detections["image"]) - set(images["image"])
    if len(detections) and unmatched == set(detections["image"]):
        raise MidogError(
            f"no image of {args.detections} ({', '.join(sorted(unmatched)[:3])}) matches an image of "
            f"{args.ground_truth} ({', '.join(images['image'].head(3))}); name the detections after the images"
        )

    if json_images is not None:
        # Like the MIDOG containers: an image without a JSON file was not processed, so it is skipped.
        with_files = images["image"].isin(json_images)
        skipped = images.loc[images["labelled"] & ~with_files, "image"]
        if len(skipped):
            logger.warning(
                "%d labelled images have no detection file and are skipped (%s)",
                len(skipped),
                ", ".join(skipped.head(5)),
            )
        images = images[with_files].reset_index(drop=True)
        if not images["labelled"].any():
            raise MidogError(
                f"no detection file in {args.detections} matches a labelled image of {args.ground_truth}; "
                "name the files after the images (e.g. 001.tiff.json)"
            )

    try:
        report = evaluate_detections(
            annotations,
            images,
            detections,
            threshold=args.threshold,
            radius_um=args.radius_um,
            default_mpp=args.mpp,
        )
    except ValueError as exc:
        raise MidogError(f"cannot evaluate {args.detections}: {exc}") from exc

    print(report.summary_line())
    if args.output is not None:
        written = write_report_files(report, args.output)
        print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
