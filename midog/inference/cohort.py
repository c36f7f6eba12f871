"""Detection on a cohort of slides, in this process or as Ray tasks, with a summary table.

``run_cohort`` takes slides from folders, glob patterns, manifest CSVs or
paths (see ``list_slides``) and for each slide:

1. skips it when a previous run left complete outputs with the same settings
   and model;
2. runs ``detect_slide`` and writes its outputs;
3. finds the mitotic-count hotspot on the figures and the tissue mask,
   writes ``<stem>.hotspot.geojson`` and ``<stem>.thumbnail.png``, and last
   adds the hotspot to ``<stem>.summary.json``.

A slide that raises is logged and tried again up to ``retries`` more times,
unless its error would repeat (``PERMANENT_ERRORS``); the other slides go
on. ``cohort_summary.csv`` in the output folder lists every slide's status,
error, counts, hotspot and time, and is rewritten atomically after each
slide, so an interrupted run leaves a valid table.

With ``ray_address`` None the slides run one after another in this process.
Otherwise each slide is a Ray task that reserves one GPU where the cluster
has GPUs, and CPUs where it has none. Ray is imported only then. On a cluster of
several machines, every slide path and the output folder must be reachable
at the same path on every machine.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from midog.errors import (
    ManifestError,
    MidogError,
    ModelError,
    OutputError,
    SlideOpenError,
    SlideResolutionError,
)
from midog.inference.detector import TileDetector
from midog.inference.hotspot import (
    DEFAULT_MIN_TISSUE_SHARE,
    DEFAULT_STEP_UM,
    Hotspot,
    HotspotShape,
    find_hotspot,
    hotspot_record,
    read_hotspot_geojson,
    write_hotspot_geojson,
)
from midog.inference.pipeline import DEFAULT_READ_THREADS
from midog.inference.precision import (
    AUTO_PRECISION,
    PRECISIONS,
    PrecisionChoice,
    precision_of_path,
    resolve_model_path,
    variant_path,
)
from midog.inference.resume import ResumeError, file_sha256, journal_path
from midog.inference.runner import check_output_dir, detect_slide, slide_outputs, write_summary
from midog.inference.thumbnail import draw_overview, read_overview, write_png
from midog.io.writers import MIDOG_MITOTIC_FIGURE, atomic_output

__all__ = [
    "COHORT_TABLE_NAME",
    "PERMANENT_ERRORS",
    "SLIDE_SUFFIXES",
    "TABLE_COLUMNS",
    "CohortResult",
    "CohortRow",
    "OnnxDetectorFactory",
    "SlideSettings",
    "SlideSpec",
    "finished_row",
    "hotspot_path",
    "list_slides",
    "process_slide",
    "run_cohort",
    "thumbnail_path",
    "write_cohort_table",
]

logger = logging.getLogger(__name__)

# File name endings listed from a folder: the OpenSlide formats and the plain
# images that midog.io.slide also reads. A MIRAX slide is its .mrxs file; the
# folder of the same name beside it is skipped.
SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".dcm",
    ".png",
    ".jpg",
    ".jpeg",
)

COHORT_TABLE_NAME = "cohort_summary.csv"

TABLE_COLUMNS = (
    "slide",
    "path",
    "status",
    "attempts",
    "error",
    "threshold",
    "num_figures",
    "tissue_area_mm2",
    "figures_per_mm2",
    "hotspot_count",
    "hotspot_x_px",
    "hotspot_y_px",
    "hotspot_tissue_share",
    "seconds",
)

Status = Literal["done", "failed", "skipped"]

_GLOB_CHARACTERS = frozenset("*?[")

# Errors that another attempt on the same slide would raise again: a file no
# reader opens, a missing resolution, a journal or earlier outputs of other
# settings, an unwritable output, a bad model. Other errors, such as a failed
# tile read on a network share or a crashed Ray worker, are retried.
PERMANENT_ERRORS: tuple[type[Exception], ...] = (
    SlideOpenError,
    SlideResolutionError,
    ResumeError,
    OutputError,
    ModelError,
)


@dataclass(frozen=True)
class SlideSpec:
    """One slide of a cohort.

    Attributes:
        path: the slide file.
        mpp: level-0 µm/px overriding the file's; None reads it from the file.
    """

    path: Path
    mpp: float | None = None


@dataclass(frozen=True)
class SlideSettings:
    """Settings applied to every slide of a cohort.

    Attributes:
        mpp: level-0 µm/px for slides whose ``SlideSpec.mpp`` is None; None
            reads it from each file.
        threshold: score at or above which a candidate is a figure; None
            uses the detector's.
        tile_size_px: tile size in model px, see ``detect_slide``.
        overlap_px: tile overlap in model px, see ``detect_slide``.
        batch_size: tiles per detector call.
        workers: tile-reading processes per slide; 0 reads in the slide's process.
        read_threads: threads reading tiles ahead of the detector when
            ``workers`` is 0, see ``detect_slide``.
        resume: continue a slide from the journal of an interrupted run, see
            ``detect_slide``. Slides with complete outputs are skipped by
            ``finished_row`` whether or not this is set.
        hotspot_shape: the counting window.
        min_tissue_share: minimum tissue share of the hotspot window, 0-1.
        hotspot_step_um: spacing of the hotspot window centres tried, in µm.
    """

    mpp: float | None = None
    threshold: float | None = None
    tile_size_px: int = 512
    overlap_px: int = 64
    batch_size: int = 8
    workers: int = 0
    read_threads: int = DEFAULT_READ_THREADS
    resume: bool = False
    hotspot_shape: HotspotShape = field(default_factory=HotspotShape)
    min_tissue_share: float = DEFAULT_MIN_TISSUE_SHARE
    hotspot_step_um: float = DEFAULT_STEP_UM

    def hotspot_search(self) -> dict[str, Any]:
        """Return the hotspot settings as stored beside the hotspot, to tell whether a rerun must redo it."""
        return {
            "kind": self.hotspot_shape.kind,
            "area_mm2": self.hotspot_shape.area_mm2,
            "aspect_ratio": self.hotspot_shape.aspect_ratio,
            "min_tissue_share": self.min_tissue_share,
            "step_um": self.hotspot_step_um,
        }


@dataclass(frozen=True)
class CohortRow:
    """One slide's line in the cohort summary table.

    Attributes:
        slide: the slide's file name.
        path: the slide file.
        status: "done" (processed in this run), "failed" (raised on every
            attempt) or "skipped" (complete outputs of an earlier run).
        attempts: attempts made in this run; 0 for skipped slides.
        error: ``ExceptionType: message`` of the last failed attempt, else "".
        threshold: score at or above which a candidate counted as a figure.
        num_figures: figures at or above the threshold.
        tissue_area_mm2: tissue area in mm².
        figures_per_mm2: figures per mm² of tissue; None without tissue.
        hotspot_count: figures in the hotspot window; None without a hotspot.
        hotspot_x_px: x of the hotspot centre in level-0 px.
        hotspot_y_px: y of the hotspot centre in level-0 px.
        hotspot_tissue_share: tissue share of the hotspot window, 0-1.
        seconds: detection wall time reported by ``detect_slide`` (for
            skipped slides, that of the run that wrote the outputs).
        retry: for a failed attempt, whether another attempt may succeed:
            False for errors that repeat on every attempt (see
            ``PERMANENT_ERRORS``). Not a column of the table.
    """

    slide: str
    path: str
    status: Status
    attempts: int = 0
    error: str = ""
    threshold: float | None = None
    num_figures: int | None = None
    tissue_area_mm2: float | None = None
    figures_per_mm2: float | None = None
    hotspot_count: int | None = None
    hotspot_x_px: float | None = None
    hotspot_y_px: float | None = None
    hotspot_tissue_share: float | None = None
    seconds: float | None = None
    retry: bool = False


@dataclass(frozen=True)
class CohortResult:
    """The rows of a cohort run, in input order, and the table written.

    Attributes:
        rows: one row per slide.
        table_path: the cohort summary CSV; None when none was written.
    """

    rows: list[CohortRow]
    table_path: Path | None

    def count(self, status: Status) -> int:
        """Return the number of slides with ``status``."""
        return sum(row.status == status for row in self.rows)


@dataclass(frozen=True)
class OnnxDetectorFactory:
    """A picklable recipe for an ``OnnxDetector``, so Ray workers load the model themselves.

    Attributes:
        model_path: the fp32 ``.onnx`` file, or one of its variants; None uses
            the model shipped with midog.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        intra_op_threads: onnxruntime threads per operator; 0 lets onnxruntime choose.
        precision: ``"auto"``, ``"fp32"``, ``"fp16"`` or ``"int8"``. The
            variant file is chosen when the detector is built, with
            ``midog.inference.precision.resolve_model_path``, so that with
            ``"auto"`` each Ray worker takes the variant for its own device.
    """

    model_path: Path | None = None
    device: str = "auto"
    intra_op_threads: int = 0
    precision: PrecisionChoice = "auto"

    def __post_init__(self) -> None:
        if self.precision not in ("auto", *PRECISIONS):
            raise ValueError(
                f"precision must be 'auto' or one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )

    def __call__(self) -> TileDetector:
        """Load the model variant for this process's device.

        Raises:
            ModelError: the model or the requested variant is missing or invalid.
        """
        from midog.inference.onnx_detector import OnnxDetector, default_model_path

        base_path = default_model_path() if self.model_path is None else Path(self.model_path)
        if self.model_path is None and not base_path.is_file():
            raise ModelError(
                f"the default model {base_path} is missing from the installed package; pass --model FILE"
            )
        path, precision = resolve_model_path(base_path, self.precision, self.device)
        detector = OnnxDetector(path, device=self.device, intra_op_threads=self.intra_op_threads)
        logger.info(
            "Model %s (%s): %g µm/px, threshold %g",
            path if self.model_path is not None else f"{path.name}, shipped with midog",
            precision,
            detector.mpp,
            detector.score_thresh,
        )
        return detector

    def model_sha256s(self) -> frozenset[str]:
        """Return the SHA-256 of each existing model file that ``__call__`` may load.

        That is the requested variant, or for ``"auto"`` the fp32 model and
        the variants that ``AUTO_PRECISION`` names for any device.
        """
        from midog.inference.onnx_detector import default_model_path

        base_path = default_model_path() if self.model_path is None else Path(self.model_path)
        if precision_of_path(base_path) is not None:
            candidates = [base_path]
        elif self.precision == "auto":
            auto_precisions = sorted(set(AUTO_PRECISION.values()))
            candidates = [base_path, *(variant_path(base_path, precision) for precision in auto_precisions)]
        else:
            candidates = [variant_path(base_path, self.precision)]
        return frozenset(file_sha256(path) for path in candidates if path.is_file())


def _has_glob(text: str) -> bool:
    return any(character in _GLOB_CHARACTERS for character in text)


def _parse_mpp(text: str, manifest: Path, line: int) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise ManifestError(f"Manifest {manifest}, line {line}: mpp {text!r} is not a number") from exc
    if not (math.isfinite(value) and value > 0):
        raise ManifestError(f"Manifest {manifest}, line {line}: mpp must be a positive µm/px, got {text}")
    return value


def _read_manifest(manifest: Path) -> list[SlideSpec]:
    """Read a CSV with a ``path`` column and an optional ``mpp`` column.

    Relative paths start at the manifest's folder. Every listed slide must
    exist, so that a typing error stops the cohort before any slide runs.
    """
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ManifestError(f"Cannot read manifest {manifest}: {exc.strerror or exc}") from exc
    reader = csv.DictReader(io.StringIO(text))
    columns = [name.strip() for name in reader.fieldnames or []]
    if "path" not in columns:
        raise ManifestError(f"Manifest {manifest} has no 'path' column; its columns are {columns}")
    reader.fieldnames = columns
    specs = []
    # Line 1 is the header.
    for line, record in enumerate(reader, start=2):
        path_text = (record.get("path") or "").strip()
        if not path_text:
            raise ManifestError(f"Manifest {manifest}, line {line}: the path is empty")
        path = Path(path_text).expanduser()
        if not path.is_absolute():
            path = manifest.parent / path
        if not path.exists():
            raise ManifestError(f"Manifest {manifest}, line {line}: slide {path} not found")
        specs.append(SlideSpec(path, _parse_mpp(record.get("mpp") or "", manifest, line)))
    if not specs:
        raise ManifestError(f"Manifest {manifest} lists no slides")
    return specs


def _expand(source: SlideSpec | str | Path) -> list[SlideSpec]:
    if isinstance(source, SlideSpec):
        return [source]
    path = Path(source).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)
        if not found:
            raise SlideOpenError(f"Folder {path} contains no slide files ({', '.join(SLIDE_SUFFIXES)})")
        return [SlideSpec(p) for p in found]
    if path.suffix.lower() == ".csv" and path.is_file():
        return _read_manifest(path)
    if not path.exists() and _has_glob(str(source)):
        matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        found = [p for p in matches if p.is_file()]
        if not found:
            raise SlideOpenError(f"No slide file matches the pattern {source}")
        return [SlideSpec(p) for p in found]
    if not path.exists():
        raise SlideOpenError(f"Slide {path} not found")
    return [SlideSpec(path)]


def list_slides(sources: SlideSpec | str | Path | Iterable[SlideSpec | str | Path]) -> list[SlideSpec]:
    """Expand folders, glob patterns and manifests into a list of slides.

    Each source is one of:

    - a ``SlideSpec`` or a slide file;
    - a folder, whose files with a suffix in ``SLIDE_SUFFIXES`` are taken
      (not recursive);
    - a glob pattern such as ``"slides/**/*.svs"``;
    - a manifest ``.csv`` with a ``path`` column and an optional ``mpp``
      column in µm/px, empty for the file's own. Relative paths start at
      the manifest's folder.

    A slide listed twice is kept once, at its first place.

    Args:
        sources: one source or several.

    Returns:
        The slides in the order given, each folder and pattern sorted by name.

    Raises:
        SlideOpenError: a path does not exist, or a folder or pattern has no slides.
        ManifestError: a manifest has no ``path`` column, an empty path, a slide
            that does not exist, or an invalid ``mpp``.
    """
    if isinstance(sources, (str, Path, SlideSpec)):
        sources = [sources]
    specs: list[SlideSpec] = []
    seen: set[Path] = set()
    for source in sources:
        for spec in _expand(source):
            key = spec.path.resolve()
            if key not in seen:
                seen.add(key)
                specs.append(spec)
    return specs


def hotspot_path(output_dir: str | Path, slide_path: str | Path) -> Path:
    """Return ``<output_dir>/<slide stem>.hotspot.geojson``."""
    return Path(output_dir) / f"{Path(slide_path).stem}.hotspot.geojson"


def thumbnail_path(output_dir: str | Path, slide_path: str | Path) -> Path:
    """Return ``<output_dir>/<slide stem>.thumbnail.png``."""
    return Path(output_dir) / f"{Path(slide_path).stem}.thumbnail.png"


def _check_unique_stems(specs: Sequence[SlideSpec], output_dir: Path) -> None:
    seen: dict[str, Path] = {}
    for spec in specs:
        stem = spec.path.stem
        if stem in seen:
            raise OutputError(
                f"Slides {seen[stem]} and {spec.path} would both write {stem}.summary.json in {output_dir}; "
                "rename one or run them with different output folders"
            )
        seen[stem] = spec.path


def _hotspot_fields(properties: Mapping[str, Any] | None) -> dict[str, Any]:
    if properties is None:
        return {}
    centre = properties.get("l0_centre_xy") or [None, None]
    return {
        "hotspot_count": properties.get("count"),
        "hotspot_x_px": centre[0],
        "hotspot_y_px": centre[1],
        "hotspot_tissue_share": properties.get("tissue_share"),
    }


def _add_hotspot_to_summary(summary_path: Path, hotspot: Hotspot | None, settings: SlideSettings) -> None:
    """Rewrite the summary written by ``detect_slide`` with the hotspot and its search settings, atomically."""
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputError(f"Cannot read {summary_path} to add the hotspot: {exc}") from exc
    summary["hotspot"] = None if hotspot is None else hotspot_record(hotspot)
    summary["hotspot_search"] = settings.hotspot_search()
    write_summary(summary_path, summary)


def process_slide(
    spec: SlideSpec,
    detector: TileDetector,
    output_dir: str | Path,
    settings: SlideSettings | None = None,
    *,
    progress: bool = False,
) -> CohortRow:
    """Detect figures on one slide, find its hotspot and write all its outputs.

    Writes the ``detect_slide`` outputs, then ``<stem>.hotspot.geojson`` and
    ``<stem>.thumbnail.png`` (figures and hotspot drawn), and last rewrites
    ``<stem>.summary.json`` with the ``hotspot`` and ``hotspot_search`` keys
    that ``finished_row`` takes as the mark of complete outputs.

    Args:
        spec: the slide.
        detector: the model.
        output_dir: folder for the outputs.
        settings: detection and hotspot settings; None uses the defaults.
        progress: show a progress bar while detecting.

    Returns:
        The slide's row with status "done" and ``attempts`` 1.

    Raises:
        The exceptions of ``detect_slide`` and ``read_overview``.
    """
    settings = SlideSettings() if settings is None else settings
    mpp = spec.mpp if spec.mpp is not None else settings.mpp
    result = detect_slide(
        spec.path,
        detector,
        output_dir,
        mpp=mpp,
        threshold=settings.threshold,
        tile_size_px=settings.tile_size_px,
        overlap_px=settings.overlap_px,
        batch_size=settings.batch_size,
        workers=settings.workers,
        read_threads=settings.read_threads,
        resume=settings.resume,
        progress=progress,
    )

    # Only mitotic figures count; a model may also report other classes.
    figures = result.figures
    if MIDOG_MITOTIC_FIGURE in figures.class_names:
        figures = figures.select(figures.labels == figures.class_names.index(MIDOG_MITOTIC_FIGURE))

    # NOTE: this reads the tissue-mask thumbnail again, which detect_slide
    # already read; the display thumbnail is new work.
    overview = read_overview(spec.path, mpp)
    hotspot = find_hotspot(
        figures.xy,
        overview.mpp,
        overview.tissue,
        settings.hotspot_shape,
        min_tissue_share=settings.min_tissue_share,
        step_um=settings.hotspot_step_um,
    )
    write_hotspot_geojson(hotspot_path(output_dir, spec.path), hotspot, search=settings.hotspot_search())
    write_png(thumbnail_path(output_dir, spec.path), draw_overview(overview, figures.xy, hotspot))
    if hotspot is None:
        logger.info(
            "Slide %s: no %.3g mm² window has a tissue share of at least %.2f, so no hotspot is reported",
            spec.path,
            settings.hotspot_shape.area_mm2,
            settings.min_tissue_share,
        )
    # The summary is rewritten last, because its hotspot keys mark the slide complete.
    _add_hotspot_to_summary(result.outputs.summary, hotspot, settings)

    return CohortRow(
        slide=spec.path.name,
        path=str(spec.path),
        status="done",
        attempts=1,
        threshold=result.threshold,
        num_figures=result.num_figures,
        tissue_area_mm2=result.tissue_area_mm2,
        figures_per_mm2=result.figures_per_mm2,
        hotspot_count=hotspot.count if hotspot else None,
        hotspot_x_px=hotspot.l0_centre_xy[0] if hotspot else None,
        hotspot_y_px=hotspot.l0_centre_xy[1] if hotspot else None,
        hotspot_tissue_share=hotspot.tissue_share if hotspot else None,
        seconds=result.seconds,
    )


def finished_row(
    spec: SlideSpec,
    output_dir: str | Path,
    settings: SlideSettings | None = None,
    *,
    model_sha256s: Collection[str] | None = None,
) -> CohortRow | None:
    """Return a "skipped" row when an earlier run left complete outputs for the slide, else None.

    Outputs are complete when all of these hold:

    - ``<stem>.summary.json`` is valid JSON with the counts and the
      ``hotspot`` and ``hotspot_search`` keys that ``process_slide`` adds
      last, every file it lists exists, and no ``<stem>.journal.jsonl`` is
      left;
    - its tile size and overlap match ``settings``, and so do its threshold
      and level-0 µm/px where ``settings`` or ``spec`` set them;
    - its model file's SHA-256 is in ``model_sha256s``, where given;
    - the hotspot GeoJSON and the thumbnail exist, and the summary and the
      GeoJSON were written with the same hotspot settings.
    """
    settings = SlideSettings() if settings is None else settings
    output_dir = Path(output_dir)
    summary_path = slide_outputs(output_dir, spec.path).summary
    hotspot_file = hotspot_path(output_dir, spec.path)
    if not (
        summary_path.is_file() and hotspot_file.is_file() and thumbnail_path(output_dir, spec.path).is_file()
    ):
        return None
    if journal_path(output_dir, spec.path).exists():
        return None
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        _, search = read_hotspot_geojson(hotspot_file)
    except (OSError, ValueError) as exc:
        logger.info("Slide %s: earlier outputs are unreadable (%s), so it runs again", spec.path, exc)
        return None

    required = (
        "num_figures",
        "tissue_area_mm2",
        "figures_per_mm2",
        "seconds",
        "threshold",
        "mpp",
        "outputs",
        "hotspot",
        "hotspot_search",
    )
    if not isinstance(summary, dict) or any(key not in summary for key in required):
        return None
    if not isinstance(summary["hotspot"], (dict, type(None))):
        return None
    listed = summary["outputs"]
    if not isinstance(listed, dict) or not all(
        (output_dir / str(name)).is_file() for name in listed.values()
    ):
        return None
    if not _same_settings(summary, spec, settings, model_sha256s) or search != settings.hotspot_search():
        logger.info("Slide %s: earlier outputs used other settings, so it runs again", spec.path)
        return None
    return CohortRow(
        slide=spec.path.name,
        path=str(spec.path),
        status="skipped",
        threshold=summary["threshold"],
        num_figures=summary["num_figures"],
        tissue_area_mm2=summary["tissue_area_mm2"],
        figures_per_mm2=summary["figures_per_mm2"],
        seconds=summary["seconds"],
        **_hotspot_fields(summary["hotspot"]),
    )


def _same_settings(
    summary: Mapping[str, Any],
    spec: SlideSpec,
    settings: SlideSettings,
    model_sha256s: Collection[str] | None,
) -> bool:
    """Tell whether a slide summary was written with ``settings``, the slide's µm/px and one of the models."""
    mpp = spec.mpp if spec.mpp is not None else settings.mpp
    run_settings = summary.get("run_settings")
    model_sha256 = run_settings.get("model_sha256") if isinstance(run_settings, dict) else None
    return (
        summary.get("tile_size_px") == settings.tile_size_px
        and summary.get("overlap_px") == settings.overlap_px
        and (settings.threshold is None or math.isclose(float(summary["threshold"]), settings.threshold))
        and (mpp is None or math.isclose(float(summary["mpp"]), mpp))
        and (model_sha256s is None or model_sha256 in model_sha256s)
        and summary.get("hotspot_search") == settings.hotspot_search()
    )


def _format_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_cohort_table(path: str | Path, rows: Sequence[CohortRow]) -> None:
    """Write the rows as CSV with ``TABLE_COLUMNS``, atomically; missing values are empty cells."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TABLE_COLUMNS)
    for row in rows:
        values = asdict(row)
        writer.writerow([_format_cell(values[name]) for name in TABLE_COLUMNS])
    with atomic_output(path) as temporary_path:
        temporary_path.write_text(buffer.getvalue(), encoding="utf-8")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# Detectors built in this process, by factory, so that a Ray worker running
# several slides loads the model once. Only hashable factories are cached.
_detector_cache: dict[Any, TileDetector] = {}


def _detector_from(factory: Callable[[], TileDetector]) -> TileDetector:
    try:
        hash(factory)
    except TypeError:
        return factory()
    if factory not in _detector_cache:
        _detector_cache.clear()
        _detector_cache[factory] = factory()
    return _detector_cache[factory]


def _attempt_slide(
    spec: SlideSpec,
    factory_or_detector: Callable[[], TileDetector] | TileDetector,
    output_dir: str,
    settings: SlideSettings,
    attempt: int,
    progress: bool,
) -> CohortRow:
    """Run one attempt on one slide; an exception becomes a "failed" row."""
    try:
        if isinstance(factory_or_detector, TileDetector):
            detector = factory_or_detector
        else:
            detector = _detector_from(factory_or_detector)
        row = process_slide(spec, detector, output_dir, settings, progress=progress)
    # A cohort goes on past any failing slide; the error is reported in its row and the log.
    except Exception as exc:  # noqa: BLE001
        return CohortRow(
            slide=spec.path.name,
            path=str(spec.path),
            status="failed",
            attempts=attempt,
            error=_one_line(exc),
            retry=not isinstance(exc, PERMANENT_ERRORS),
        )
    return replace(row, attempts=attempt)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MidogError(
            "Ray is not installed; install it with pip install 'midog[ray]', or run the slides in this "
            "process"
        ) from exc
    return ray


def _log_row(row: CohortRow) -> None:
    if row.status == "failed":
        attempts = "1 attempt" if row.attempts == 1 else f"{row.attempts} attempts"
        logger.error("Slide %s failed after %s: %s", row.path, attempts, row.error)
    else:
        logger.info(
            "Slide %s %s: figure count %s, hotspot count %s, %.1f s",
            row.path,
            row.status,
            row.num_figures,
            row.hotspot_count,
            row.seconds or 0.0,
        )


def _run_in_process(
    specs: Sequence[tuple[int, SlideSpec]],
    detector_factory: Callable[[], TileDetector],
    output_dir: str,
    settings: SlideSettings,
    retries: int,
    progress: bool,
    record: Callable[[int, CohortRow], None],
) -> None:
    # A model that fails to load fails every slide, so its error stops the run here.
    detector = detector_factory()
    for index, spec in specs:
        for attempt in range(1, retries + 2):
            row = _attempt_slide(spec, detector, output_dir, settings, attempt, progress)
            if row.status != "failed" or not row.retry or attempt > retries:
                break
            logger.warning(
                "Slide %s failed (attempt %d of %d), retrying: %s", spec.path, attempt, retries + 1, row.error
            )
        record(index, row)


def _run_on_ray(
    specs: Sequence[tuple[int, SlideSpec]],
    detector_factory: Callable[[], TileDetector],
    output_dir: str,
    settings: SlideSettings,
    retries: int,
    ray_address: str,
    ray_init: Mapping[str, Any] | None,
    num_cpus_per_slide: float | None,
    num_gpus_per_slide: float | None,
    record: Callable[[int, CohortRow], None],
) -> None:
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        init_kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
        init_kwargs.update(ray_init or {})
        ray.init(address=ray_address, **init_kwargs)
        logger.info("Started Ray at address %r: %s", ray_address, ray.cluster_resources())
    else:
        logger.info("Using the Ray cluster this process is connected to: %s", ray.cluster_resources())

    try:
        num_gpus = num_gpus_per_slide
        if num_gpus is None:
            num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        num_cpus = num_cpus_per_slide if num_cpus_per_slide is not None else float(1 + settings.workers)
        # Retries are counted here, so Ray itself retries nothing; a crashed worker counts as an attempt.
        task = ray.remote(_attempt_slide).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)
        logger.info(
            "Running %d slides as Ray tasks of %g CPUs and %g GPUs each", len(specs), num_cpus, num_gpus
        )

        in_flight: dict[Any, tuple[int, SlideSpec, int]] = {}

        def submit(index: int, spec: SlideSpec, attempt: int) -> None:
            ref = task.remote(spec, detector_factory, output_dir, settings, attempt, False)
            in_flight[ref] = (index, spec, attempt)

        for index, spec in specs:
            submit(index, spec, 1)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            index, spec, attempt = in_flight.pop(ready[0])
            try:
                row = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                row = CohortRow(spec.path.name, str(spec.path), "failed", attempt, _one_line(exc), retry=True)
            if row.status == "failed" and row.retry and attempt <= retries:
                logger.warning(
                    "Slide %s failed (attempt %d of %d), retrying: %s",
                    spec.path,
                    attempt,
                    retries + 1,
                    row.error,
                )
                submit(index, spec, attempt + 1)
                continue
            record(index, row)
    finally:
        if started_here:
            ray.shutdown()


def run_cohort(
    slides: SlideSpec | str | Path | Iterable[SlideSpec | str | Path],
    detector_factory: Callable[[], TileDetector],
    output_dir: str | Path,
    *,
    settings: SlideSettings | None = None,
    ray_address: str | None = None,
    retries: int = 1,
    num_cpus_per_slide: float | None = None,
    num_gpus_per_slide: float | None = None,
    ray_init: Mapping[str, Any] | None = None,
    progress: bool = False,
    on_row: Callable[[CohortRow], None] | None = None,
    write_table: bool = True,
) -> CohortResult:
    """Detect figures and hotspots on many slides and write a cohort summary table.

    Args:
        slides: slides, folders, glob patterns or manifest CSVs; see ``list_slides``.
        detector_factory: a callable returning the detector, called once in
            this process or once per Ray worker process. With Ray it must be
            picklable, such as ``OnnxDetectorFactory``.
        output_dir: folder for every slide's outputs and ``cohort_summary.csv``.
        settings: detection and hotspot settings; None uses the defaults.
        ray_address: None runs the slides one after another in this process.
            ``"local"`` starts a Ray instance on this machine, ``"auto"``
            joins the one running here, and ``"HOST:PORT"`` or
            ``"ray://HOST:PORT"`` joins that cluster. If this process is
            already connected to Ray, that connection is used. A Ray instance
            started or joined here is shut down at the end.
        retries: extra attempts for a slide that raised, 0 or more.
        num_cpus_per_slide: CPUs each Ray task reserves; None reserves
            ``1 + settings.workers``.
        num_gpus_per_slide: GPUs each Ray task reserves; None reserves one
            where the cluster has GPUs and none otherwise.
        ray_init: extra keyword arguments for ``ray.init``, such as ``num_cpus``.
        progress: show a progress bar per slide (in-process runs only).
        on_row: called in this process with each slide's final row as the
            slide is skipped, done or failed, in the order they finish.
        write_table: write ``cohort_summary.csv``; False leaves only the
            slides' own outputs, as for a run of one slide.

    Returns:
        The rows in input order and the table path.

    Raises:
        SlideOpenError: a listed path does not exist, or a folder or pattern has no slides.
        ManifestError: a manifest is invalid.
        OutputError: the output folder is not writable, or two slides share a file stem.
        MidogError: ``ray_address`` is set and Ray is not installed.
        ValueError: ``retries`` is negative.
        Exception: whatever ``detector_factory`` raises (``ModelError`` for
            ``OnnxDetectorFactory``) when the slides run in this process. On
            Ray, it fails each slide's task instead.
    """
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, got {retries}")
    settings = SlideSettings() if settings is None else settings
    specs = list_slides(slides)
    output_dir = check_output_dir(output_dir)
    _check_unique_stems(specs, output_dir)
    table_path = output_dir / COHORT_TABLE_NAME if write_table else None
    started = time.perf_counter()

    rows: list[CohortRow | None] = [None] * len(specs)

    def record(index: int, row: CohortRow) -> None:
        rows[index] = row
        _log_row(row)
        if table_path is not None:
            write_cohort_table(table_path, [r for r in rows if r is not None])
        if on_row is not None:
            on_row(row)

    # Slides done with another model run again. Only an OnnxDetectorFactory names its model files,
    # so with other factories the model is not checked.
    model_sha256s = None
    if isinstance(detector_factory, OnnxDetectorFactory):
        model_sha256s = detector_factory.model_sha256s()
    pending: list[tuple[int, SlideSpec]] = []
    for index, spec in enumerate(specs):
        row = finished_row(spec, output_dir, settings, model_sha256s=model_sha256s)
        if row is None:
            pending.append((index, spec))
        else:
            record(index, row)
    logger.info(
        "Cohort of %d slides: %d to run, %d skipped with complete outputs in %s",
        len(specs),
        len(pending),
        len(specs) - len(pending),
        output_dir,
    )

    if pending and ray_address is None:
        _run_in_process(pending, detector_factory, str(output_dir), settings, retries, progress, record)
    elif pending:
        _run_on_ray(
            pending,
            detector_factory,
            str(output_dir),
            settings,
            retries,
            ray_address,
            ray_init,
            num_cpus_per_slide,
            num_gpus_per_slide,
            record,
        )

    final_rows = [row for row in rows if row is not None]
    if table_path is not None:
        write_cohort_table(table_path, final_rows)
    result = CohortResult(final_rows, table_path)
    logger.info(
        "Cohort done in %.1f s: %d done, %d skipped, %d failed; table %s",
        time.perf_counter() - started,
        result.count("done"),
        result.count("skipped"),
        result.count("failed"),
        table_path or "not written",
    )
    return result
