"""``midog detect``: find mitotic figures and hotspots in whole-slide images with the ONNX model."""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from midog.inference.cohort import CohortResult, CohortRow

__all__ = ["cohort_line", "register", "run", "slide_line"]

logger = logging.getLogger(__name__)

EPILOG = """sources:
  Each SOURCE is a slide file, a folder (its slide files, not recursive), a glob pattern in
  quotes ("slides/**/*.svs"), or a manifest .csv with a path column and an optional mpp column
  (level-0 µm/px, empty for the file's own; relative paths start at the manifest's folder).
  A missing path, a folder or pattern without slides, or an invalid manifest stops the command
  before any slide runs.

outputs per slide, in --output:
  <stem>.csv                   figures at or above the threshold (image,x,y,label,score; level-0 px)
  <stem>.geojson               the same figures as QuPath point detections
  <stem>.mitotic-figures.json  every candidate in the MIDOG challenge format, named by the threshold
  <stem>.hotspot.geojson       the mitotic-count hotspot as a QuPath annotation (level-0 px)
  <stem>.thumbnail.png         the slide with the figures (red) and the hotspot (yellow)
  <stem>.summary.json          counts, tissue area, hotspot, settings and timing; written last
  <stem>.journal.jsonl         progress of an unfinished slide, removed when its outputs are written
and once per run of several slides (or with --ray):
  cohort_summary.csv           one row per slide: status (done, skipped, failed), error, counts,
                               hotspot; rewritten after every slide

A slide's outputs are complete when <stem>.summary.json contains the hotspot and
<stem>.journal.jsonl does not exist. A rerun into the same folder skips each slide whose outputs
are complete and were made with the same model, tile size, overlap, threshold, µm/px and hotspot
settings, and runs the others again. With --resume, an interrupted slide continues from its
journal; a journal made with another slide file, model, tile size or overlap, or complete outputs
made with other settings, make that slide fail (run without --resume to overwrite them).

A slide that fails (an unreadable file, no resolution and no --mpp, ...) is reported as failed
and the other slides still run. Errors that may pass, such as tiles that fail to read, are tried
--retries more times first. A run of one slide file that fails writes nothing into --output. The exit code is 0 when every
slide is done or skipped, and 1 when any slide failed or the command stopped with an error.

examples:
  midog detect slide.svs --output out/
  midog detect slides/ --workers 4 --device cuda --output out/
  midog detect "slides/**/*.mrxs" --output out/
  midog detect cohort.csv --output out/
  midog detect region.tiff --mpp 0.25 --threshold 0.6 --output out/
  midog detect slides/ --hotspot-shape circle --hotspot-area 2.37 --output out/
  midog detect slide.svs --precision int8 --output out/
  midog detect slides/ --output out/ --ray              # a Ray instance on this machine
  midog detect cohort.csv --output /shared/out --ray auto   # the cluster started with 'ray start'
"""

DEFAULT_OUTPUT_DIR = Path("midog-output")

RAY_ADDRESS_FORMS = "local, auto, HOST:PORT or ray://HOST:PORT"


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc
    if not (math.isfinite(value) and value > 0):
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


def _aspect_ratio(text: str) -> float:
    """Parse a width:height ratio such as ``4:3``, or a number such as ``1.5``, into width / height."""
    expected = f"expected W:H or a positive number, such as 4:3 or 1.5, got {text!r}"
    width_text, colon, height_text = text.partition(":")
    try:
        ratio = float(width_text) / float(height_text) if colon else float(text)
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(expected) from exc
    if not (math.isfinite(ratio) and ratio > 0):
        raise argparse.ArgumentTypeError(expected)
    return ratio


def _ray_address(text: str) -> str:
    """Check a --ray value: ``local``, ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``."""
    if text in ("local", "auto"):
        return text
    host, colon, port = text.removeprefix("ray://").rpartition(":")
    valid_host = bool(host) and "/" not in host and not any(c.isspace() for c in host)
    if colon and valid_host and port.isdigit() and 0 < int(port) < 65536:
        return text
    # argparse takes a slide written right after a bare --ray as its value, so the message gives the fix.
    raise argparse.ArgumentTypeError(
        f"expected {RAY_ADDRESS_FORMS}, got {text!r}; to start Ray on this machine, put --ray after "
        "the slides or write --ray=local"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``detect`` subcommand to the ``midog`` parser."""
    from midog.inference.hotspot import DEFAULT_MIN_TISSUE_SHARE, MITOTIC_COUNT_AREA_MM2
    from midog.inference.pipeline import DEFAULT_READ_THREADS
    from midog.inference.precision import PRECISIONS
    from midog.inference.runner import MIN_TILE_SIZE_PX

    parser = subparsers.add_parser(
        "detect",
        help="find mitotic figures and hotspots in whole-slide images",
        description="Find mitotic figures in whole-slide images (SVS, MRXS, NDPI, TIFF and the other "
        "OpenSlide formats, or plain TIFF, PNG and JPEG) with an exported RTMDet model, and the "
        "mitotic-count hotspot of each slide. Tiles with tissue are read at the model's µm/px, "
        "detections are merged across tile seams, and one line is printed per slide as it finishes. "
        "Slides run one after another in this process, or as Ray tasks with --ray.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="slide file, folder, quoted glob pattern or manifest .csv (see 'sources' below)",
    )
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
        "without one; a manifest's mpp column overrides it per slide (default: read from each file)",
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
        help="processes that read tiles per slide; 0 reads them in the slide's process (default: 0)",
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
        "'python -m midog.training.quantize'; auto takes the variant measured best for the device "
        "(each Ray worker picks for its own), fp32 where none was written (default: auto)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue interrupted slides from their journals; slides with complete outputs of the "
        "same settings are skipped on any rerun, with or without --resume",
    )
    parser.add_argument(
        "--retries",
        type=_int_at_least(0),
        default=1,
        metavar="N",
        help="further attempts for a slide that failed with an error that may pass, such as a failed tile "
        "read, before it is reported as failed (default: 1)",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        type=_ray_address,
        metavar="ADDRESS",
        help="run each slide as a Ray task: without a value, on a Ray instance started on this machine; "
        "'auto' joins the one started here with 'ray start'; HOST:PORT or ray://HOST:PORT joins that "
        "cluster, where every machine must reach the slides and --output at the same paths "
        "(default: no Ray, one slide after another in this process)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar per slide")

    hotspot = parser.add_argument_group("hotspot", "the window of fixed area with the most mitotic figures")
    hotspot.add_argument(
        "--hotspot-shape",
        choices=("rectangle", "circle"),
        default="rectangle",
        help="window shape; a rectangle is axis-aligned (default: rectangle)",
    )
    hotspot.add_argument(
        "--hotspot-area",
        type=_positive_float,
        default=MITOTIC_COUNT_AREA_MM2,
        metavar="MM2",
        help=f"window area in mm² (default: {MITOTIC_COUNT_AREA_MM2:g})",
    )
    hotspot.add_argument(
        "--hotspot-aspect",
        type=_aspect_ratio,
        default="4:3",
        metavar="RATIO",
        help="width:height of a rectangle, as W:H or a number; ignored for circles (default: 4:3)",
    )
    hotspot.add_argument(
        "--min-tissue-share",
        type=_probability,
        default=DEFAULT_MIN_TISSUE_SHARE,
        metavar="SHARE",
        help="share of the window that must be tissue, 0-1; a slide without such a window has no "
        f"hotspot (default: {DEFAULT_MIN_TISSUE_SHARE:g})",
    )

    def run_checked(args: argparse.Namespace) -> int:
        if args.overlap > args.tile_size // 2:
            parser.error(
                f"argument --overlap: {args.overlap} px is more than half the tile size "
                f"({args.tile_size} px); use at most {args.tile_size // 2}"
            )
        return run(args)

    parser.set_defaults(func=run_checked)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def slide_line(row: CohortRow, hotspot_area_mm2: float) -> str:
    """Format the line printed when a slide is done, skipped or failed."""
    if row.status == "failed":
        return f"{row.slide}: failed after {_plural(row.attempts, 'attempt')}: {row.error}"

    if row.status == "done":
        status = f"done in {row.seconds or 0.0:.1f} s"
    else:
        status = "skipped, complete outputs of an earlier run"
    figures = _plural(row.num_figures or 0, "mitotic figure")
    if row.threshold is not None:
        figures += f" (score >= {row.threshold:g})"
    if row.figures_per_mm2 is None:
        density = "no tissue found"
    else:
        density = f"{row.figures_per_mm2:.2f} figures/mm²"
    if row.hotspot_count is None:
        hotspot = "no hotspot"
    else:
        hotspot = f"hotspot {row.hotspot_count} in {hotspot_area_mm2:g} mm²"
    tissue = f"tissue {row.tissue_area_mm2 or 0.0:.2f} mm²"
    return f"{row.slide}: {status}: {figures}, {tissue}, {density}, {hotspot}"


def cohort_line(result: CohortResult) -> str:
    """Format the last line: slides by status and the cohort table's path."""
    return (
        f"{_plural(len(result.rows), 'slide')}: {result.count('done')} done, {result.count('skipped')} "
        f"skipped, {result.count('failed')} failed; table {result.table_path}"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``midog detect`` on the parsed arguments; return 1 when any slide failed, else 0."""
    from midog.inference.cohort import OnnxDetectorFactory, SlideSettings, run_cohort
    from midog.inference.hotspot import HotspotShape

    settings = SlideSettings(
        mpp=args.mpp,
        threshold=args.threshold,
        tile_size_px=args.tile_size,
        overlap_px=args.overlap,
        batch_size=args.batch_size,
        workers=args.workers,
        read_threads=args.read_threads,
        resume=args.resume,
        hotspot_shape=HotspotShape(args.hotspot_shape, args.hotspot_area, args.hotspot_aspect),
        min_tissue_share=args.min_tissue_share,
    )
    # In this process run_cohort builds the detector once; on Ray each worker builds its own. A Ray
    # task reserves 1 + --workers CPUs, so its model runs on one thread and tasks side by side on a
    # machine do not compete for the same cores.
    factory = OnnxDetectorFactory(
        model_path=args.model,
        device=args.device,
        precision=args.precision,
        intra_op_threads=1 if args.ray is not None else 0,
    )

    def print_row(row: CohortRow) -> None:
        print(slide_line(row, settings.hotspot_shape.area_mm2), flush=True)

    # One slide file run here is a single-slide job: a failure leaves nothing in the output folder.
    single_slide = (
        args.ray is None
        and len(args.sources) == 1
        and Path(args.sources[0]).is_file()
        and Path(args.sources[0]).suffix.lower() != ".csv"
    )
    created_output = not Path(args.output).exists()
    try:
        result = run_cohort(
            args.sources,
            factory,
            args.output,
            settings=settings,
            ray_address=args.ray,
            retries=args.retries,
            progress=not args.no_progress,
            on_row=print_row,
            write_table=not single_slide,
        )
    finally:
        # A run that failed before writing anything leaves no empty folder behind.
        if created_output and Path(args.output).is_dir() and not any(Path(args.output).iterdir()):
            Path(args.output).rmdir()
    if not single_slide:
        print(cohort_line(result), flush=True)
    return 1 if result.count("failed") else 0
