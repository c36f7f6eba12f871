"""Detection output files: point CSV, QuPath GeoJSON and MIDOG challenge JSON.

Every writer goes through ``atomic_output``, so a failed write leaves no file
behind and never a half-written one. Coordinates are level-0 pixels
everywhere except in the MIDOG JSON, which the challenge defines in
millimetres (``mm = px * mpp / 1000``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import secrets
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from midog.errors import AnnotationError, OutputError
from midog.structures import Detections

__all__ = [
    "CSV_COLUMNS",
    "MAX_MIDOG_COORDINATE_MM",
    "MIDOG_MITOTIC_FIGURE",
    "MIDOG_NON_MITOTIC_FIGURE",
    "atomic_output",
    "mm_from_px",
    "px_from_mm",
    "read_detections_csv",
    "read_midog_json",
    "validate_midog_json",
    "write_detections_csv",
    "write_midog_json",
    "write_qupath_geojson",
]

logger = logging.getLogger(__name__)

# Columns of the detection CSV: a point-annotation CSV (image, x, y, label) plus the score.
CSV_COLUMNS = ("image", "x", "y", "label", "score")

MIDOG_MITOTIC_FIGURE = "mitotic figure"
MIDOG_NON_MITOTIC_FIGURE = "non-mitotic figure"
_MIDOG_POINT_NAMES = (MIDOG_MITOTIC_FIGURE, MIDOG_NON_MITOTIC_FIGURE)
_MIDOG_NAME = "Points of interest"
_MIDOG_TYPE = "Multiple points"
_MIDOG_VERSION = {"major": 1, "minor": 0}

# The largest coordinate accepted in a MIDOG JSON. The challenge images are
# regions of interest of about 7000 x 5000 px at 0.25 µm/px, under 2 mm wide,
# so a larger value means pixels were written where millimetres belong.
# NOTE: whole slides can be 25 mm or more wide at 0.25 µm/px; write their
# detections as CSV or GeoJSON instead.
MAX_MIDOG_COORDINATE_MM = 10.0

# Rows of detections converted to Python objects at once while writing, so
# that the writers' memory does not grow with the number of detections.
_ROWS_PER_CHUNK = 4096

# QuPath class colours as RGB, 0-255.
_CLASS_COLORS_RGB = {
    MIDOG_MITOTIC_FIGURE: (220, 20, 60),
    MIDOG_NON_MITOTIC_FIGURE: (30, 144, 255),
}
# Colours for other class names, by class index.
_FALLBACK_COLORS_RGB = ((255, 165, 0), (50, 205, 50), (148, 0, 211), (0, 206, 209), (255, 215, 0))


def _validate_mpp(mpp: float) -> float:
    value = float(mpp)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"mpp must be a positive number of µm/px, got {mpp!r}")
    return value


def _check_finite(path: Path, detections: Detections) -> None:
    """Raise OutputError if any coordinate or score is NaN or infinite."""
    bad_rows = ~(np.isfinite(detections.xy).all(axis=1) & np.isfinite(detections.scores))
    if bad_rows.any():
        index = int(np.flatnonzero(bad_rows)[0])
        raise OutputError(
            f"Failed to write {path}: {int(bad_rows.sum())} detections have a non-finite coordinate "
            "or score, "
            f"the first is detection {index} at x={detections.xy[index, 0]}, y={detections.xy[index, 1]} "
            f"with score {detections.scores[index]}"
        )


def _class_names_per_detection(path: Path, detections: Detections) -> list[str]:
    """Return the class name of every detection; raise OutputError for a label without a name."""
    num_classes = len(detections.class_names)
    bad = (detections.labels < 0) | (detections.labels >= num_classes)
    if bad.any():
        label = int(detections.labels[np.flatnonzero(bad)[0]])
        raise OutputError(
            f"Failed to write {path}: label {label} has no class name; class_names has {num_classes} "
            f"entries {detections.class_names!r}"
        )
    return [detections.class_names[int(label)] for label in detections.labels]


def _iter_rows(xy: np.ndarray, scores: np.ndarray) -> Iterator[tuple[float, float, np.float32]]:
    """Yield ``(x, y, score)`` per detection, converting a few thousand rows to Python floats at a time."""
    for start in range(0, len(xy), _ROWS_PER_CHUNK):
        chunk = slice(start, start + _ROWS_PER_CHUNK)
        for (x, y), score in zip(xy[chunk].tolist(), scores[chunk], strict=True):
            yield x, y, score


def _plain_score(score: np.floating | float) -> float:
    """Return a score as a Python float with the shortest decimal form of its float32 value."""
    # str() of a float32 is its shortest round-trip form: 0.91 rather than 0.9100000262260437.
    return float(str(np.float32(score)))


def _class_color_rgb(class_names: tuple[str, ...], class_name: str) -> list[int]:
    if class_name in _CLASS_COLORS_RGB:
        return list(_CLASS_COLORS_RGB[class_name])
    index = class_names.index(class_name)
    return list(_FALLBACK_COLORS_RGB[index % len(_FALLBACK_COLORS_RGB)])


def _dump_json(path: Path, obj: Any) -> None:
    """Write plain JSON atomically; NaN or infinity raises OutputError."""
    try:
        text = json.dumps(obj, allow_nan=False, indent=1)
    except (TypeError, ValueError) as exc:
        raise OutputError(f"Failed to write {path}: {exc}") from exc
    with atomic_output(path) as temporary_path:
        temporary_path.write_text(text + "\n", encoding="utf-8")


def _dump_json_with_items(path: Path, obj: dict[str, Any], key: str, items: Iterable[dict[str, Any]]) -> None:
    """Write ``obj`` with ``obj[key]`` replaced by ``items``, atomically, one item at a time.

    The text equals ``json.dumps(..., indent=1)`` of the whole object, but
    only one item is held as JSON at a time, so the memory needed for a
    slide's 100,000 candidates does not grow with their number.
    NaN or infinity raises OutputError.
    """
    marker = f'"{key}": []'
    try:
        text = json.dumps({**obj, key: []}, allow_nan=False, indent=1)
    except (TypeError, ValueError) as exc:
        raise OutputError(f"Failed to write {path}: {exc}") from exc
    head, found, tail = text.partition(marker)
    if not found:
        raise AssertionError(f"{marker} missing from the JSON of {path}")
    with (
        atomic_output(path) as temporary_path,
        temporary_path.open("w", encoding="utf-8") as file,
    ):
        file.write(head + f'"{key}": [')
        separator = "\n"
        for item in items:
            try:
                item_text = json.dumps(item, allow_nan=False, indent=1)
            except (TypeError, ValueError) as exc:
                raise OutputError(f"Failed to write {path}: {exc}") from exc
            file.write(separator + "  " + item_text.replace("\n", "\n  "))
            separator = ",\n"
        file.write("]" if separator == "\n" else "\n ]")
        file.write(tail + "\n")


def _is_real_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def mm_from_px(px: float | np.ndarray, mpp: float) -> float | np.ndarray:
    """Convert level-0 pixels to millimetres: ``px * mpp / 1000``."""
    return px * mpp / 1000.0


def px_from_mm(mm: float | np.ndarray, mpp: float) -> float | np.ndarray:
    """Convert millimetres to level-0 pixels: ``mm * 1000 / mpp``."""
    return mm * 1000.0 / mpp


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Give a temporary file beside ``path`` to write, and rename it to ``path`` on success.

    The temporary file is created empty (with the permissions the umask
    gives) in the same folder, so the final rename is atomic. On any exception
    inside the ``with`` block it is removed and ``path`` is left as it was.

    Args:
        path: the final output file.

    Yields:
        The temporary file's path.

    Raises:
        OutputError: the folder does not exist or is not writable, writing
            inside the block raises OSError (a full disk, for example), or the
            rename fails.
    """
    path = Path(path)
    folder = path.parent
    while True:
        temporary_path = folder / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(temporary_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(
                f"Failed to write {path.name} to folder {folder}: {exc.strerror or exc}; "
                "choose an existing, writable output folder"
            ) from exc

    try:
        yield temporary_path
        os.replace(temporary_path, path)
    except OSError as exc:
        temporary_path.unlink(missing_ok=True)
        raise OutputError(f"Failed to write {path}: {exc}") from exc
    except BaseException:
        temporary_path.unlink(missing_ok=True)
        raise


def write_detections_csv(path: str | Path, detections: Detections, image: str) -> None:
    """Write detections as CSV with columns ``image,x,y,label,score``.

    This is the point-annotation CSV layout (``image,x,y,label``) plus the
    score, so annotation readers and ``read_detections_csv`` can read it back.

    Args:
        path: the output file.
        detections: the detections; ``xy`` in level-0 px.
        image: the value of the ``image`` column, usually the slide's file name.

    Raises:
        OutputError: a coordinate or score is not finite, a label has no class
            name, or the file cannot be written.
    """
    path = Path(path)
    _check_finite(path, detections)
    names = _class_names_per_detection(path, detections)

    with (
        atomic_output(path) as temporary_path,
        temporary_path.open("w", newline="", encoding="utf-8") as file,
    ):
        writer = csv.writer(file)
        writer.writerow(CSV_COLUMNS)
        for (l0_x, l0_y, score), name in zip(
            _iter_rows(detections.xy, detections.scores), names, strict=True
        ):
            writer.writerow([image, repr(l0_x), repr(l0_y), name, repr(_plain_score(score))])


def read_detections_csv(path: str | Path) -> pd.DataFrame:
    """Read a CSV written by ``write_detections_csv``.

    Returns:
        A DataFrame with columns ``image`` (str), ``x``, ``y`` (float64, level-0
        px), ``label`` (str, class name) and ``score`` (float64).

    Raises:
        AnnotationError: the file is missing, lacks a column, or has a value
            that is not a number where one is expected.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError as exc:
        raise AnnotationError(f"Detection CSV not found: {path}") from exc
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise AnnotationError(f"Failed to read detection CSV {path}: {exc}") from exc

    missing = [column for column in CSV_COLUMNS if column not in table.columns]
    if missing:
        raise AnnotationError(
            f"Detection CSV {path} lacks columns {missing}; expected the header {','.join(CSV_COLUMNS)}"
        )
    table = table[list(CSV_COLUMNS)].copy()
    for column in ("x", "y", "score"):
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise AnnotationError(
                f"Detection CSV {path}: column {column} in data row {row + 1} is "
                f"{table[column].iloc[row]!r}, not a number"
            )
        table[column] = values.astype(np.float64)
    return table


def write_qupath_geojson(path: str | Path, detections: Detections, mpp: float) -> None:
    """Write detections as a GeoJSON FeatureCollection that QuPath imports as detection objects.

    Each Feature has a uuid4 ``id``, a Point geometry ``[x, y]`` in level-0 px,
    and properties ``objectType`` "detection", ``classification`` ``{"name",
    "color": [r, g, b]}`` and ``measurements`` ``{"score": p}``. All values are
    plain JSON numbers and strings.

    Args:
        path: the output file.
        detections: the detections; ``xy`` in level-0 px.
        mpp: level-0 µm/px of the slide. QuPath takes pixel coordinates, so it
            is only checked, not written.

    Raises:
        ValueError: ``mpp`` is not a positive finite number.
        OutputError: a coordinate or score is not finite, a label has no class
            name, or the file cannot be written.
    """
    path = Path(path)
    _validate_mpp(mpp)
    _check_finite(path, detections)
    names = _class_names_per_detection(path, detections)

    # QuPath 0.4 and later read the id as a UUID and measurements as a name-to-value object.
    def features() -> Iterator[dict[str, Any]]:
        for (l0_x, l0_y, score), name in zip(
            _iter_rows(detections.xy, detections.scores), names, strict=True
        ):
            yield {
                "type": "Feature",
                "id": str(uuid.uuid4()),
                "geometry": {"type": "Point", "coordinates": [l0_x, l0_y]},
                "properties": {
                    "objectType": "detection",
                    "classification": {"name": name, "color": _class_color_rgb(detections.class_names, name)},
                    "measurements": {"score": _plain_score(score)},
                },
            }

    _dump_json_with_items(path, {"type": "FeatureCollection", "features": []}, "features", features())


def validate_midog_json(obj: object, max_coordinate_mm: float | None = MAX_MIDOG_COORDINATE_MM) -> None:
    """Raise OutputError unless ``obj`` is a valid MIDOG challenge "Multiple points" result.

    The object must have exactly the keys ``name`` (a string), ``type``
    ("Multiple points"), ``points`` and ``version`` (``{"major": int, "minor":
    int}``). Each point must have exactly ``name`` ("mitotic figure" or
    "non-mitotic figure"), ``point`` (three finite numbers in mm, z = 0, x and y
    at most ``max_coordinate_mm`` in absolute value) and ``probability`` (finite, in 0-1).
    The message names the first invalid point and value. The default bound,
    ``MAX_MIDOG_COORDINATE_MM``, fits the challenge's region-of-interest
    images; pass None for whole slides, which are often wider than 10 mm.
    """
    if not isinstance(obj, dict):
        raise OutputError(f"MIDOG JSON must be an object, got {type(obj).__name__}")
    expected_keys = {"name", "type", "points", "version"}
    if set(obj) != expected_keys:
        raise OutputError(f"MIDOG JSON must have exactly the keys {sorted(expected_keys)}, got {sorted(obj)}")
    if not isinstance(obj["name"], str):
        raise OutputError(f"MIDOG JSON name must be a string, got {obj['name']!r}")
    if obj["type"] != _MIDOG_TYPE:
        raise OutputError(f"MIDOG JSON type must be {_MIDOG_TYPE!r}, got {obj['type']!r}")

    version = obj["version"]
    if not (
        isinstance(version, dict)
        and set(version) == {"major", "minor"}
        and all(isinstance(v, int) and not isinstance(v, bool) for v in version.values())
    ):
        raise OutputError(f"MIDOG JSON version must be {{'major': int, 'minor': int}}, got {version!r}")

    points = obj["points"]
    if not isinstance(points, list):
        raise OutputError(f"MIDOG JSON points must be a list, got {type(points).__name__}")
    for index, point in enumerate(points):
        _validate_midog_point(index, point, max_coordinate_mm)


def _validate_midog_point(index: int, point: object, max_coordinate_mm: float | None) -> None:
    if not isinstance(point, dict) or set(point) != {"name", "point", "probability"}:
        keys = sorted(point) if isinstance(point, dict) else type(point).__name__
        raise OutputError(
            f"MIDOG JSON point {index} must have exactly the keys ['name', 'point', 'probability'], "
            f"got {keys}"
        )
    if point["name"] not in _MIDOG_POINT_NAMES:
        raise OutputError(
            f"MIDOG JSON point {index} has name {point['name']!r}; expected one of {_MIDOG_POINT_NAMES}"
        )

    probability = point["probability"]
    if not (_is_real_number(probability) and math.isfinite(probability) and 0.0 <= probability <= 1.0):
        raise OutputError(
            f"MIDOG JSON point {index} has probability {probability!r}; expected a number in 0-1"
        )

    coordinates = point["point"]
    if not (
        isinstance(coordinates, list)
        and len(coordinates) == 3
        and all(_is_real_number(c) and math.isfinite(c) for c in coordinates)
    ):
        raise OutputError(
            f"MIDOG JSON point {index} has point {coordinates!r}; expected three finite numbers [x, y, 0]"
        )
    if coordinates[2] != 0:
        raise OutputError(f"MIDOG JSON point {index} has z = {coordinates[2]!r}; expected 0")
    if max_coordinate_mm is not None and max(abs(coordinates[0]), abs(coordinates[1])) > max_coordinate_mm:
        raise OutputError(
            f"MIDOG JSON point {index} has point {coordinates!r}, above {max_coordinate_mm:g} mm; "
            "coordinates must be millimetres (px * mpp / 1000), not pixels"
        )


def write_midog_json(
    path: str | Path,
    detections: Detections,
    mpp: float,
    threshold: float,
    max_coordinate_mm: float | None = MAX_MIDOG_COORDINATE_MM,
) -> None:
    """Write detections in the MIDOG challenge's "Multiple points" JSON.

    Points with ``score >= threshold`` are named "mitotic figure", the others
    "non-mitotic figure"; every point keeps its score as ``probability``.
    Coordinates are ``[x_mm, y_mm, 0]`` with ``mm = px * mpp / 1000``. Where
    the detections have several classes, only those of class "mitotic figure"
    are written, so that ``probability`` is always that of a mitotic figure.

    Args:
        path: the output file.
        detections: the detections; ``xy`` in level-0 px, scores in 0-1.
        mpp: level-0 µm/px of the image.
        threshold: score at and above which a point is a mitotic figure.
        max_coordinate_mm: largest allowed coordinate (see ``validate_midog_json``);
            None for whole slides.

    Raises:
        ValueError: ``mpp`` is not a positive finite number.
        OutputError: the detections have several classes and none is named
            "mitotic figure", or the result fails ``validate_midog_json``
            (NaN, a score outside 0-1, a coordinate above
            ``max_coordinate_mm``), or the file cannot be written.
    """
    path = Path(path)
    mpp = _validate_mpp(mpp)
    if len(detections.class_names) > 1:
        if MIDOG_MITOTIC_FIGURE not in detections.class_names:
            raise OutputError(
                f"Failed to write {path}: none of the classes {detections.class_names!r} is named "
                f"{MIDOG_MITOTIC_FIGURE!r}, and a MIDOG JSON lists mitotic figure candidates only"
            )
        is_mitotic_class = detections.labels == detections.class_names.index(MIDOG_MITOTIC_FIGURE)
        logger.info(
            "Writing %d of %d detections to %s; the others are not of class %r",
            int(is_mitotic_class.sum()),
            len(detections),
            path,
            MIDOG_MITOTIC_FIGURE,
        )
        detections = detections.select(is_mitotic_class)

    xy_mm = mm_from_px(detections.xy, mpp)
    result = {"name": _MIDOG_NAME, "type": _MIDOG_TYPE, "points": [], "version": dict(_MIDOG_VERSION)}

    def points() -> Iterator[dict[str, Any]]:
        for index, (x_mm, y_mm, score) in enumerate(_iter_rows(xy_mm, detections.scores)):
            name = MIDOG_MITOTIC_FIGURE if score >= threshold else MIDOG_NON_MITOTIC_FIGURE
            point = {"name": name, "point": [x_mm, y_mm, 0], "probability": _plain_score(score)}
            try:
                _validate_midog_point(index, point, max_coordinate_mm)
            except OutputError as exc:
                raise OutputError(f"Failed to write {path}: {exc}") from exc
            yield point

    # Each point is checked just before it is written. An invalid point leaves
    # no file, because the output is renamed into place only when complete.
    _dump_json_with_items(path, result, "points", points())


def read_midog_json(path: str | Path, mpp: float) -> Detections:
    """Read a MIDOG "Multiple points" JSON back into detections.

    Both "mitotic figure" (label 0) and "non-mitotic figure" (label 1) points
    are kept, each with its ``probability`` as score.

    Args:
        path: the JSON file.
        mpp: level-0 µm/px of the image, to convert mm to px.

    Returns:
        Detections with ``xy`` in level-0 px and ``class_names``
        ``("mitotic figure", "non-mitotic figure")``.

    Raises:
        ValueError: ``mpp`` is not a positive finite number.
        AnnotationError: the file is missing, is not JSON, or fails
            ``validate_midog_json``.
    """
    path = Path(path)
    mpp = _validate_mpp(mpp)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise AnnotationError(f"MIDOG JSON not found: {path}") from exc
    except (OSError, ValueError) as exc:
        raise AnnotationError(f"Failed to read MIDOG JSON {path}: {exc}") from exc
    try:
        validate_midog_json(obj)
    except OutputError as exc:
        raise AnnotationError(f"Invalid MIDOG JSON {path}: {exc}") from exc

    points = obj["points"]
    xy_mm = np.array([point["point"][:2] for point in points], dtype=np.float64).reshape(-1, 2)
    scores = np.array([point["probability"] for point in points], dtype=np.float32)
    labels = np.array([_MIDOG_POINT_NAMES.index(point["name"]) for point in points], dtype=np.int64)
    return Detections(px_from_mm(xy_mm, mpp), scores, labels, _MIDOG_POINT_NAMES)
