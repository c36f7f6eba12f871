"""The MIDOG challenge entry point: one image in, ``mitotic-figures.json`` out.

Grand Challenge runs the container with one region-of-interest image in
``/input/images/histopathology-roi-cropout/`` (``.tif``, ``.tiff`` or
``.mha``) and reads ``/output/mitotic-figures.json``, a "Multiple points"
object whose points are ``[x_mm, y_mm, 0]`` with a ``probability``. Every
candidate is written: those at or above the threshold as "mitotic figure",
the rest as "non-mitotic figure".

The pixel size comes from the file (TIFF resolution tags, MetaImage
``ElementSpacing`` in mm). An image without a usable one is read at
``DEFAULT_MPP``, the MIDOG scan resolution, with a warning. The environment
variables in ``ENVIRONMENT_VARIABLES`` move the folders and choose the model,
threshold and device, so the same code runs outside docker.

Known input errors (``MidogError``) print one line to stderr and exit 1,
without writing the JSON.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from midog import __version__
from midog.errors import MidogError, OutputError, SlideOpenError, SlideResolutionError
from midog.inference.detector import TileDetector
from midog.inference.runner import check_output_dir, detect_open_slide
from midog.io.metaimage import METAIMAGE_SUFFIXES, MetaImageSlide, open_metaimage
from midog.io.slide import SlideReader, open_slide
from midog.io.writers import MAX_MIDOG_COORDINATE_MM, MIDOG_MITOTIC_FIGURE, mm_from_px, write_midog_json
from midog.structures import Detections

if TYPE_CHECKING:
    from midog.inference.onnx_detector import OnnxDetector

__all__ = [
    "DEFAULT_MPP",
    "ENVIRONMENT_VARIABLES",
    "IMAGE_SUFFIXES",
    "INPUT_DIR",
    "OUTPUT_DIR",
    "OUTPUT_NAME",
    "ChallengeResult",
    "ChallengeSettings",
    "find_input_image",
    "main",
    "open_challenge_image",
    "run",
]

logger = logging.getLogger(__name__)

PROGRAM = "midog-challenge"

# Folders and file name of the Grand Challenge interfaces.
INPUT_DIR = Path("/input/images/histopathology-roi-cropout")
OUTPUT_DIR = Path("/output")
OUTPUT_NAME = "mitotic-figures.json"

IMAGE_SUFFIXES = (".tif", ".tiff", *METAIMAGE_SUFFIXES)

# The MIDOG images are scanned at about 0.25 µm/px (40x).
DEFAULT_MPP = 0.25

DEVICES = ("auto", "cpu", "cuda")

ENVIRONMENT_VARIABLES = {
    "MIDOG_INPUT_DIR": f"folder with the one input image (default {INPUT_DIR})",
    "MIDOG_OUTPUT_DIR": f"folder for {OUTPUT_NAME} (default {OUTPUT_DIR})",
    "MIDOG_MODEL": "ONNX model written by 'midog export' (default: the model shipped in the package)",
    "MIDOG_THRESHOLD": "score in 0-1 at or above which a point is a mitotic figure "
    "(default: the model's midog.score_thresh metadata)",
    "MIDOG_DEVICE": "onnxruntime device: auto (CUDA when available), cpu or cuda (default auto)",
}


@dataclass(frozen=True)
class ChallengeSettings:
    """The input and output folders, the model and its settings for one run.

    Attributes:
        input_dir: folder that contains the one input image.
        output_dir: folder for ``OUTPUT_NAME``; created if missing.
        model_path: the ONNX model; None runs the model shipped in the package.
        threshold: score in 0-1 at or above which a point is a mitotic
            figure; None uses the model's ``score_thresh``.
        device: "auto", "cpu" or "cuda".
    """

    input_dir: Path = INPUT_DIR
    output_dir: Path = OUTPUT_DIR
    model_path: Path | None = None
    threshold: float | None = None
    device: str = "auto"

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ChallengeSettings:
        """Read the settings from ``ENVIRONMENT_VARIABLES``; unset or empty ones keep their default.

        Raises:
            MidogError: ``MIDOG_THRESHOLD`` is not a number in 0-1, or
                ``MIDOG_DEVICE`` is not one of ``DEVICES``.
        """
        environ = os.environ if environ is None else environ

        def value(name: str) -> str | None:
            text = environ.get(name, "").strip()
            return text or None

        threshold_text = value("MIDOG_THRESHOLD")
        threshold = None
        if threshold_text is not None:
            try:
                threshold = float(threshold_text)
            except ValueError:
                threshold = math.nan
            if not 0.0 <= threshold <= 1.0:
                raise MidogError(
                    f"MIDOG_THRESHOLD={threshold_text!r} is not a number in 0-1; "
                    "set it to a score such as 0.5, or unset it to use the model's threshold"
                )

        device = value("MIDOG_DEVICE") or "auto"
        if device not in DEVICES:
            raise MidogError(f"MIDOG_DEVICE={device!r} is not one of {', '.join(DEVICES)}")

        input_dir = value("MIDOG_INPUT_DIR")
        output_dir = value("MIDOG_OUTPUT_DIR")
        model_path = value("MIDOG_MODEL")
        return cls(
            input_dir=Path(input_dir) if input_dir else INPUT_DIR,
            output_dir=Path(output_dir) if output_dir else OUTPUT_DIR,
            model_path=Path(model_path) if model_path else None,
            threshold=threshold,
            device=device,
        )


@dataclass(frozen=True)
class ChallengeResult:
    """The outcome of one run: the JSON written and what it contains.

    Attributes:
        image_path: the input image.
        output_path: the JSON written.
        mpp: µm/px the image was read at.
        threshold: score at or above which a point is named "mitotic figure".
        candidates: every point written, ``xy`` in level-0 px, by descending score.
        num_figures: points named "mitotic figure".
        seconds: wall time from the start of ``run`` to the JSON written.
    """

    image_path: Path
    output_path: Path
    mpp: float
    threshold: float
    candidates: Detections
    num_figures: int
    seconds: float


def find_input_image(input_dir: Path) -> Path:
    """Return the one image in ``input_dir``.

    Files whose suffix (any case) is in ``IMAGE_SUFFIXES`` count as images;
    hidden files and subfolders are ignored, and other files are logged and
    ignored.

    Raises:
        SlideOpenError: the folder is missing, or it contains no image or more than one.
    """
    if not input_dir.is_dir():
        raise SlideOpenError(
            f"Input folder {input_dir} not found; mount the image folder there or set MIDOG_INPUT_DIR"
        )
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p.name for p in files if p not in images]
    accepted = ", ".join(IMAGE_SUFFIXES)
    if not images:
        found = f"it contains {', '.join(others)}" if others else "it is empty"
        raise SlideOpenError(
            f"Input folder {input_dir} has no {accepted} image ({found}); put one image there"
        )
    if len(images) > 1:
        names = ", ".join(p.name for p in images)
        raise SlideOpenError(
            f"Input folder {input_dir} has {len(images)} images ({names}); expected exactly one"
        )
    if others:
        logger.warning(
            "Ignoring %d files in %s that are not images: %s", len(others), input_dir, ", ".join(others)
        )
    return images[0]


def open_challenge_image(path: Path) -> SlideReader | MetaImageSlide:
    """Open the input image, at ``DEFAULT_MPP`` where the file states no usable pixel size.

    MetaImage files (``.mha``, ``.mhd``) are read by ``open_metaimage``,
    everything else by ``open_slide``.

    Raises:
        SlideOpenError: the file cannot be opened.
        SlideReadError: a MetaImage's pixel data cannot be read.
    """
    opener = open_metaimage if path.suffix.lower() in METAIMAGE_SUFFIXES else open_slide
    try:
        return opener(path)
    except SlideResolutionError as exc:
        logger.warning(
            "Image %s has no usable pixel size in its file, so it is read at %g µm/px, "
            "the MIDOG scan resolution",
            path,
            DEFAULT_MPP,
        )
        logger.info("Reader message: %s", exc)
        return opener(path, DEFAULT_MPP)


def _preload_cuda_libraries(device: str) -> None:
    """Load the CUDA and cuDNN libraries of the nvidia pip packages, where onnxruntime-gpu can use them.

    ``preload_dlls`` (onnxruntime-gpu 1.21 and later) loads CUDA and cuDNN from
    the nvidia packages that ``onnxruntime-gpu[cuda,cudnn]`` installs, then from
    the library path. The docker image has CUDA and cuDNN from those packages
    only, so the CUDA provider needs this step. Libraries it cannot load are
    printed by onnxruntime, and the session then runs on the CPU.
    """
    if device == "cpu":
        return
    try:
        import onnxruntime as ort
    except ModuleNotFoundError:
        return
    preload = getattr(ort, "preload_dlls", None)
    if preload is None or "CUDAExecutionProvider" not in ort.get_available_providers():
        return
    try:
        preload()
    except (OSError, RuntimeError) as exc:
        logger.warning("Failed to preload the CUDA libraries (%s); onnxruntime may run on the CPU", exc)


def _load_detector(settings: ChallengeSettings) -> OnnxDetector:
    from midog.inference.onnx_detector import load_detector

    _preload_cuda_libraries(settings.device)
    detector = load_detector(settings.model_path, device=settings.device)
    logger.info("Model %s on onnxruntime providers %s", detector.model_path, detector.providers)
    if settings.device == "auto" and "CUDAExecutionProvider" not in detector.providers:
        logger.info("Running on the CPU: onnxruntime found no usable CUDA device")
    return detector


def _mitotic_figure_candidates(detections: Detections) -> Detections:
    """Keep the detections of class "mitotic figure" where the model has several classes.

    ``write_midog_json`` writes only those, so the counts logged and returned
    match the points in the file. A single-class model's detections are all kept.
    """
    names = detections.class_names
    if len(names) > 1 and MIDOG_MITOTIC_FIGURE in names:
        return detections.select(detections.labels == names.index(MIDOG_MITOTIC_FIGURE))
    return detections


def _check_inside_image(path: Path, detections: Detections, dimensions: tuple[int, int]) -> None:
    """Raise OutputError if a point lies outside the image."""
    width, height = dimensions
    xy = detections.xy
    outside = (xy[:, 0] < 0) | (xy[:, 0] > width) | (xy[:, 1] < 0) | (xy[:, 1] > height)
    if outside.any():
        index = int(outside.argmax())
        raise OutputError(
            f"Failed to write {path}: point {index} at level-0 x={xy[index, 0]:.1f}, y={xy[index, 1]:.1f} px "
            f"lies outside the {width}x{height} px image"
        )


def run(settings: ChallengeSettings, detector: TileDetector | None = None) -> ChallengeResult:
    """Find mitotic figures in the one input image and write ``OUTPUT_NAME``.

    The image is opened before the model is loaded, so a missing or
    unreadable image fails fast. The JSON is checked (names, probabilities,
    finite millimetre coordinates inside the image) and then written
    atomically; on any error no JSON is written.

    Args:
        settings: folders, model, threshold and device.
        detector: a loaded model; None loads ``settings.model_path`` (or the
            shipped model) on ``settings.device``.

    Returns:
        What was written.

    Raises:
        SlideOpenError: no single image in the input folder, or it cannot be opened.
        SlideReadError: reading the image's pixels failed.
        ModelError: the model cannot be loaded.
        OutputError: the output folder is not writable, or the JSON failed its checks.
    """
    started = time.perf_counter()
    image_path = find_input_image(settings.input_dir)
    output_dir = check_output_dir(settings.output_dir)
    output_path = output_dir / OUTPUT_NAME

    with open_challenge_image(image_path) as image:
        width, height = image.dimensions
        logger.info("Image %s: %dx%d px at %.4g µm/px", image_path, width, height, image.mpp)
        if detector is None:
            detector = _load_detector(settings)
        threshold = float(detector.score_thresh if settings.threshold is None else settings.threshold)
        source = "MIDOG_THRESHOLD" if settings.threshold is not None else "model metadata midog.score_thresh"
        logger.info("Threshold %g from %s", threshold, source)

        # The runner also writes CSV, GeoJSON and a summary. They go to a
        # scratch folder, so that the output folder contains only the JSON.
        with tempfile.TemporaryDirectory(prefix="midog-challenge-") as scratch_dir:
            result = detect_open_slide(
                cast(SlideReader, image),
                detector,
                scratch_dir,
                threshold=threshold,
                progress=False,
                started=started,
            )
        mpp = image.mpp

    candidates = _mitotic_figure_candidates(result.candidates)
    _check_inside_image(output_path, candidates, (width, height))

    # Challenge images are under 2 mm wide, so 10 mm catches pixels written as
    # millimetres. A larger image raises the limit to its own extent.
    extent_mm = float(mm_from_px(max(width, height), mpp))
    if extent_mm > MAX_MIDOG_COORDINATE_MM:
        logger.warning(
            "Image %s is %.1f mm across, more than a MIDOG region of interest; "
            "coordinates up to %.1f mm are allowed",
            image_path,
            extent_mm,
            extent_mm,
        )
    write_midog_json(
        output_path,
        candidates,
        mpp,
        threshold,
        max_coordinate_mm=max(MAX_MIDOG_COORDINATE_MM, extent_mm),
    )

    num_figures = int((candidates.scores >= threshold).sum())
    seconds = time.perf_counter() - started
    logger.info(
        "Wrote %s: %d points, %d mitotic figures at threshold %g (%s); "
        "image %s, %dx%d px at %.4g µm/px; %.1f s",
        output_path,
        len(candidates),
        num_figures,
        threshold,
        source,
        image_path.name,
        width,
        height,
        mpp,
        seconds,
    )
    return ChallengeResult(
        image_path=image_path,
        output_path=output_path,
        mpp=mpp,
        threshold=threshold,
        candidates=candidates,
        num_figures=num_figures,
        seconds=seconds,
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser: it takes no arguments and documents the environment variables."""
    variables = "\n".join(f"  {name:<18} {text}" for name, text in ENVIRONMENT_VARIABLES.items())
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description=(
            f"Find mitotic figures in the one image in {INPUT_DIR} and write {OUTPUT_DIR / OUTPUT_NAME} "
            "in the MIDOG challenge format (coordinates in mm)."
        ),
        epilog=f"environment variables:\n{variables}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"midog {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the challenge entry point; return the exit code (0, 1 on an input error, 130 on interrupt)."""
    build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        run(ChallengeSettings.from_environment())
    except MidogError as exc:
        message = " ".join(str(exc).split())
        print(f"{PROGRAM}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
