"""Backends behind ``SlideReader``: OpenSlide, then tifffile and Pillow as fallbacks.

Each backend opens one file and reads regions as straight-alpha RGBA in the
coordinates OpenSlide uses: the region's top-left corner in level-0 px, its
size in px of the level read. ``open_backend`` tries them in ``BACKENDS``
order and reports every backend's reason when none opens the file.

- OpenSlide: SVS, MRXS, NDPI, SCN, tiled generic TIFF and the other formats
  it supports.
- tifffile: TIFF files that OpenSlide rejects, such as stripped (non-tiled)
  TIFFs. The pages of the first series are the levels. A read memory-maps
  uncompressed contiguous data, or decodes only the strips or tiles it touches.
- Pillow: PNG, JPEG and TIFFs whose compression tifffile cannot decode
  without the optional ``imagecodecs`` package (LZW, JPEG). Pillow decodes the
  whole image on the first read.
"""

from __future__ import annotations

import logging
import math
import threading
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import openslide
import tifffile
from PIL import Image

from midog.errors import SlideOpenError

__all__ = ["BACKENDS", "Backend", "BackendName", "UnsupportedFileError", "one_line", "open_backend"]

logger = logging.getLogger(__name__)

BackendName = Literal["openslide", "tifffile", "pillow"]

# TIFF ResolutionUnit codes as OpenSlide names them in its tiff.ResolutionUnit property.
RESOLUTION_UNIT_NAMES = {1: "none", 2: "inch", 3: "centimeter"}

# TIFF tags that the fallback backends copy into ``properties`` under the
# names OpenSlide uses (``tiff.<TagName>``).
_TIFF_PROPERTY_TAGS = (
    "ImageDescription",
    "Make",
    "Model",
    "Software",
    "DateTime",
    "Artist",
    "HostComputer",
    "Copyright",
    "DocumentName",
)

# Pillow modes that convert to RGBA without losing information.
_PILLOW_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}

_TIFF_JPEG_COMPRESSIONS = {6, 7, 33007, 34892}


class UnsupportedFileError(Exception):
    """A backend cannot open a file; the message gives its reason."""


def one_line(exc: BaseException) -> str:
    """Return an exception's message on one line, or its class name if the message is empty."""
    if isinstance(exc, KeyError) and exc.args:
        # str(KeyError) quotes its message.
        text = str(exc.args[0])
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__


def _rgba_from_window(samples: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Convert ``(H, W, 1-4)`` uint8 gray, gray+alpha, RGB or RGBA to RGBA.

    Pixels where ``valid`` is False (not inside the image) get alpha 0.
    """
    height, width, channels = samples.shape
    rgba = np.empty((height, width, 4), dtype=np.uint8)
    if channels in (1, 2):
        rgba[..., :3] = samples[..., :1]
    else:
        rgba[..., :3] = samples[..., :3]
    if channels in (2, 4):
        rgba[..., 3] = samples[..., channels - 1]
    else:
        rgba[..., 3] = 255
    if valid is not None:
        rgba[..., 3][~valid] = 0
    return rgba


def _read_clipped(
    level_xy: tuple[int, int],
    size: tuple[int, int],
    level_size: tuple[int, int],
    read_window: Callable[[int, int, int, int], np.ndarray],
) -> np.ndarray:
    """Read a region that may reach past the image from a backend that reads only inside it.

    Args:
        level_xy: ``(x, y)`` top-left of the region in level pixels, may be negative.
        size: ``(width, height)`` of the region in level pixels.
        level_size: ``(width, height)`` of the level.
        read_window: ``(x, y, width, height) -> (height, width, 4)`` uint8 RGBA for a
            window that lies inside the level.

    Returns:
        ``(height, width, 4)`` uint8 RGBA with alpha 0 outside the image.
    """
    x, y = level_xy
    width, height = size
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, level_size[0]), min(y + height, level_size[1])
    if x1 <= x0 or y1 <= y0:
        return rgba
    rgba[y0 - y : y1 - y, x0 - x : x1 - x] = read_window(x0, y0, x1 - x0, y1 - y0)
    return rgba


class Backend(Protocol):
    """Interface of a backend, as ``SlideReader`` uses it."""

    name: ClassVar[BackendName]
    read_errors: ClassVar[tuple[type[Exception], ...]]
    vendor: str | None
    properties: Mapping[str, str]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]

    def read_rgba(self, l0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Return ``(H, W, 4)`` uint8 straight-alpha RGBA, alpha 0 outside the image."""
        ...

    def close(self) -> None: ...


class _OpenSlideBackend:
    name: ClassVar[BackendName] = "openslide"
    read_errors: ClassVar[tuple[type[Exception], ...]] = (openslide.OpenSlideError,)

    def __init__(self, path: Path) -> None:
        try:
            self._slide = openslide.OpenSlide(path)
        except openslide.OpenSlideError as exc:
            raise UnsupportedFileError(one_line(exc)) from exc
        self.properties: Mapping[str, str] = MappingProxyType(dict(self._slide.properties))
        self.vendor: str | None = self.properties.get(openslide.PROPERTY_NAME_VENDOR)
        self.level_dimensions = tuple(self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)

    def read_rgba(self, l0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        # OpenSlide returns pixels outside the slide, and transparent areas
        # inside it, as RGBA with alpha 0; its alpha is not premultiplied.
        return np.asarray(self._slide.read_region(l0_xy, level, size))

    def close(self) -> None:
        self._slide.close()


class _TiffFileBackend:
    """Levels are the pages of the first series; reads decode only the segments they touch."""

    name: ClassVar[BackendName] = "tifffile"
    # zlib.error comes from tifffile's built-in Deflate decoder; imagecodecs raises RuntimeError subclasses.
    read_errors: ClassVar[tuple[type[Exception], ...]] = (ValueError, OSError, RuntimeError, zlib.error)

    def __init__(self, path: Path) -> None:
        try:
            self._tif = tifffile.TiffFile(path)
        except (ValueError, OSError, KeyError, IndexError) as exc:
            raise UnsupportedFileError(one_line(exc)) from exc

        try:
            self._pages = self._level_pages()
        except UnsupportedFileError:
            self._tif.close()
            raise
        self._tif.filehandle.set_lock(True)

        level0 = self._pages[0]
        self.vendor: str | None = None
        self.properties: Mapping[str, str] = MappingProxyType(_tiff_properties(level0))
        self.level_dimensions = tuple((int(p.imagewidth), int(p.imagelength)) for p in self._pages)
        width, height = self.level_dimensions[0]
        self.level_downsamples = tuple((width / w + height / h) / 2 for w, h in self.level_dimensions)
        self._memmaps: list[np.ndarray | None] = [self._memmap(page) for page in self._pages]

    def _level_pages(self) -> list[tifffile.TiffPage]:
        series = self._tif.series
        if not series:
            raise UnsupportedFileError("no image in the file")
        pages = []
        for level in series[0].levels:
            page = level.keyframe
            _check_tiff_page(page)
            pages.append(page)
        return pages

    def _memmap(self, page: tifffile.TiffPage) -> np.ndarray | None:
        if not page.is_memmappable:
            return None
        return np.memmap(
            self._tif.filehandle.path, dtype=np.uint8, mode="r", offset=page.dataoffsets[0], shape=page.shaped
        )

    def read_rgba(self, l0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        downsample = self.level_downsamples[level]
        level_xy = (math.floor(l0_xy[0] / downsample), math.floor(l0_xy[1] / downsample))
        page = self._pages[level]
        memmap = self._memmaps[level]

        def read_window(x: int, y: int, width: int, height: int) -> np.ndarray:
            if memmap is not None:
                # shaped is (separate samples, depth, length, width, contiguous samples).
                window = memmap[:, 0, y : y + height, x : x + width, :]
                samples = np.moveaxis(window, 0, 2).reshape(height, width, -1)
                valid = None
            else:
                samples, valid = _decode_tiff_window(self._tif.filehandle, page, x, y, width, height)
            return _rgba_from_window(_tiff_samples_to_gray_or_rgb(page, samples), valid)

        return _read_clipped(level_xy, size, self.level_dimensions[level], read_window)

    def close(self) -> None:
        self._memmaps = []
        self._tif.close()


def _check_tiff_page(page: tifffile.TiffPage) -> None:
    """Raise ``UnsupportedFileError`` unless the page is 8-bit gray, palette or RGB that tifffile decodes."""
    if page.imagedepth > 1:
        raise UnsupportedFileError(f"volumetric TIFF (ImageDepth {page.imagedepth}) is not supported")
    if page.bitspersample != 8 or page.sampleformat != 1:
        raise UnsupportedFileError(
            f"{page.bitspersample}-bit samples (SampleFormat {page.sampleformat}) are not supported; "
            "slides must have 8-bit unsigned samples"
        )
    photometric = int(page.photometric)
    is_jpeg = page.compression in _TIFF_JPEG_COMPRESSIONS
    if photometric not in (0, 1, 2, 3) and not (photometric == 6 and is_jpeg):
        raise UnsupportedFileError(f"photometric interpretation {page.photometric!r} is not supported")
    try:
        tifffile.TIFF.DECOMPRESSORS[page.compression]
        tifffile.TIFF.UNPREDICTORS[page.predictor]
    except KeyError as exc:
        raise UnsupportedFileError(f"cannot decode: {one_line(exc)}") from exc


def _tiff_properties(page: tifffile.TiffPage) -> dict[str, str]:
    """Copy a page's descriptive and resolution tags into OpenSlide-style ``tiff.*`` properties."""
    properties = {}
    for tag_name in _TIFF_PROPERTY_TAGS:
        tag = page.tags.get(tag_name)
        if tag is not None and isinstance(tag.value, str):
            properties[f"tiff.{tag_name}"] = tag.value

    for tag_name in ("XResolution", "YResolution"):
        tag = page.tags.get(tag_name)
        if tag is not None:
            numerator, denominator = tag.value
            if denominator:
                properties[f"tiff.{tag_name}"] = repr(numerator / denominator)
    unit_tag = page.tags.get("ResolutionUnit")
    if unit_tag is not None:
        properties["tiff.ResolutionUnit"] = RESOLUTION_UNIT_NAMES.get(int(unit_tag.value), "none")
    return properties


def _decode_tiff_window(
    filehandle: tifffile.FileHandle, page: tifffile.TiffPage, x: int, y: int, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Decode the strips or tiles that a window touches.

    Returns:
        ``(height, width, samples_per_pixel)`` uint8 samples, and an
        ``(height, width)`` bool mask that is False where the file has no data
        (empty tiles).
    """
    if page.is_tiled:
        segment_height, segment_width = int(page.tilelength), int(page.tilewidth)
    else:
        # RowsPerStrip may exceed the image height, for example 2**32 - 1 for a single strip.
        segment_height = min(int(page.rowsperstrip), int(page.imagelength))
        segment_width = int(page.imagewidth)
    rows = math.ceil(page.imagelength / segment_height)
    columns = math.ceil(page.imagewidth / segment_width)
    planes = int(page.samplesperpixel) if page.planarconfig == 2 else 1

    # Segments are numbered by plane, then row, then column.
    indices = [
        plane * rows * columns + row * columns + column
        for plane in range(planes)
        for row in range(y // segment_height, (y + height - 1) // segment_height + 1)
        for column in range(x // segment_width, (x + width - 1) // segment_width + 1)
    ]
    decode_args: dict[str, Any] = {}
    if page.compression in _TIFF_JPEG_COMPRESSIONS:
        decode_args = {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader}

    samples = np.zeros((height, width, int(page.samplesperpixel)), dtype=np.uint8)
    valid = np.zeros((height, width), dtype=bool)
    segments = filehandle.read_segments(
        [page.dataoffsets[i] for i in indices],
        [page.databytecounts[i] for i in indices],
        indices=indices,
        lock=filehandle.lock,
    )
    for data, index in segments:
        # decoded: (depth, rows, columns, contiguous samples); position: (plane, depth, y, x, 0).
        decoded, position, _ = page.decode(data, index, **decode_args)
        if decoded is None:
            continue
        plane, _, segment_y, segment_x, _ = position
        segment = decoded[0]
        top, left = max(segment_y, y), max(segment_x, x)
        bottom = min(segment_y + segment.shape[0], y + height)
        right = min(segment_x + segment.shape[1], x + width)
        if bottom <= top or right <= left:
            continue
        channels = segment.shape[2]
        samples[top - y : bottom - y, left - x : right - x, plane : plane + channels] = segment[
            top - segment_y : bottom - segment_y, left - segment_x : right - segment_x
        ]
        valid[top - y : bottom - y, left - x : right - x] = True
    return samples, valid


def _tiff_samples_to_gray_or_rgb(page: tifffile.TiffPage, samples: np.ndarray) -> np.ndarray:
    """Map palette and inverted gray to plain gray or RGB, and undo premultiplied alpha.

    Args:
        page: the page the samples come from.
        samples: ``(H, W, samples_per_pixel)`` uint8 as stored.

    Returns:
        ``(H, W, C)`` uint8: gray (C 1), gray+alpha (2), RGB (3) or RGBA (4).
    """
    photometric = int(page.photometric)
    extra = tuple(int(e) for e in page.extrasamples)
    has_alpha = bool(extra) and extra[0] in (1, 2)
    stored_color_channels = 3 if photometric in (2, 6) else 1

    color = samples[..., :stored_color_channels]
    if photometric == 0:
        color = 255 - color
    elif photometric == 3:
        # ColorMap is (3, 256) uint16 per TIFF 6.0.
        colormap = (np.asarray(page.colormap) >> 8).astype(np.uint8)
        color = colormap[:, samples[..., 0]].transpose(1, 2, 0)
    if not has_alpha:
        return color

    alpha = samples[..., stored_color_channels : stored_color_channels + 1]
    if extra[0] == 1:
        # Associated alpha: colour samples are premultiplied by alpha.
        unpremultiplied = color.astype(np.uint16) * 255 // np.maximum(alpha, 1)
        color = np.where(alpha > 0, np.minimum(unpremultiplied, 255), 0).astype(np.uint8)
    return np.concatenate([color, alpha], axis=-1)


class _PillowBackend:
    """One level; Pillow decodes the whole image on the first read and keeps it."""

    name: ClassVar[BackendName] = "pillow"
    read_errors: ClassVar[tuple[type[Exception], ...]] = (OSError, ValueError)

    def __init__(self, path: Path) -> None:
        try:
            self._image = Image.open(path)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise UnsupportedFileError(one_line(exc)) from exc
        if self._image.mode not in _PILLOW_MODES:
            mode = self._image.mode
            self._image.close()
            raise UnsupportedFileError(f"image mode {mode} is not supported; slides must have 8-bit samples")

        self.vendor: str | None = None
        self.properties: Mapping[str, str] = MappingProxyType(self._pillow_properties())
        self.level_dimensions = (self._image.size,)
        self.level_downsamples = (1.0,)
        self._load_lock = threading.Lock()
        self._loaded = False

    def _pillow_properties(self) -> dict[str, str]:
        image = self._image
        properties = {"pillow.format": str(image.format), "pillow.mode": image.mode}
        if image.format == "TIFF":
            # Pillow 13 reads a missing ResolutionUnit as inch, so the tags are copied as
            # stored and interpreted like OpenSlide's tiff.* properties.
            tags = image.tag_v2  # type: ignore[attr-defined]
            for tag_id, tag_name in ((282, "XResolution"), (283, "YResolution")):
                if tag_id in tags:
                    properties[f"tiff.{tag_name}"] = repr(float(tags[tag_id]))
            if 296 in tags:
                properties["tiff.ResolutionUnit"] = RESOLUTION_UNIT_NAMES.get(int(tags[296]), "none")
        elif "dpi" in image.info:
            x_dpi, y_dpi = image.info["dpi"]
            properties["pillow.dpi-x"] = repr(float(x_dpi))
            properties["pillow.dpi-y"] = repr(float(y_dpi))
        return properties

    def read_rgba(self, l0_xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        with self._load_lock:
            if not self._loaded:
                self._image.load()
                self._loaded = True

        def read_window(x: int, y: int, width: int, height: int) -> np.ndarray:
            window = self._image.crop((x, y, x + width, y + height)).convert("RGBA")
            return np.asarray(window)

        return _read_clipped(l0_xy, size, self.level_dimensions[0], read_window)

    def close(self) -> None:
        self._image.close()


# OpenSlide first; the fallbacks only see files that it rejects.
BACKENDS: tuple[type[_OpenSlideBackend | _TiffFileBackend | _PillowBackend], ...] = (
    _OpenSlideBackend,
    _TiffFileBackend,
    _PillowBackend,
)


def open_backend(path: Path) -> Backend:
    """Open ``path`` with the first backend that accepts it.

    Raises:
        SlideOpenError: the path is missing or a directory, or no backend opens
            it; the message gives every backend's reason.
    """
    if not path.exists():
        raise SlideOpenError(f"Slide file not found: {path}")
    if path.is_dir():
        raise SlideOpenError(
            f"Slide path is a directory, not a file: {path}; pass the slide file itself "
            "(for MRXS, the .mrxs file beside the folder)"
        )

    reasons = []
    for backend_class in BACKENDS:
        try:
            backend = backend_class(path)
        except UnsupportedFileError as exc:
            reasons.append(f"{backend_class.name}: {exc}")
            continue
        logger.debug("Opened %s with %s", path, backend_class.name)
        return backend
    raise SlideOpenError(f"Failed to open slide {path}: {'; '.join(reasons)}")
