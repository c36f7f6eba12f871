"""Synthetic slides for inference tests: tiled TIFFs and an in-memory plane."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from tests.inference.stub_detector import BLOB_RGB, TISSUE_RGB

__all__ = ["draw_disc", "pink_image", "write_tiff", "BoundedPlaneSlide"]


def draw_disc(rgb: np.ndarray, centre_xy: tuple[float, float], radius_px: float, colour=BLOB_RGB) -> None:
    """Paint pixels whose centre lies within ``radius_px`` of ``centre_xy`` (continuous px), in place."""
    height, width = rgb.shape[:2]
    cx, cy = centre_xy
    x0, x1 = max(int(cx - radius_px) - 1, 0), min(int(cx + radius_px) + 2, width)
    y0, y1 = max(int(cy - radius_px) - 1, 0), min(int(cy + radius_px) + 2, height)
    if x1 <= x0 or y1 <= y0:
        return
    rows, cols = np.mgrid[y0:y1, x0:x1]
    inside = (cols + 0.5 - cx) ** 2 + (rows + 0.5 - cy) ** 2 <= radius_px**2
    rgb[y0:y1, x0:x1][inside] = colour


def pink_image(width: int, height: int) -> np.ndarray:
    """Return ``(height, width, 3)`` uint8 filled with the tissue colour."""
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[:] = TISSUE_RGB
    return rgb


def write_tiff(
    path: Path,
    rgb: np.ndarray,
    mpp: float = 0.25,
    tile_px: int = 256,
    level_downsamples: tuple[int, ...] = (),
) -> Path:
    """Write a tiled RGB TIFF that OpenSlide opens as a generic TIFF.

    The resolution is stored in px/cm (0.25 µm/px is 40,000 px/cm). Each
    entry of ``level_downsamples`` adds a reduced-resolution page, box-averaged
    from level 0, which OpenSlide reads as a pyramid level.
    """
    with tifffile.TiffWriter(path) as writer:
        for downsample in (1, *level_downsamples):
            level_rgb = rgb if downsample == 1 else np.asarray(Image.fromarray(rgb).reduce(downsample))
            px_per_cm = 1e4 / (mpp * downsample)
            writer.write(
                level_rgb,
                photometric="rgb",
                tile=(tile_px, tile_px),
                compression="zlib",
                subfiletype=0 if downsample == 1 else 1,
                resolution=(px_per_cm, px_per_cm),
                resolutionunit="CENTIMETER",
            )
    return path


class BoundedPlaneSlide:
    """A slide whose image data covers only part of its level-0 plane, like MRXS.

    The plane is ``dimensions`` px; inside ``bounds`` it is pink with dark
    discs, outside it is transparent and comes back as ``fill_rgb``. Pixels are
    computed from their level-0 centres, so any read is exact. Every
    ``read_region`` call is recorded in ``reads`` as ``(l0_x, l0_y, level, width, height)``.
    """

    def __init__(
        self,
        dimensions: tuple[int, int] = (6000, 4000),
        bounds: tuple[int, int, int, int] = (3000, 2000, 2000, 1500),
        discs: tuple[tuple[float, float, float], ...] = ((3500.0, 2400.0, 15.0),),
        mpp: float = 0.25,
        path: str = "bounded-plane.mrxs",
    ) -> None:
        self.path = Path(path)
        self.mpp = mpp
        self.dimensions = dimensions
        self.bounds = bounds
        self.discs = discs
        self.level_dimensions = (dimensions,)
        self.level_downsamples = (1.0,)
        self.reads: list[tuple[int, int, int, int, int]] = []

    @property
    def level_count(self) -> int:
        return 1

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.level_downsamples[level]

    def best_level_for_mpp(self, target_mpp: float) -> int:
        return 0

    def _render(
        self, l0_x: float, l0_y: float, width: int, height: int, scale: float, fill_rgb
    ) -> np.ndarray:
        l0_cols = l0_x + (np.arange(width) + 0.5) * scale
        l0_rows = l0_y + (np.arange(height) + 0.5) * scale
        bx, by, bw, bh = self.bounds
        inside = ((l0_rows >= by) & (l0_rows < by + bh))[:, None] & ((l0_cols >= bx) & (l0_cols < bx + bw))[
            None, :
        ]
        rgb = np.empty((height, width, 3), dtype=np.uint8)
        rgb[:] = fill_rgb
        rgb[inside] = TISSUE_RGB
        for cx, cy, radius in self.discs:
            disc = ((l0_cols[None, :] - cx) ** 2 + (l0_rows[:, None] - cy) ** 2) <= radius**2
            rgb[disc & inside] = BLOB_RGB
        return rgb

    def read_region(self, l0_xy, level, size, fill_rgb=(255, 255, 255)) -> np.ndarray:
        self.reads.append((int(l0_xy[0]), int(l0_xy[1]), level, int(size[0]), int(size[1])))
        return self._render(
            l0_xy[0], l0_xy[1], int(size[0]), int(size[1]), self.level_downsamples[level], fill_rgb
        )

    def read_thumbnail(self, max_size_px: int) -> tuple[np.ndarray, float]:
        l0_per_px = max(1.0, max(self.dimensions) / max_size_px)
        width = max(1, round(self.dimensions[0] / l0_per_px))
        height = max(1, round(self.dimensions[1] / l0_per_px))
        return self._render(0.0, 0.0, width, height, l0_per_px, (255, 255, 255)), l0_per_px

    def close(self) -> None:
        pass

    def __enter__(self) -> BoundedPlaneSlide:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
