"""Whole-slide and image reading: pixels, pyramid levels and µm/px.

``open_slide`` returns a ``SlideReader`` whose reads are RGB uint8 arrays
addressed in level-0 pixels. OpenSlide reads the file where it can, tifffile
and Pillow where it cannot (see ``midog.io._slide_backends``);
``SlideReader.backend`` names the one in use. Nothing here imports torch or
mmdet.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

from midog.errors import SlideResolutionError, SlideReadError
from midog.io._slide_backends import Backend, BackendName, one_line, open_backend

__all__ = [
    "LEVEL_MPP_TOLERANCE",
    "MAX_MPP",
    "MIN_MPP",
    "MPP_XY_TOLERANCE",
    "BackendName",
    "SlideReader",
    "open_slide",
]

logger = logging.getLogger(__name__)

# Plausible level-0 pixel sizes in µm/px: 0.05 is beyond any brightfield
# scanner, 100 is a coarse overview image. A value outside this range usually
# comes from a default such as 72 dpi (352.8 µm/px) and is not a real pixel size.
MIN_MPP = 0.05
MAX_MPP = 100.0

# Relative difference of mpp-x and mpp-y above which the reader warns,
# because it uses mpp-x for both axes.
MPP_XY_TOLERANCE = 0.01

# A level counts as fine enough for a target µm/px if its µm/px is at most
# this much coarser. OpenSlide reports downsamples such as 4.016 for a level
# that the scanner made at 4x.
LEVEL_MPP_TOLERANCE = 0.01

# Thumbnails are read in blocks of about this many level pixels per side, so
# that a large level is never decoded in one piece. Reading a 2048 px thumbnail
# of a 20480 px slide raised peak memory by 250 MiB with 4096 px blocks and by
# about 100 MiB with 1024 px blocks.
_THUMBNAIL_BLOCK_PX = 1024

# Micrometres per TIFF ResolutionUnit, as OpenSlide names the units in its
# ``tiff.ResolutionUnit`` property. "none" (no absolute unit) is absent.
_UM_PER_RESOLUTION_UNIT = {"centimeter": 1e4, "inch": 25400.0}


def _coarsest_level(level_downsamples: tuple[float, ...], max_downsample: float) -> int:
    """Return the coarsest level whose downsample is at most ``max_downsample``, else 0."""
    best = 0
    for level, downsample in enumerate(level_downsamples):
        if downsample <= max_downsample and downsample >= level_downsamples[best]:
            best = level
    return best


def _composite_on_fill(rgba: np.ndarray, fill_rgb: tuple[int, int, int]) -> np.ndarray:
    """Composite straight-alpha RGBA onto a plain colour.

    Args:
        rgba: ``(H, W, 4)`` uint8 RGBA, alpha not premultiplied.
        fill_rgb: background colour, three values in 0-255.

    Returns:
        ``(H, W, 3)`` uint8 RGB, C-contiguous.
    """
    alpha = rgba[..., 3:4]
    if alpha.size == 0 or int(alpha.min()) == 255:
        return np.ascontiguousarray(rgba[..., :3])

    # 255 * 255 + 127 fits into uint16.
    alpha16 = alpha.astype(np.uint16)
    rgb16 = rgba[..., :3].astype(np.uint16)
    fill16 = np.asarray(fill_rgb, dtype=np.uint16)
    blended = (rgb16 * alpha16 + fill16 * (255 - alpha16) + 127) // 255
    return blended.astype(np.uint8)


def _validate_fill(fill_rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    values = tuple(int(v) for v in fill_rgb)
    if len(values) != 3 or any(not 0 <= v <= 255 for v in values):
        raise ValueError(f"fill_rgb must be three integers in 0-255, got {fill_rgb!r}")
    return values[0], values[1], values[2]


def _validate_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = (int(v) for v in size)
    if width < 0 or height < 0:
        raise ValueError(f"region size must be (width, height) >= 0, got {size!r}")
    return width, height


def _mpp_from_properties(properties: Mapping[str, str]) -> tuple[float, float, str] | None:
    """Find level-0 µm/px in slide properties.

    ``openslide.mpp-x``/``-y`` come first. Otherwise ``tiff.XResolution``/
    ``tiff.YResolution`` (pixels per unit) with ``tiff.ResolutionUnit``
    "centimeter" or "inch" give ``um_per_unit / resolution``. Last,
    ``pillow.dpi-x``/``-y`` (PNG pHYs, JPEG density) count as pixels per inch.

    Returns:
        ``(mpp_x, mpp_y, source)``, or None where no property gives an absolute
        pixel size (for example ResolutionUnit "none" or missing).
    """
    if "openslide.mpp-x" in properties:
        mpp_x = float(properties["openslide.mpp-x"])
        mpp_y = float(properties.get("openslide.mpp-y", mpp_x))
        return mpp_x, mpp_y, "property openslide.mpp-x"

    unit = properties.get("tiff.ResolutionUnit")
    if "tiff.XResolution" in properties and unit in _UM_PER_RESOLUTION_UNIT:
        x_res = float(properties["tiff.XResolution"])
        y_res = float(properties.get("tiff.YResolution", x_res))
        if x_res > 0 and y_res > 0:
            um_per_unit = _UM_PER_RESOLUTION_UNIT[unit]
            source = f"TIFF tags XResolution={x_res:g} px/{unit}"
            return um_per_unit / x_res, um_per_unit / y_res, source

    if "pillow.dpi-x" in properties:
        x_dpi = float(properties["pillow.dpi-x"])
        y_dpi = float(properties.get("pillow.dpi-y", x_dpi))
        if x_dpi > 0 and y_dpi > 0:
            return 25400.0 / x_dpi, 25400.0 / y_dpi, f"image resolution {x_dpi:g} dpi"
    return None


def _resolve_mpp(path: Path, mpp_override: float | None, properties: Mapping[str, str]) -> float:
    """Return level-0 µm/px: ``mpp_override`` if given, else from the slide's properties.

    Raises:
        SlideResolutionError: no pixel size is known, or it lies outside
            ``MIN_MPP``-``MAX_MPP``.
    """
    if mpp_override is not None:
        mpp_x = mpp_y = float(mpp_override)
        source = "the mpp argument (--mpp)"
    else:
        found = _mpp_from_properties(properties)
        if found is None:
            raise SlideResolutionError(
                f"Slide {path} has no pixel size (no openslide.mpp-x property and no TIFF resolution "
                f"in centimeter or inch); pass its level-0 µm/px with --mpp, for example --mpp 0.25"
            )
        mpp_x, mpp_y, source = found

    if not (math.isfinite(mpp_x) and MIN_MPP <= mpp_x <= MAX_MPP):
        raise SlideResolutionError(
            f"Slide {path}: pixel size {mpp_x:g} µm/px from {source} is outside "
            f"{MIN_MPP:g}-{MAX_MPP:g} µm/px; pass the real level-0 µm/px with --mpp, for example --mpp 0.25"
        )
    if abs(mpp_x - mpp_y) > MPP_XY_TOLERANCE * min(mpp_x, mpp_y):
        logger.warning(
            "Slide %s has non-square pixels (mpp-x %g, mpp-y %g µm/px from %s); "
            "using mpp-x %g for both axes",
            path,
            mpp_x,
            mpp_y,
            source,
            mpp_x,
        )
    return mpp_x


class SlideReader:
    """A whole-slide image or plain image, read in level-0 pixel coordinates.

    Use ``open_slide`` to create one. The reader is a context manager, is safe
    to share between threads, and can be pickled for worker processes: the
    pickle stores only the path and the mpp override, and unpickling reopens the
    file. A reader inherited through ``fork`` reopens its file on first use in
    the child, because file offsets and caches would otherwise be shared with
    the parent.

    Attributes:
        path: the slide file.
        backend: the library that reads it: "openslide", "tifffile" or "pillow".
        mpp: level-0 µm/px (the ``mpp`` argument if given, else from the file).
        dimensions: ``(width, height)`` of the whole level-0 plane in px.
        bounds: ``(x, y, width, height)`` in level-0 px of the region that contains
            image data: OpenSlide's ``openslide.bounds-*`` properties where set
            (MRXS and others), else the whole plane.
        level_dimensions: ``(width, height)`` per level, level 0 first.
        level_downsamples: level-0 px per level px, per level.
        properties: the slide's metadata; OpenSlide property names, with
            ``tiff.*`` names for TIFF tags read by the fallback backends.
        vendor: OpenSlide's vendor ("aperio", "generic-tiff", ...); None for the
            fallback backends.
    """

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        """Open a slide; see ``open_slide``."""
        self.path = Path(path)
        self._mpp_override = None if mpp is None else float(mpp)
        self._open()

    def _open(self) -> None:
        backend = open_backend(self.path)
        try:
            self.mpp = _resolve_mpp(self.path, self._mpp_override, backend.properties)
        except SlideResolutionError:
            backend.close()
            raise
        self._backend: Backend | None = backend
        self._pid = os.getpid()
        self.backend: BackendName = backend.name
        self.properties = backend.properties
        self.vendor = backend.vendor
        self.level_dimensions = backend.level_dimensions
        self.level_downsamples = backend.level_downsamples
        self.dimensions = self.level_dimensions[0]
        self.bounds = self._read_bounds()

    def _read_bounds(self) -> tuple[int, int, int, int]:
        keys = [f"openslide.bounds-{name}" for name in ("x", "y", "width", "height")]
        if all(key in self.properties for key in keys):
            x, y, width, height = (int(self.properties[key]) for key in keys)
            return x, y, width, height
        return 0, 0, self.dimensions[0], self.dimensions[1]

    def _live_backend(self) -> Backend:
        if self._backend is None:
            raise ValueError(f"Slide {self.path} is closed")
        if self._pid != os.getpid():
            # Inherited through fork: reopen so that this process has its own file handles.
            self._backend = open_backend(self.path)
            self._pid = os.getpid()
        return self._backend

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self.level_dimensions)

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.level_count:
            raise ValueError(
                f"level {level} is out of range for slide {self.path}, "
                f"which has levels 0-{self.level_count - 1}"
            )

    def level_mpp(self, level: int) -> float:
        """Return the µm/px of a level: level-0 mpp times its downsample."""
        self._check_level(level)
        return self.mpp * self.level_downsamples[level]

    def best_level_for_mpp(self, target_mpp: float) -> int:
        """Return the coarsest level that is at least as fine as ``target_mpp``.

        A level qualifies if its µm/px is at most ``target_mpp * (1 + LEVEL_MPP_TOLERANCE)``.
        Where none does (the target is finer than level 0), the result is level 0,
        and the caller resamples the read up or down to the target.

        Raises:
            ValueError: ``target_mpp`` is not a positive finite number.
        """
        if not (math.isfinite(target_mpp) and target_mpp > 0):
            raise ValueError(f"target_mpp must be a positive number of µm/px, got {target_mpp!r}")
        max_downsample = target_mpp / self.mpp * (1 + LEVEL_MPP_TOLERANCE)
        return _coarsest_level(self.level_downsamples, max_downsample)

    def read_region(
        self,
        l0_xy: tuple[int, int],
        level: int,
        size: tuple[int, int],
        fill_rgb: tuple[int, int, int] = (255, 255, 255),
    ) -> np.ndarray:
        """Read a region of one level as RGB.

        The region may start at negative coordinates or reach past the plane.
        Those pixels, and transparent pixels inside the plane, are composited
        onto ``fill_rgb``, never left black.

        Args:
            l0_xy: ``(x, y)`` of the region's top-left pixel in level-0 px.
            level: pyramid level to read, 0 is full resolution.
            size: ``(width, height)`` of the region in px of ``level``.
            fill_rgb: colour for pixels outside the plane or transparent, 0-255.

        Returns:
            ``(height, width, 3)`` uint8 RGB.

        Raises:
            ValueError: invalid level, size or fill colour, or the reader is closed.
            SlideReadError: decoding the pixels failed; the message names the
                file, level and region.
        """
        self._check_level(level)
        width, height = _validate_size(size)
        fill = _validate_fill(fill_rgb)
        l0_x, l0_y = int(l0_xy[0]), int(l0_xy[1])
        backend = self._live_backend()
        if width == 0 or height == 0:
            return np.zeros((height, width, 3), dtype=np.uint8)

        try:
            rgba = backend.read_rgba((l0_x, l0_y), level, (width, height))
        except backend.read_errors as exc:
            raise SlideReadError(
                f"Failed to read slide {self.path}, level {level}, region at level-0 x={l0_x}, y={l0_y} "
                f"with size {width}x{height} px: {one_line(exc)}"
            ) from exc
        return _composite_on_fill(rgba, fill)

    def read_thumbnail(self, max_size_px: int) -> tuple[np.ndarray, float]:
        """Read the whole plane, downsampled so that its longer side is at most ``max_size_px``.

        The thumbnail comes from the coarsest level that is at least as fine,
        read in blocks and box-averaged, then resized with Lanczos filtering.
        Images smaller than ``max_size_px`` are returned at level 0 size.

        Args:
            max_size_px: maximum width and height of the thumbnail.

        Returns:
            ``(H, W, 3)`` uint8 RGB with transparent and missing areas white, and
            the level-0 px per thumbnail px (the same for x and y up to rounding
            of the thumbnail size).

        Raises:
            ValueError: ``max_size_px`` is below 1.
            SlideReadError: decoding the pixels failed.
        """
        if max_size_px < 1:
            raise ValueError(f"max_size_px must be at least 1, got {max_size_px}")
        l0_width, l0_height = self.dimensions
        l0_per_thumbnail_px = max(1.0, max(l0_width, l0_height) / max_size_px)
        thumbnail_size = (
            max(1, round(l0_width / l0_per_thumbnail_px)),
            max(1, round(l0_height / l0_per_thumbnail_px)),
        )

        level = _coarsest_level(self.level_downsamples, l0_per_thumbnail_px * (1 + LEVEL_MPP_TOLERANCE))
        reduce_factor = max(1, int(l0_per_thumbnail_px / self.level_downsamples[level]))
        reduced = self._read_level_reduced(level, reduce_factor)
        if reduced.size != thumbnail_size:
            reduced = reduced.resize(thumbnail_size, Image.Resampling.LANCZOS)
        return np.asarray(reduced), l0_per_thumbnail_px

    def _read_level_reduced(self, level: int, factor: int) -> Image.Image:
        """Read a whole level in blocks, each box-averaged by ``factor``, into one image."""
        level_width, level_height = self.level_dimensions[level]
        downsample = self.level_downsamples[level]
        # Blocks are multiples of factor, so box averages never straddle two blocks.
        block_px = factor * max(1, _THUMBNAIL_BLOCK_PX // factor)
        reduced = Image.new("RGB", (math.ceil(level_width / factor), math.ceil(level_height / factor)))

        for level_y in range(0, level_height, block_px):
            for level_x in range(0, level_width, block_px):
                size = (min(block_px, level_width - level_x), min(block_px, level_height - level_y))
                l0_xy = (round(level_x * downsample), round(level_y * downsample))
                block = Image.fromarray(self.read_region(l0_xy, level, size))
                if factor > 1:
                    block = block.reduce(factor)
                reduced.paste(block, (level_x // factor, level_y // factor))
        return reduced

    def close(self) -> None:
        """Close the file; later reads raise ValueError. Closing twice is allowed."""
        if self._backend is not None and self._pid == os.getpid():
            self._backend.close()
        self._backend = None

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "mpp": self._mpp_override}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = Path(state["path"])
        self._mpp_override = state["mpp"]
        self._open()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, mpp={self.mpp!r})"


def open_slide(path: str | Path, mpp: float | None = None) -> SlideReader:
    """Open a whole-slide image, TIFF, PNG or JPEG for reading.

    Args:
        path: the slide file (for MRXS, the .mrxs file).
        mpp: level-0 µm/px; overrides what the file states. Give it for files
            without a usable resolution, such as PNGs or TIFFs without
            resolution tags.

    Returns:
        An open ``SlideReader``; close it, or use it in a ``with`` block.

    Raises:
        SlideOpenError: the file is missing, is a directory, or no backend opens it.
        SlideResolutionError: no pixel size is known, or it is outside
            ``MIN_MPP``-``MAX_MPP`` µm/px.
    """
    return SlideReader(path, mpp)
