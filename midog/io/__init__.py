"""Slide reading and detection output files.

``open_slide`` reads whole-slide images and plain images in level-0 pixels;
the writers save detections as CSV, QuPath GeoJSON or MIDOG challenge JSON.
Nothing here imports torch or mmdet.
"""

from midog.io.slide import SlideReader, open_slide
from midog.io.writers import (
    atomic_output,
    mm_from_px,
    px_from_mm,
    read_detections_csv,
    read_midog_json,
    validate_midog_json,
    write_detections_csv,
    write_midog_json,
    write_qupath_geojson,
)

__all__ = [
    "SlideReader",
    "atomic_output",
    "mm_from_px",
    "open_slide",
    "px_from_mm",
    "read_detections_csv",
    "read_midog_json",
    "validate_midog_json",
    "write_detections_csv",
    "write_midog_json",
    "write_qupath_geojson",
]
