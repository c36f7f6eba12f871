"""Region annotations (necrosis, debris, ...) as polygons from QuPath GeoJSON.

QuPath exports annotations as GeoJSON: a ``FeatureCollection`` or, in some
versions, a bare list of ``Feature`` objects. Each region is a ``Polygon`` or
``MultiPolygon`` (holes included) in level-0 px, with its class in
``properties.classification.name``. Point features (cell annotations) are
ignored here; ``midog.io.annotations`` reads those.

A point on a region's border counts as inside the region: queries use
"intersects", which includes the boundary.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.errors import GEOSException
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry
from shapely.validation import make_valid

from midog.errors import AnnotationError

__all__ = ["RegionSet", "image_name_from_geojson", "read_regions", "sample_points_in_regions"]

logger = logging.getLogger(__name__)

AREA_TYPES = ("Polygon", "MultiPolygon")


def image_name_from_geojson(path: str | Path) -> str:
    """Return the image a QuPath export belongs to: ``001.tiff.geojson`` -> ``001.tiff``."""
    name = Path(path).name
    for suffix in (".geojson", ".json"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _area_part(geometry: BaseGeometry) -> BaseGeometry:
    """Keep the polygonal part of a repaired geometry (``make_valid`` may add lines or points)."""
    if isinstance(geometry, (shapely.Polygon, shapely.MultiPolygon)):
        return geometry
    if isinstance(geometry, shapely.GeometryCollection):
        parts = [g for g in geometry.geoms if isinstance(g, (shapely.Polygon, shapely.MultiPolygon))]
        return shapely.unary_union(parts) if parts else shapely.Polygon()
    return shapely.Polygon()


@dataclass
class RegionSet:
    """Region polygons of one image with a spatial index for point queries.

    Attributes:
        image: the image file name.
        polygons: one ``Polygon`` or ``MultiPolygon`` per region, level-0 px.
        classes: class name of each region, e.g. ``"Necrosis"``.
    """

    image: str
    polygons: list[BaseGeometry]
    classes: list[str]
    _tree: shapely.STRtree = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.polygons) != len(self.classes):
            raise ValueError(f"{len(self.polygons)} polygons but {len(self.classes)} class names")
        self._tree = shapely.STRtree(self.polygons)

    def __len__(self) -> int:
        return len(self.polygons)

    @property
    def area_px(self) -> float:
        """Area of the union of all regions in px²."""
        return float(shapely.unary_union(self.polygons).area) if self.polygons else 0.0

    def region_of(self, xy: NDArray[np.floating]) -> NDArray[np.int64]:
        """Return the first region containing each point, boundary included.

        Args:
            xy: ``(N, 2)`` float points ``x, y`` in level-0 px.

        Returns:
            ``(N,)`` int64 index into ``polygons``, -1 for points outside every region.
        """
        points = shapely.points(np.asarray(xy, dtype=np.float64).reshape(-1, 2))
        result = np.full(len(points), -1, dtype=np.int64)
        if len(points) == 0 or not self.polygons:
            return result
        point_index, region_index = self._tree.query(points, predicate="intersects")
        # Where regions overlap, the lowest region index wins.
        lowest = np.full(len(points), len(self.polygons), dtype=np.int64)
        np.minimum.at(lowest, point_index, region_index)
        result[lowest < len(self.polygons)] = lowest[lowest < len(self.polygons)]
        return result

    def contains(self, xy: NDArray[np.floating]) -> NDArray[np.bool_]:
        """Return ``(N,)`` bool: whether each point lies in a region or on its border."""
        return self.region_of(xy) >= 0

    def class_of(self, xy: NDArray[np.floating]) -> NDArray[np.object_]:
        """Return ``(N,)`` object array of the containing region's class, None outside."""
        index = self.region_of(xy)
        return np.array([self.classes[i] if i >= 0 else None for i in index], dtype=object)

    def clip(self, width_px: int, height_px: int) -> RegionSet:
        """Return the regions cut to the image ``[0, width] x [0, height]``, dropping those outside it."""
        frame = box(0, 0, width_px, height_px)
        polygons, classes, num_cut = [], [], 0
        for polygon, name in zip(self.polygons, self.classes):
            if frame.covers(polygon):
                polygons.append(polygon)
                classes.append(name)
                continue
            num_cut += 1
            inside = _area_part(polygon.intersection(frame))
            if not inside.is_empty:
                polygons.append(inside)
                classes.append(name)
        if num_cut:
            logger.info(
                "%s: %d of %d regions reach past the %dx%d px image and were cut to it (%d remain)",
                self.image,
                num_cut,
                len(self.polygons),
                width_px,
                height_px,
                len(polygons),
            )
        return RegionSet(self.image, polygons, classes)


def _features(path: Path, data: Any) -> list[Mapping[str, Any]]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        return list(data.get("features") or [])
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    raise AnnotationError(
        f"{path} is not QuPath GeoJSON: expected a FeatureCollection or a list of features; "
        "export the annotations from QuPath with File > Export objects as GeoJSON"
    )


def _classification(feature: Mapping[str, Any]) -> str | None:
    properties = feature.get("properties") or {}
    classification = properties.get("classification") or feature.get("classification")
    if isinstance(classification, dict):
        name = classification.get("name")
        return str(name) if name is not None else None
    if isinstance(classification, str):
        return classification
    return None


def read_regions(
    path: str | Path,
    classes: Iterable[str] | None = None,
    image: str | None = None,
    image_size_px: tuple[int, int] | None = None,
) -> RegionSet:
    """Read region polygons from a QuPath GeoJSON export.

    Invalid polygons (self-intersecting rings, for example) are repaired with
    shapely's ``make_valid``, keeping their polygonal part, and a warning
    counts them. Features without a polygon geometry are skipped.

    Args:
        path: the ``.geojson`` file.
        classes: class names to keep, compared case-insensitively (e.g.
            ``("Necrosis", "Debris")``); None keeps every classified region.
        image: the image name; by default the file name less ``.geojson``.
        image_size_px: ``(width, height)`` of the image; regions are cut to it
            when given.

    Returns:
        The regions of the image.

    Raises:
        AnnotationError: the file is missing, is not JSON, or is not a
            FeatureCollection or list of features, or a polygon has invalid coordinates.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"region file {path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"region file {path} is not valid JSON: {exc}") from exc
    requested = None if classes is None else {c.lower() for c in classes}

    polygons: list[BaseGeometry] = []
    names: list[str] = []
    skipped: Counter[str] = Counter()
    num_repaired = 0
    for number, feature in enumerate(_features(path, data)):
        geometry = feature.get("geometry") if isinstance(feature, Mapping) else None
        kind = geometry.get("type") if isinstance(geometry, Mapping) else None
        if kind not in AREA_TYPES:
            skipped[str(kind)] += 1
            continue
        name = _classification(feature)
        if name is None or (requested is not None and name.lower() not in requested):
            skipped[f"class {name}"] += 1
            continue
        try:
            polygon = shape(geometry)
        except (ValueError, TypeError, AttributeError, GEOSException) as exc:
            raise AnnotationError(f"{path}: feature {number} has an invalid {kind}: {exc}") from exc
        if not polygon.is_valid:
            num_repaired += 1
            polygon = _area_part(make_valid(polygon))
        if polygon.is_empty:
            skipped["empty polygon"] += 1
            continue
        polygons.append(polygon)
        names.append(name)

    if num_repaired:
        logger.warning("%s: repaired %d invalid polygon(s) with make_valid", path, num_repaired)
    if skipped:
        logger.info("%s: skipped %s", path, ", ".join(f"{n} {k}" for k, n in sorted(skipped.items())))
    regions = RegionSet(image or image_name_from_geojson(path), polygons, names)
    if image_size_px is not None:
        regions = regions.clip(*image_size_px)
    return regions


def sample_points_in_regions(
    regions: RegionSet, num_points: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Draw points uniformly from the regions' area.

    A region is chosen with probability proportional to its area, then a
    point of its bounding box is drawn until one falls inside it (boundary
    included). Overlapping regions make their shared area a little likelier.

    Args:
        regions: the regions, with non-zero total area.
        num_points: number of points.
        rng: random generator.

    Returns:
        ``(num_points, 2)`` float64 points ``x, y`` in level-0 px.

    Raises:
        AnnotationError: the regions have no area.
    """
    areas = np.array([p.area for p in regions.polygons], dtype=np.float64)
    if areas.sum() <= 0:
        raise AnnotationError(f"{regions.image}: no region with an area to sample points from")
    cumulative = np.cumsum(areas / areas.sum())
    points = np.empty((num_points, 2), dtype=np.float64)
    for i in range(num_points):
        index = min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(areas) - 1)
        polygon = regions.polygons[index]
        min_x, min_y, max_x, max_y = polygon.bounds
        # Rejection sampling; a region covering little of its bounding box takes more tries.
        for _ in range(10_000):
            x, y = rng.uniform(min_x, max_x), rng.uniform(min_y, max_y)
            if shapely.intersects_xy(polygon, x, y):
                break
        points[i] = (x, y)
    return points
