"""Slide overviews: the tissue mask the runner uses, and a thumbnail with figures and hotspot drawn.

``read_overview`` opens a slide once and returns a display thumbnail and the
tissue mask, made exactly as ``detect_slide`` makes it (same thumbnail
size, mask rule and slide bounds). ``draw_overview`` draws detections and
the hotspot on the thumbnail with PIL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from midog.inference.hotspot import Hotspot, TissueMap
from midog.inference.tissue import restrict_to_l0_rect, thumbnail_size_px, tissue_area_mm2, tissue_mask
from midog.io.slide import open_slide
from midog.io.writers import atomic_output

__all__ = ["DISPLAY_MAX_SIZE_PX", "SlideOverview", "read_overview", "draw_overview", "write_png"]

logger = logging.getLogger(__name__)

# Maximum size of the display thumbnail's longer side in px.
DISPLAY_MAX_SIZE_PX = 2048

# Drawing colours, RGB 0-255.
FIGURE_RGB = (220, 20, 60)
HOTSPOT_RGB = (255, 200, 0)
HOTSPOT_OUTLINE_RGB = (0, 0, 0)


@dataclass(frozen=True)
class SlideOverview:
    """A slide's thumbnail and tissue mask.

    Attributes:
        slide_path: the slide file.
        mpp: level-0 µm/px.
        l0_bounds: ``(x, y, width, height)`` in level-0 px of the region with image data.
        thumbnail: ``(H, W, 3)`` uint8 RGB of the whole level-0 plane.
        l0_per_thumbnail_px: level-0 px per thumbnail px.
        tissue: the tissue mask, cleared outside ``l0_bounds``.
        tissue_area_mm2: tissue area inside the bounds in mm².
    """

    slide_path: Path
    mpp: float
    l0_bounds: tuple[int, int, int, int]
    thumbnail: np.ndarray
    l0_per_thumbnail_px: float
    tissue: TissueMap
    tissue_area_mm2: float


def read_overview(
    slide_path: str | Path, mpp: float | None = None, display_max_size_px: int = DISPLAY_MAX_SIZE_PX
) -> SlideOverview:
    """Read a display thumbnail and the tissue mask of a slide.

    Args:
        slide_path: the slide file.
        mpp: level-0 µm/px; overrides the file's resolution.
        display_max_size_px: maximum size of the display thumbnail's longer
            side in px; a slide smaller than that is read at level 0.

    Returns:
        The overview.

    Raises:
        SlideOpenError: the slide cannot be opened.
        SlideResolutionError: the slide has no usable µm/px and ``mpp`` is None.
        SlideReadError: reading pixels failed.
    """
    with open_slide(slide_path, mpp) as slide:
        bounds = tuple(int(v) for v in slide.bounds)
        l0_bounds = (bounds[0], bounds[1], bounds[2], bounds[3])

        # The same steps as detect_slide, so the mask matches the one used for detection.
        mask_rgb, l0_per_mask_px = slide.read_thumbnail(thumbnail_size_px(slide.dimensions, slide.mpp))
        mask_mpp = slide.mpp * l0_per_mask_px
        mask = restrict_to_l0_rect(tissue_mask(mask_rgb, mask_mpp), l0_bounds, l0_per_mask_px)

        thumbnail, l0_per_thumbnail_px = slide.read_thumbnail(display_max_size_px)
        return SlideOverview(
            slide_path=Path(slide.path),
            mpp=float(slide.mpp),
            l0_bounds=l0_bounds,
            thumbnail=thumbnail,
            l0_per_thumbnail_px=float(l0_per_thumbnail_px),
            tissue=TissueMap(mask, float(l0_per_mask_px)),
            tissue_area_mm2=tissue_area_mm2(mask, mask_mpp),
        )


def draw_overview(
    overview: SlideOverview,
    figures_l0_xy: np.ndarray,
    hotspot: Hotspot | None = None,
    *,
    figure_radius_px: int | None = None,
) -> Image.Image:
    """Draw figures as circles and the hotspot outline on the overview's thumbnail.

    Args:
        overview: the slide overview.
        figures_l0_xy: ``(N, 2)`` float ``x, y`` of the figures in level-0 px.
        hotspot: the hotspot, drawn as a yellow outline with its count; None draws none.
        figure_radius_px: circle radius in thumbnail px; None scales it with
            the thumbnail (0.8 % of the longer side, at least 4 px), so that
            single figures stay visible when the thumbnail is shown small.

    Returns:
        An RGB image the size of the thumbnail.
    """
    image = Image.fromarray(overview.thumbnail).convert("RGB")
    draw = ImageDraw.Draw(image)
    scale = 1.0 / overview.l0_per_thumbnail_px
    longest_px = max(image.size)
    radius = figure_radius_px if figure_radius_px is not None else max(4, round(longest_px * 0.008))
    line_px = max(1, round(radius / 4))

    for l0_x, l0_y in np.asarray(figures_l0_xy, dtype=np.float64).reshape(-1, 2).tolist():
        x, y = l0_x * scale, l0_y * scale
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=FIGURE_RGB, width=line_px)

    if hotspot is not None:
        polygon = [(x * scale, y * scale) for x, y in hotspot.l0_polygon().tolist()]
        hotspot_px = max(2, round(longest_px * 0.003))
        # A dark outline under the yellow one keeps it visible on pale tissue.
        draw.polygon(polygon, outline=HOTSPOT_OUTLINE_RGB, width=hotspot_px + 2)
        draw.polygon(polygon, outline=HOTSPOT_RGB, width=hotspot_px)
        label = f"{hotspot.count} figures / {hotspot.shape.area_mm2:g} mm²"
        # Pillow 10.1 and later scale the bundled font; older versions give a fixed bitmap font.
        font = ImageFont.load_default(size=max(12, round(longest_px / 100)))
        left = min(x for x, _ in polygon)
        top = min(y for _, y in polygon)
        text_xy = (max(left, 0) + hotspot_px + 2, max(top, 0) + hotspot_px + 2)
        draw.rectangle(draw.textbbox(text_xy, label, font=font), fill=HOTSPOT_OUTLINE_RGB)
        draw.text(text_xy, label, fill=HOTSPOT_RGB, font=font)
    return image


def write_png(path: str | Path, image: Image.Image) -> None:
    """Write an image as PNG atomically, so an interrupted write leaves no file."""
    with atomic_output(path) as temporary_path:
        image.save(temporary_path, format="PNG")
