"""Small images in the MIDOG++ layout, made from the real MIDOG++ JSON for tests.

The MIDOG++ images themselves are not available, so the tests draw their own. Each
chosen real image becomes a TIFF whose width, height and cell centres are the real
ones divided by ``scale``. The default of 4 turns a 7215x5412 px image into 1804x1353 px.
Mitotic figures are dark purple discs and imposters paler purple discs on a pink,
slightly noisy background. The written annotation file keeps the MIDOG++ format (50x50
px ``bbox`` around each scaled centre, ``labels`` votes, ``tumor_type``), so
``read_annotations`` reads it as MIDOG++.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile

BACKGROUND_RGB = (236, 190, 214)
FIGURE_RGB = (50, 20, 80)
IMPOSTER_RGB = (160, 120, 190)
DISC_RADIUS_PX = 8

# Category ids of MIDOG++.json.
FIGURE_CATEGORY = 1
IMPOSTER_CATEGORY = 2


def draw_image(width: int, height: int, cells: list[tuple[float, float, int]], seed: int) -> np.ndarray:
    """Draw one image.

    Args:
        width: image width, px.
        height: image height, px.
        cells: ``(x, y, category)`` per cell, px; category 1 is a figure, 2 an imposter.
        seed: seed of the background noise.

    Returns:
        ``(height, width, 3)`` uint8 RGB.
    """
    rng = np.random.default_rng(seed)
    noise = rng.integers(-12, 13, size=(height, width, 1), dtype=np.int16)
    image = np.clip(np.array(BACKGROUND_RGB, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    for x, y, category in cells:
        x0, x1 = max(0, int(x) - DISC_RADIUS_PX), min(width, int(x) + DISC_RADIUS_PX + 1)
        y0, y1 = max(0, int(y) - DISC_RADIUS_PX), min(height, int(y) + DISC_RADIUS_PX + 1)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        disc = (xx - x) ** 2 + (yy - y) ** 2 <= DISC_RADIUS_PX**2
        image[y0:y1, x0:x1][disc] = FIGURE_RGB if category == FIGURE_CATEGORY else IMPOSTER_RGB
    return image


def write_tiff(path: Path, image: np.ndarray) -> Path:
    """Write a tiled, Deflate-compressed RGB TIFF at 0.25 µm/px (40,000 px/cm), which OpenSlide opens."""
    tifffile.imwrite(
        path,
        image,
        photometric="rgb",
        tile=(256, 256),
        compression="zlib",
        resolution=(40000, 40000),
        resolutionunit="CENTIMETER",
    )
    return path


def pick_images(midogpp_json: Path, per_domain: int = 1, min_cells: int = 8) -> list[int]:
    """Return the ids of the first ``per_domain`` images of each tumour type with enough cells of both kinds."""
    data = json.loads(midogpp_json.read_text())
    counts: dict[int, dict[int, int]] = {}
    for annotation in data["annotations"]:
        per_image = counts.setdefault(annotation["image_id"], {})
        per_image[annotation["category_id"]] = per_image.get(annotation["category_id"], 0) + 1
    chosen: dict[str, list[int]] = {}
    for image in data["images"]:
        per_image = counts.get(image["id"], {})
        if min(per_image.get(FIGURE_CATEGORY, 0), per_image.get(IMPOSTER_CATEGORY, 0)) < min_cells:
            continue
        ids = chosen.setdefault(image["tumor_type"], [])
        if len(ids) < per_domain:
            ids.append(image["id"])
    return [image_id for ids in chosen.values() for image_id in ids]


def write_scaled_midogpp(
    midogpp_json: Path,
    image_ids: list[int],
    out_dir: Path,
    scale: float = 4.0,
    write_images: bool = True,
) -> tuple[Path, Path]:
    """Write scaled copies of real MIDOG++ images and their annotation file.

    Args:
        midogpp_json: the real MIDOG++.json.
        image_ids: ids of the images to copy.
        out_dir: folder that receives ``images/`` and ``MIDOG++.json``.
        scale: divisor of image sizes and cell centres.
        write_images: False writes only the annotation file (for missing-image tests).

    Returns:
        ``(images_dir, annotation_file)``.
    """
    data = json.loads(midogpp_json.read_text())
    requested = set(image_ids)
    images = [dict(image) for image in data["images"] if image["id"] in requested]
    annotations = []
    cells_by_image: dict[int, list[tuple[float, float, int]]] = {}
    for annotation in data["annotations"]:
        if annotation["image_id"] not in requested:
            continue
        x1, y1, x2, y2 = annotation["bbox"]
        x, y = (x1 + x2) / 2 / scale, (y1 + y2) / 2 / scale
        scaled = dict(annotation, bbox=[x - 25, y - 25, x + 25, y + 25])
        annotations.append(scaled)
        cells_by_image.setdefault(annotation["image_id"], []).append((x, y, annotation["category_id"]))

    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for image in images:
        image["width"] = round(image["width"] / scale)
        image["height"] = round(image["height"] / scale)
        if write_images:
            rgb = draw_image(
                image["width"], image["height"], cells_by_image.get(image["id"], []), image["id"]
            )
            write_tiff(images_dir / image["file_name"], rgb)

    annotation_file = out_dir / "MIDOG++.json"
    annotation_file.write_text(json.dumps(dict(data, images=images, annotations=annotations)))
    return images_dir, annotation_file
