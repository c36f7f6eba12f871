"""Readers for mitotic figure annotations in MIDOG, COCO, CSV and QuPath formats.

Every reader produces the same two tables (pandas DataFrames):

* The annotation table has one row per annotated cell. Its columns are
  ``image`` (file name), ``x`` and ``y`` (cell centre, float64, level-0 px,
  pixel centres at integer coordinates), ``label`` (``"mitotic figure"``,
  ``"imposter"`` or another kind as written in the file), the domain columns
  ``tumor``, ``scanner``, ``lab``, ``species`` and ``split`` (str or None),
  and ``votes`` (tuple of the MIDOG++ expert votes as category ids, or None).
* The image table has one row per image. Its columns are ``image``,
  ``image_id`` (Int64, may be missing), ``width`` and ``height`` (Int64 px,
  may be missing), ``mpp`` (float64 µm/px, NaN when the file gives none),
  the domain columns, ``roi_type`` and ``labelled`` (bool, whether the image
  was annotated at all).

Supported formats (``format=``):

* ``"midogpp"``: the MIDOG++ database (COCO-like, but ``bbox`` is
  ``[x1, y1, x2, y2]``, 50x50 px around the cell; category 1 is a mitotic
  figure, 2 an imposter; images have ``tumor_type``; annotations have
  ``labels``, the individual expert votes). Images without any annotation
  (ids 151-200, the unlabelled fourth MIDOG 2021 scanner) get
  ``labelled=False``.
* ``"midog21"``: the MIDOG 2021 training set, the same layout without
  ``tumor_type`` and ``labels``; all its images are human breast cancer.
* ``"coco"``: plain COCO JSON with ``bbox = [x, y, width, height]``.
* ``"csv"``: points, with columns ``image,x,y`` and optionally ``label``
  and image-level columns (``width``, ``height``, ``mpp`` and the domain
  columns).
* ``"geojson"``: QuPath GeoJSON export (Point or MultiPoint features whose
  ``properties.classification.name`` is the label; the image is named after
  the file, ``001.tiff.geojson`` -> ``001.tiff``).
* ``"midog_gt"``: the ground-truth JSON of the MIDOG challenge evaluation
  containers (``{image: {"annotations": [[x_mm, y_mm, 0], ...],
  "tumor domain": ..., "roi type": ...}}``); needs ``mpp`` to convert
  millimetres to pixels.

A MIDOG file read as COCO (or the reverse) is recognised from the box geometry
and rejected with :class:`~midog.errors.AnnotationError`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import shapely.geometry

from midog.errors import AnnotationError
from midog.io.domains import (
    DOMAIN_COLUMNS,
    MIDOGPP_TUMOR_TYPES,
    _apply_domain_aliases,
    _check_file,
    _examples,
    _format_counts,
    _merge_domains,
    _none_if_missing,
    _object_column,
    _read_csv_table,
    _report_domains,
    read_domains_csv,
)

__all__ = [
    "ANNOTATION_COLUMNS",
    "DOMAIN_COLUMNS",
    "IMAGE_COLUMNS",
    "IMPOSTER",
    "MIDOGPP_TUMOR_TYPES",
    "MITOTIC_FIGURE",
    "AnnotationFormat",
    "centers_from_boxes",
    "infer_box_layout",
    "normalize_label",
    "read_annotations",
    "read_domains_csv",
]

logger = logging.getLogger(__name__)

MITOTIC_FIGURE = "mitotic figure"
IMPOSTER = "imposter"

ANNOTATION_COLUMNS: tuple[str, ...] = ("image", "x", "y", "label", *DOMAIN_COLUMNS, "votes")
IMAGE_COLUMNS: tuple[str, ...] = (
    "image",
    "image_id",
    "width",
    "height",
    "mpp",
    *DOMAIN_COLUMNS,
    "roi_type",
    "labelled",
)

AnnotationFormat = Literal["auto", "midogpp", "midog21", "coco", "csv", "geojson", "midog_gt"]
FORMATS: tuple[str, ...] = ("auto", "midogpp", "midog21", "coco", "csv", "geojson", "midog_gt")

MIDOG21_TUMOR = "human breast cancer"

# Lower-case label spellings found in MIDOG, COCO exports and QuPath projects.
_LABEL_ALIASES: dict[str, str] = {
    "mitotic figure": MITOTIC_FIGURE,
    "mitotic figures": MITOTIC_FIGURE,
    "mitosis": MITOTIC_FIGURE,
    "mitoses": MITOTIC_FIGURE,
    "mitose": MITOTIC_FIGURE,
    "mf": MITOTIC_FIGURE,
    "imposter": IMPOSTER,
    "impostor": IMPOSTER,
    "not mitotic figure": IMPOSTER,
    "non-mitotic figure": IMPOSTER,
    "non mitotic figure": IMPOSTER,
    "nonmitotic figure": IMPOSTER,
    "hard negative": IMPOSTER,
    "mitotic figure lookalike": IMPOSTER,
    "mitotic-like figure": IMPOSTER,
}


# ---------------------------------------------------------------------------
# Small pure helpers
# ---------------------------------------------------------------------------


def normalize_label(name: str) -> str:
    """Map a label spelling to ``"mitotic figure"`` or ``"imposter"``.

    Case, surrounding space and ``_`` are ignored, so ``"Mitotic_Figure"`` and
    ``"Hard negative"`` are recognised.

    Args:
        name: the label or category name as written in a file.

    Returns:
        ``MITOTIC_FIGURE`` or ``IMPOSTER`` for known spellings, else ``name``
        stripped of surrounding space.
    """
    key = " ".join(str(name).replace("_", " ").lower().split())
    return _LABEL_ALIASES.get(key, str(name).strip())


def infer_box_layout(boxes: np.ndarray) -> Literal["xyxy", "xywh"] | None:
    """Infer whether boxes are ``[x1, y1, x2, y2]`` (MIDOG) or ``[x, y, w, h]`` (COCO).

    MIDOG boxes always have ``x2 > x1`` and ``y2 > y1`` and the same size
    (50x50 px). Read as COCO, their "width" is ``x2``, which varies with the
    position. COCO boxes far from the origin have ``x + w`` below ``x``'s
    scale, so read as MIDOG they get ``x2 < x1``. Rules, in order:

    1. Only one layout gives positive sizes for every box: that layout.
    2. Both do, and at least two boxes: the layout whose sizes vary less.
    3. Otherwise (no boxes, one box, equal spread, or neither layout valid):
       None.

    Args:
        boxes: ``(N, 4)`` float, the ``bbox`` entries as written.

    Returns:
        ``"xyxy"``, ``"xywh"`` or None when the geometry cannot tell.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return None
    a, b, c, d = boxes.T
    xyxy_valid = bool(np.all(c > a) and np.all(d > b))
    xywh_valid = bool(np.all(c > 0) and np.all(d > 0))
    if xyxy_valid != xywh_valid:
        return "xyxy" if xyxy_valid else "xywh"
    if not xyxy_valid or len(boxes) < 2:
        return None

    spread_xyxy = np.ptp(c - a) + np.ptp(d - b)
    spread_xywh = np.ptp(c) + np.ptp(d)
    if spread_xyxy < spread_xywh:
        return "xyxy"
    if spread_xywh < spread_xyxy:
        return "xywh"
    return None


def centers_from_boxes(boxes: np.ndarray, layout: Literal["xyxy", "xywh"]) -> np.ndarray:
    """Return box centres.

    Args:
        boxes: ``(N, 4)`` float, level-0 px, in ``layout``.
        layout: ``"xyxy"`` for ``[x1, y1, x2, y2]``, ``"xywh"`` for ``[x, y, w, h]``.

    Returns:
        ``(N, 2)`` float64 ``x, y`` centres in level-0 px.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if layout == "xyxy":
        return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    return np.stack([boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2], axis=1)


# ---------------------------------------------------------------------------
# File loading
# ---------------------------------------------------------------------------


def _load_json(path: Path) -> Any:
    try:
        with path.open("r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}); "
            "check that the file is complete"
        ) from exc
    except UnicodeDecodeError as exc:
        raise AnnotationError(
            f"{path}: not a UTF-8 text file; pass a JSON, CSV or GeoJSON annotation file"
        ) from exc


def _is_geojson(data: Any) -> bool:
    if isinstance(data, dict):
        return data.get("type") in ("FeatureCollection", "Feature")
    if isinstance(data, list) and data:
        return all(isinstance(item, dict) and item.get("type") == "Feature" for item in data)
    return False


def _is_coco_like(data: Any) -> bool:
    return isinstance(data, dict) and "images" in data and "annotations" in data


def _is_midog_gt(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and len(data) > 0
        and all(isinstance(v, dict) and "annotations" in v for v in data.values())
    )


def _detect_format(path: Path) -> tuple[str, Any]:
    """Return the format name and, for JSON files, the parsed content."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        return "csv", None
    data = _load_json(path)
    if _is_geojson(data):
        return "geojson", data
    if _is_coco_like(data):
        images = data.get("images") or []
        annotations = data.get("annotations") or []
        if any(isinstance(im, dict) and "tumor_type" in im for im in images) or any(
            isinstance(a, dict) and "labels" in a for a in annotations
        ):
            return "midogpp", data
        if not annotations:
            return "coco", data
        layout = infer_box_layout(_boxes_of(path, annotations))
        if layout == "xyxy":
            return "midog21", data
        if layout == "xywh":
            return "coco", data
        raise AnnotationError(
            f"{path}: cannot tell from the boxes whether bbox is [x1, y1, x2, y2] (MIDOG) or "
            "[x, y, width, height] (COCO); pass format='midog21' or format='coco'"
        )
    if _is_midog_gt(data):
        return "midog_gt", data
    if isinstance(data, dict) and "points" in data:
        raise AnnotationError(
            f"{path}: this is a MIDOG detection file ('points'), not ground truth; pass it as detections"
        )
    raise AnnotationError(
        f"{path}: unknown annotation format; expected MIDOG++/MIDOG 2021/COCO JSON, a point CSV "
        "(image,x,y,label), QuPath GeoJSON or a MIDOG ground-truth JSON"
    )


# ---------------------------------------------------------------------------
# COCO-like readers (MIDOG++, MIDOG 2021, COCO)
# ---------------------------------------------------------------------------


def _boxes_of(path: Path, annotations: Sequence[Any]) -> np.ndarray:
    boxes = np.zeros((len(annotations), 4), dtype=np.float64)
    for i, ann in enumerate(annotations):
        bbox = ann.get("bbox") if isinstance(ann, dict) else None
        try:
            boxes[i] = [float(v) for v in bbox]  # type: ignore[union-attr]
        except (TypeError, ValueError) as exc:
            ann_id = ann.get("id") if isinstance(ann, dict) else None
            raise AnnotationError(
                f"{path}: annotation {i} (id {ann_id}) has bbox {bbox!r}; expected four numbers"
            ) from exc
    if not np.all(np.isfinite(boxes)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(boxes), axis=1))[0])
        raise AnnotationError(f"{path}: annotation {bad} has a non-finite bbox {boxes[bad].tolist()}")
    return boxes


def _check_layout(path: Path, boxes: np.ndarray, declared: str) -> Literal["xyxy", "xywh"]:
    """Return the declared layout, or raise when the geometry shows the other one."""
    expected: Literal["xyxy", "xywh"] = "xywh" if declared == "coco" else "xyxy"
    inferred = infer_box_layout(boxes)
    if inferred is None or inferred == expected:
        if (
            expected == "xyxy"
            and len(boxes)
            and not (np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1]))
        ):
            bad = int(np.flatnonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))[0])
            raise AnnotationError(
                f"{path}: bbox {boxes[bad].tolist()} has x2 <= x1 or y2 <= y1, "
                f"which a {declared} file ([x1, y1, x2, y2]) cannot have"
            )
        return expected

    example = boxes[0].tolist()
    if declared == "coco":
        raise AnnotationError(
            f"{path}: the boxes are MIDOG [x1, y1, x2, y2] with a constant size "
            f"(e.g. bbox {example}), not COCO [x, y, width, height]; read it with format='midogpp' "
            "or format='midog21'"
        )
    raise AnnotationError(
        f"{path}: the boxes are COCO [x, y, width, height] (e.g. bbox {example} has x2 < x1 when read "
        f"as [x1, y1, x2, y2]), not {declared}; read it with format='coco'"
    )


def _read_coco_like(path: Path, data: Any, fmt: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    if not _is_coco_like(data):
        raise AnnotationError(
            f"{path}: not a {fmt} file: expected a JSON object with 'images' and 'annotations'"
        )
    images = data["images"] or []
    annotations = data["annotations"] or []
    categories = data.get("categories") or []

    # Image table.
    image_rows = []
    name_by_id: dict[Any, str] = {}
    for i, im in enumerate(images):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise AnnotationError(f"{path}: image entry {i} lacks 'id' or 'file_name': {im!r}")
        name = Path(str(im["file_name"])).name
        if im["id"] in name_by_id:
            raise AnnotationError(f"{path}: image id {im['id']} appears twice; ids must be unique")
        name_by_id[im["id"]] = name
        row = {
            "image": name,
            "image_id": im["id"],
            "width": im.get("width"),
            "height": im.get("height"),
            "mpp": im.get("mpp", np.nan),
        }
        tumor = im.get("tumor_type", im.get("tumor"))
        if fmt == "midog21":
            tumor = MIDOG21_TUMOR
        row["tumor"] = tumor
        for column in ("scanner", "lab", "species", "split", "roi_type"):
            row[column] = im.get(column)
        image_rows.append(row)
    image_table = pd.DataFrame(image_rows, columns=[c for c in IMAGE_COLUMNS if c != "labelled"])

    # Categories.
    category_names: dict[Any, str] = {}
    for cat in categories:
        if isinstance(cat, dict) and "id" in cat:
            category_names[cat["id"]] = str(cat.get("name", cat["id"]))
    if fmt == "midogpp":
        # MIDOG++ names category 2 "not mitotic figure"; both ids are fixed by the dataset.
        category_names.setdefault(1, MITOTIC_FIGURE)
        category_names.setdefault(2, IMPOSTER)

    # Annotations.
    boxes = _boxes_of(path, annotations)
    layout = _check_layout(path, boxes, fmt)
    centers = centers_from_boxes(boxes, layout)

    missing_categories: Counter[Any] = Counter()
    missing_images: Counter[Any] = Counter()
    names, labels, votes = [], [], []
    for ann in annotations:
        image_id = ann.get("image_id")
        if image_id not in name_by_id:
            missing_images[image_id] += 1
            names.append(None)
        else:
            names.append(name_by_id[image_id])
        category_id = ann.get("category_id")
        if category_id not in category_names:
            missing_categories[category_id] += 1
            labels.append(None)
        else:
            labels.append(category_names[category_id])
        raw_votes = ann.get("labels")
        votes.append(tuple(int(v) for v in raw_votes) if isinstance(raw_votes, list) else None)

    if missing_images:
        raise AnnotationError(
            f"{path}: {sum(missing_images.values())} annotations refer to image ids not listed in "
            f"'images': {_format_counts(missing_images)}"
        )
    if missing_categories:
        raise AnnotationError(
            f"{path}: {sum(missing_categories.values())} annotations have category ids not listed in "
            f"'categories': {_format_counts(missing_categories)}; add the categories to the file"
        )

    table = pd.DataFrame(
        {"image": names, "x": centers[:, 0], "y": centers[:, 1], "label": labels, "votes": votes}
    )
    annotated = set(table["image"])
    if fmt in ("midogpp", "midog21"):
        # MIDOG images without a single annotation are the unlabelled ones (ids 151-200).
        image_table["labelled"] = image_table["image"].isin(annotated)
    else:
        image_table["labelled"] = True
    return table, image_table


# ---------------------------------------------------------------------------
# CSV, GeoJSON and MIDOG ground-truth readers
# ---------------------------------------------------------------------------


def _read_points_csv(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = _read_csv_table(path)
    frame.columns = [str(c).strip() for c in frame.columns]
    lower = {c.lower(): c for c in frame.columns}
    if "slide" in lower and "x" not in lower:
        raise AnnotationError(
            f"{path}: this is a domains table (Slide;Dataset;Tumor;...), not point annotations; "
            "pass it as domains_csv (--domains)"
        )
    missing = [c for c in ("image", "x", "y") if c not in lower]
    if missing:
        raise AnnotationError(
            f"{path}: point CSV lacks column(s) {', '.join(missing)}; expected a header image,x,y,label"
        )
    frame = frame.rename(columns={lower[c]: c for c in lower})

    if "label" not in frame.columns:
        logger.info("%s has no 'label' column; all %d points are read as mitotic figures", path, len(frame))
        frame["label"] = MITOTIC_FIGURE
    if "score" in frame.columns:
        logger.info("%s has a 'score' column, which ground truth ignores", path)

    try:
        x = pd.to_numeric(frame["x"], errors="raise").to_numpy(dtype=np.float64)
        y = pd.to_numeric(frame["y"], errors="raise").to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise AnnotationError(f"{path}: columns x and y must be numbers in level-0 px ({exc})") from exc
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise AnnotationError(f"{path}: row {row + 2} has a missing or non-finite x or y")
    if frame["image"].isna().any():
        row = int(np.flatnonzero(frame["image"].isna().to_numpy())[0])
        raise AnnotationError(f"{path}: row {row + 2} has no image name")

    images = frame["image"].astype(str).map(lambda s: Path(s).name)
    table = pd.DataFrame(
        {"image": images, "x": x, "y": y, "label": frame["label"].astype(str), "votes": None}
    )

    image_columns = [
        c for c in ("image_id", "width", "height", "mpp", *DOMAIN_COLUMNS, "roi_type") if c in frame
    ]
    image_frame = frame[image_columns].copy()
    image_frame.insert(0, "image", images)
    image_table = image_frame.groupby("image", sort=False, as_index=False).first()
    for column in IMAGE_COLUMNS:
        if column not in image_table:
            image_table[column] = np.nan if column == "mpp" else None
    image_table["labelled"] = True
    return table, image_table


def _classification_name(feature: Mapping[str, Any]) -> str | None:
    properties = feature.get("properties") or {}
    classification = properties.get("classification") or feature.get("classification")
    if isinstance(classification, dict):
        name = classification.get("name")
        if name is None and isinstance(classification.get("names"), list):
            name = ": ".join(str(n) for n in classification["names"])
        return None if name is None else str(name)
    if isinstance(classification, str):
        return classification
    return None


def _read_geojson(path: Path, data: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features") or []
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise AnnotationError(f"{path}: not GeoJSON: expected a FeatureCollection or a list of Features")

    image = path.stem if path.suffix.lower() in (".geojson", ".json") else path.name
    xs: list[float] = []
    ys: list[float] = []
    labels: list[str] = []
    centroid_counts: Counter[str] = Counter()
    for i, feature in enumerate(features):
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        if not geometry:
            raise AnnotationError(f"{path}: feature {i} has no geometry")
        try:
            shape = shapely.geometry.shape(geometry)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise AnnotationError(f"{path}: feature {i} has an invalid geometry ({exc})") from exc
        label = _classification_name(feature) or "unclassified"
        if shape.geom_type == "Point":
            points = [shape]
        elif shape.geom_type == "MultiPoint":
            points = list(shape.geoms)
        else:
            centroid_counts[shape.geom_type] += 1
            points = [shape.centroid]
        for point in points:
            xs.append(float(point.x))
            ys.append(float(point.y))
            labels.append(label)
    if centroid_counts:
        logger.warning(
            "%s: %d features are not points (%s); each is read as its centroid",
            path,
            sum(centroid_counts.values()),
            _format_counts(centroid_counts),
        )

    table = pd.DataFrame({"image": image, "x": xs, "y": ys, "label": labels, "votes": None})
    table["image"] = table["image"].astype(object)
    image_table = pd.DataFrame([{c: None for c in IMAGE_COLUMNS}])
    image_table["image"] = image
    image_table["mpp"] = np.nan
    image_table["labelled"] = True
    return table, image_table


def _read_midog_gt(path: Path, data: Any, mpp: float | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    if not _is_midog_gt(data):
        raise AnnotationError(
            f"{path}: not a MIDOG ground-truth JSON: expected {{image: {{'annotations': [[x_mm, y_mm, 0], ...]}}}}"
        )
    if mpp is None or not mpp > 0:
        raise AnnotationError(
            f"{path}: MIDOG ground truth is in millimetres; pass mpp (µm/px, e.g. 0.25) to convert it to pixels"
        )
    px_per_mm = 1000.0 / mpp
    rows, image_rows = [], []
    for name, entry in data.items():
        image = Path(str(name)).name
        for point in entry["annotations"]:
            try:
                x_mm, y_mm = float(point[0]), float(point[1])
            except (TypeError, ValueError, IndexError) as exc:
                raise AnnotationError(f"{path}: image {image} has an invalid point {point!r}") from exc
            rows.append(
                {
                    "image": image,
                    "x": x_mm * px_per_mm,
                    "y": y_mm * px_per_mm,
                    "label": MITOTIC_FIGURE,
                    "votes": None,
                }
            )
        tumor = entry.get("tumor domain")
        roi_type = entry.get("roi type")
        image_rows.append(
            {
                "image": image,
                "image_id": None,
                "width": None,
                "height": None,
                "mpp": float(mpp),
                "tumor": None if tumor is None else str(tumor),
                "scanner": None,
                "lab": None,
                "species": None,
                "split": None,
                "roi_type": None if roi_type is None else str(roi_type),
                "labelled": True,
            }
        )
    table = pd.DataFrame(rows, columns=["image", "x", "y", "label", "votes"])
    return table, pd.DataFrame(image_rows, columns=list(IMAGE_COLUMNS))


# ---------------------------------------------------------------------------
# Post-processing shared by all formats
# ---------------------------------------------------------------------------


def _normalize_labels(path: Path, table: pd.DataFrame) -> None:
    table["label"] = table["label"].map(normalize_label)
    unknown = table.loc[~table["label"].isin([MITOTIC_FIGURE, IMPOSTER]), "label"]
    if len(unknown):
        logger.warning(
            "%s: %d annotations have labels other than %r and %r: %s; they are kept with their own "
            "label and count as neither in evaluation",
            path,
            len(unknown),
            MITOTIC_FIGURE,
            IMPOSTER,
            _format_counts(Counter(unknown)),
        )


def _clip_to_images(path: Path, table: pd.DataFrame, image_table: pd.DataFrame) -> None:
    """Clip centres to ``[0, width - 1] x [0, height - 1]`` where the size is known."""
    sizes = image_table.set_index("image")[["width", "height"]]
    width = pd.to_numeric(table["image"].map(sizes["width"]), errors="coerce").to_numpy(dtype=np.float64)
    height = pd.to_numeric(table["image"].map(sizes["height"]), errors="coerce").to_numpy(dtype=np.float64)
    x = table["x"].to_numpy(dtype=np.float64)
    y = table["y"].to_numpy(dtype=np.float64)
    x_max = np.where(np.isfinite(width), width - 1, np.inf)
    y_max = np.where(np.isfinite(height), height - 1, np.inf)
    x_clipped = np.clip(x, 0.0, x_max)
    y_clipped = np.clip(y, 0.0, y_max)
    moved = (x_clipped != x) | (y_clipped != y)
    if moved.any():
        distance_px = np.hypot(x_clipped - x, y_clipped - y)[moved]
        logger.warning(
            "%s: clipped %d annotation centres lying up to %.1f px outside their image to the image "
            "border (%s)",
            path,
            int(moved.sum()),
            float(distance_px.max()),
            _examples(table.loc[moved, "image"].unique()),
        )
        table["x"] = x_clipped
        table["y"] = y_clipped


def _finish(
    path: Path,
    table: pd.DataFrame,
    image_table: pd.DataFrame,
    domains_csv: str | Path | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    duplicated = image_table["image"][image_table["image"].duplicated()]
    if len(duplicated):
        raise AnnotationError(f"{path}: image file names listed twice: {_examples(duplicated.unique())}")

    for column in ("width", "height", "image_id"):
        image_table[column] = pd.to_numeric(image_table[column].map(_none_if_missing), errors="coerce")
        image_table[column] = image_table[column].round().astype("Int64")
    image_table["mpp"] = pd.to_numeric(image_table["mpp"], errors="coerce").astype(np.float64)
    for column in (*DOMAIN_COLUMNS, "roi_type"):
        image_table[column] = _object_column(image_table[column], image_table.index)
    image_table["labelled"] = image_table["labelled"].astype(bool)
    _apply_domain_aliases(image_table, source=path)

    if domains_csv is not None:
        domains_path = Path(domains_csv)
        _merge_domains(path, image_table, read_domains_csv(domains_path), domains_path)
    _report_domains(path, image_table)

    table["x"] = table["x"].astype(np.float64)
    table["y"] = table["y"].astype(np.float64)
    _normalize_labels(path, table)
    _clip_to_images(path, table, image_table)

    domains = image_table.set_index("image")[list(DOMAIN_COLUMNS)]
    for column in DOMAIN_COLUMNS:
        table[column] = _object_column(table["image"].map(domains[column]), table.index)
    table = table[list(ANNOTATION_COLUMNS)].reset_index(drop=True)
    image_table = image_table[list(IMAGE_COLUMNS)].reset_index(drop=True)

    counts = Counter(table["label"])
    logger.info(
        "read %d annotations (%d mitotic figures, %d imposters) on %d images (%d labelled) from %s",
        len(table),
        counts.get(MITOTIC_FIGURE, 0),
        counts.get(IMPOSTER, 0),
        len(image_table),
        int(image_table["labelled"].sum()),
        path,
    )
    return table, image_table


# ---------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------


def read_annotations(
    path: str | Path,
    format: AnnotationFormat = "auto",
    domains_csv: str | Path | None = None,
    mpp: float | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read an annotation file into the annotation table and the image table.

    Centres that lie outside their image (MIDOG++ has two, up to 5 px past
    the top or left edge) are clipped to the image with one warning that
    counts them. Labels outside mitotic figure and imposter, images without
    a tumour type, and rows of ``domains_csv`` that match nothing are
    reported as warnings with counts; nothing is dropped.

    Args:
        path: the annotation file.
        format: one of ``"auto"``, ``"midogpp"``, ``"midog21"``, ``"coco"``,
            ``"csv"``, ``"geojson"``, ``"midog_gt"`` (see the module
            docstring). ``"auto"`` decides from the suffix and content.
        domains_csv: optional per-image domain table (see
            :func:`read_domains_csv`) that fills tumour, scanner, lab,
            species and split; the annotation file wins where both give a
            value.
        mpp: µm/px, needed only to convert the millimetres of ``"midog_gt"``.

    Returns:
        ``(annotations, images)``: the annotation table (columns
        ``ANNOTATION_COLUMNS``) and the image table (columns
        ``IMAGE_COLUMNS``), described in the module docstring.

    Raises:
        AnnotationError: the file is missing or malformed, its format is not
            the declared one (for example COCO boxes read as MIDOG++), or an
            annotation refers to an unknown image or category.
    """
    path = Path(path)
    _check_file(path)
    if format not in FORMATS:
        raise AnnotationError(f"unknown annotation format {format!r}; choose one of {', '.join(FORMATS)}")

    data: Any = None
    fmt: str = format
    if fmt == "auto":
        fmt, data = _detect_format(path)
        logger.debug("%s read as %s", path, fmt)
    elif fmt != "csv":
        data = _load_json(path)

    if fmt in ("midogpp", "midog21", "coco"):
        table, image_table = _read_coco_like(path, data, fmt)
    elif fmt == "csv":
        table, image_table = _read_points_csv(path)
    elif fmt == "geojson":
        if not _is_geojson(data):
            raise AnnotationError(f"{path}: not GeoJSON: expected a FeatureCollection or a list of Features")
        table, image_table = _read_geojson(path, data)
    else:
        table, image_table = _read_midog_gt(path, data, mpp)

    unknown_images = sorted(set(table["image"]) - set(image_table["image"]))
    if unknown_images:
        raise AnnotationError(f"{path}: annotations refer to unlisted images {_examples(unknown_images)}")
    return _finish(path, table, image_table, domains_csv)
