"""``midog detect``: find mitotic figures in whole-slide images with the ONNX model."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from midog.errors import OutputError

if TYPE_CHECKING:
    from midog.inference.runner import SlideResult

__all__ = ["register", "run", "summary_line"]

logger = logging.getLogger(__name__)

EPILOG = """outputs per slide, in --output:
  <stem>.csv                   figures at or above the threshold (image,x,y,label,score; level-0 px)
  <stem>.geojson               the same figures as QuPath point detections
  <stem>.mitotic-figures.json  every candidate in the MIDOG challenge format, named by the threshold
  <stem>.summary.json          counts, tissue area, settings and timing; written last
  <stem>.journal.jsonl         progress of an unfinished slide, removed when its outputs are written

A slide's outputs are complete when <stem>.summary.json exists and <stem>.journal.jsonl does not.
After an interrupted run, the same command with --resume continues each slide from its journal
and skips slides whose outputs are complete. It rejects a journal made with another slide file,
model, tile size or overlap, and complete outputs made with other settings or another threshold.

examples:
  midog detect slide.svs --output out/
  midog detect slides/*.mrxs --workers 4 --device cuda --output out/
  midog detect region.tiff --mpp 0.25 --threshold 0.6 --output out/
  midog detect slides/*.svs --output out/ --resume
  midog detect slide.svs --precision int8 --output out/
"""

DEFAULT_OUTPUT_DIR = Path("midog-output")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number in 0-1, got {text!r}") from exc
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in 0-1, got {text}")
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from exc
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer of at least {minimum}, got {value}")
        return value

    return parse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``detect`` subcommand to the ``midog`` parser."""
    from midog.inference.pipeline import DEFAULT_READ_THREADS
    from midog.inference.precision import PRECISIONS
    from midog.inference.runner import MIN_TILE_SIZE_PX

    parser = subparsers.add_parser(
        "detect",
        help="find mitotic figures in whole-slide images",
        description="Find mitotic figures in whole-slide images (SVS, MRXS, NDPI, TIFF and the other "
        "OpenSlide formats, or plain TIFF, PNG and JPEG) with an exported RTMDet model. Tiles with "
        "tissue are read at the model's µm/px, detections are merged across tile seams, and one "
        "summary line is printed per slide.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("slides", nargs="+", type=Path, metavar="SLIDE", help="slide or image files")
    parser.add_argument(
        "--model",
        type=Path,
        metavar="FILE",
        help="ONNX model written by 'midog export' (default: the model shipped with midog)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT_DIR,
        metavar="DIR",
        help=f"folder for the outputs, created if missing (default: {DEFAULT_OUTPUT_DIR})",
    )
    parser.add_argument(
        "--threshold",
        type=_probability,
        metavar="SCORE",
        help="score at or above which a candidate is a mitotic figure, 0-1 (default: the model's threshold)",
    )
    parser.add_argument(
        "--mpp",
        type=_positive_float,
        metavar="UM_PER_PX",
        help="level-0 µm/px of the slides; overrides the file's resolution and is required for files "
        "without one (default: read from each file)",
    )
    parser.add_argument(
        "--tile-size",
        type=_int_at_least(MIN_TILE_SIZE_PX),
        default=512,
        metavar="PX",
        help="tile width and height in px at the model's µm/px (default: 512)",
    )
    parser.add_argument(
        "--overlap",
        type=_int_at_least(0),
        default=64,
        metavar="PX",
        help="overlap of neighbouring tiles in px at the model's µm/px, at most half the tile size "
        "(default: 64)",
    )
    parser.add_argument(
        "--batch-size",
        type=_int_at_least(1),
        default=8,
        metavar="N",
        help="tiles per model call (default: 8)",
    )
    parser.add_argument(
        "--workers",
        type=_int_at_least(0),
        default=0,
        metavar="N",
        help="processes that read tiles; 0 reads them in the main process (default: 0)",
    )
    parser.add_argument(
        "--read-threads",
        type=_int_at_least(0),
        default=DEFAULT_READ_THREADS,
        metavar="N",
        help="threads that read tiles ahead of the model when --workers is 0; 0 reads them between model "
        f"calls (default: {DEFAULT_READ_THREADS})",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the model runs; auto uses CUDA when onnxruntime offers it (default: auto)",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="model variant: fp32, or the fp16 or int8 file written beside the model by "
        "'python -m midog.training.quantize'; auto takes the variant measured best for the device, "
        "fp32 where none was written (default: auto)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue interrupted slides from their journals and skip slides whose outputs are complete",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar per slide")

    def run_checked(args: argparse.Namespace) -> int:
        if args.overlap > args.tile_size // 2:
            parser.error(
                f"argument --overlap: {args.overlap} px is more than half the tile size "
                f"({args.tile_size} px); use at most {args.tile_size // 2}"
            )
        return run(args)

    parser.set_defaults(func=run_checked)


def summary_line(result: SlideResult) -> str:
    """Format the line printed after each slide: figures, tissue area, density, time and folder."""
    if result.figures_per_mm2 is None:
        density = "no tissue found"
    else:
        density = f"{result.figures_per_mm2:.2f} figures/mm²"
    return (
        f"{result.slide_path.name}: {result.num_figures} mitotic figures (score >= {result.threshold:g}), "
        f"tissue {result.tissue_area_mm2:.2f} mm², {density}, {result.seconds:.1f} s; "
        f"outputs in {result.outputs.csv.parent}"
    )


def _check_unique_stems(slides: list[Path], output_dir: Path) -> None:
    """Raise OutputError if two slides would write the same output files."""
    seen: dict[str, Path] = {}
    for slide in slides:
        if slide.stem in seen and seen[slide.stem] != slide:
            raise OutputError(
                f"Slides {seen[slide.stem]} and {slide} would both write {slide.stem}.csv in {output_dir}; "
                "run them with different --output folders"
            )
        seen[slide.stem] = slide


def run(args: argparse.Namespace) -> int:
    """Run ``midog detect`` on the parsed arguments; return the exit code."""
    from midog.inference.onnx_detector import default_model_path, load_detector
    from midog.inference.precision import resolve_model_path
    from midog.inference.runner import check_output_dir, detect_slide
    from midog.io.slide import open_slide

    slides = list(dict.fromkeys(args.slides))
    _check_unique_stems(slides, args.output)
    check_output_dir(args.output)
    # Open every slide once before the first is processed, so that a missing
    # file or resolution stops the run at once rather than after earlier slides.
    for slide in slides:
        with open_slide(slide, args.mpp):
            pass
    base_model = args.model if args.model is not None else default_model_path()
    model_path, precision = resolve_model_path(base_model, args.precision, args.device)
    # None loads the shipped model, whose absence load_detector reports.
    detector = load_detector(None if model_path == default_model_path() else model_path, device=args.device)
    logger.info(
        "Model %s (%s): %g µm/px, threshold %g",
        model_path if args.model is not None else f"{model_path.name}, shipped with midog",
        precision,
        detector.mpp,
        detector.score_thresh,
    )

    for slide in slides:
        result = detect_slide(
            slide,
            detector,
            args.output,
            mpp=args.mpp,
            threshold=args.threshold,
            tile_size_px=args.tile_size,
            overlap_px=args.overlap,
            batch_size=args.batch_size,
            workers=args.workers,
            read_threads=args.read_threads,
            resume=args.resume,
            progress=not args.no_progress,
        )
        print(summary_line(result), flush=True)
    return 0
