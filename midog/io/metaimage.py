"""MetaImage (``.mha``, ``.mhd``) reading for 2D 8-bit images.

Grand Challenge converts uploaded PNG, JPEG, DICOM and NIfTI images to
MetaImage with panimg, which writes them with SimpleITK. TIFF-like slides
stay TIFF. A MetaImage is a text header of ``Key = Value`` lines, the last
being ``ElementDataFile``. The raw pixels follow the header
(``ElementDataFile = LOCAL``, one ``.mha`` file) or sit in a separate data
file (``.mhd`` header plus ``.raw``). Pixels are stored with x
fastest, then y, with the channels of a pixel next to each other.
``ElementSpacing`` gives the pixel size in millimetres.

This reader covers what such images use: ``ElementType = MET_UCHAR`` with 1
(gray), 3 (RGB) or 4 (RGBA) channels, ``NDims = 2`` (or 3 with a depth of 1),
uncompressed or zlib-compressed (``CompressedData = True``). The whole image
is held in memory, and ``MetaImageSlide`` offers the reading methods of
``midog.io.slide.SlideReader``, so the tiled runner takes it in place of one.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Literal

import numpy as np
from PIL import Image

from midog.errors import SlideOpenError, SlideReadError, SlideResolutionError
from midog.io.slide import MAX_MPP, MIN_MPP, MPP_XY_TOLERANCE

__all__ = [
    "METAIMAGE_SUFFIXES",
    "MetaImageHeader",
    "MetaImageSlide",
    "mpp_from_spacing_mm",
    "open_metaimage",
    "read_metaimage_header",
]

logger = logging.getLogger(__name__)

METAIMAGE_SUFFIXES = (".mha", ".mhd")

# A MetaImage header is a few hundred bytes, so a file without ElementDataFile
# in its first 64 KiB is not a MetaImage.
_MAX_HEADER_BYTES = 64 * 1024

_SUPPORTED_CHANNELS = (1, 3, 4)


@dataclass(frozen=True)
class MetaImageHeader:
    """The fields of a MetaImage header that the reader uses.

    Attributes:
        path: the header file.
        fields: every ``Key = Value`` line as written, in file order.
        dimensions: ``(width, height)`` in px.
        channels: samples per pixel: 1 (gray), 3 (RGB) or 4 (RGBA).
        spacing_mm: ``(x, y)`` pixel size in mm from ``ElementSpacing`` (or
            ``ElementSize``); None when the header has neither.
        compressed: the pixel data is a zlib stream.
        compressed_size: ``CompressedDataSize`` in bytes; None when absent.
        data_path: the file with the pixel data: ``path`` itself for LOCAL.
        data_offset: byte offset of the pixel data in ``data_path``; -1 means
            the data are the last bytes of the file (``HeaderSize = -1``).
    """

    path: Path
    fields: dict[str, str]
    dimensions: tuple[int, int]
    channels: int
    spacing_mm: tuple[float, float] | None
    compressed: bool
    compressed_size: int | None
    data_path: Path
    data_offset: int

    @property
    def num_bytes(self) -> int:
        """Size of the uncompressed pixel data in bytes."""
        width, height = self.dimensions
        return width * height * self.channels


def mpp_from_spacing_mm(spacing_mm: float) -> float:
    """Convert a MetaImage pixel spacing in mm to µm/px."""
    return spacing_mm * 1000.0


def _invalid(path: Path, problem: str) -> SlideOpenError:
    return SlideOpenError(f"Failed to open MetaImage {path}: {problem}")


def _split_header(path: Path) -> tuple[dict[str, str], int]:
    """Read the ``Key = Value`` lines up to ``ElementDataFile``; return them and the data offset."""
    try:
        with path.open("rb") as file:
            head = file.read(_MAX_HEADER_BYTES)
    except FileNotFoundError as exc:
        raise SlideOpenError(f"Image file not found: {path}") from exc
    except IsADirectoryError as exc:
        raise SlideOpenError(f"Image path is a directory, not a file: {path}") from exc
    except OSError as exc:
        raise SlideOpenError(f"Failed to open MetaImage {path}: {exc.strerror or exc}") from exc

    fields: dict[str, str] = {}
    offset = 0
    while offset < len(head):
        end = head.find(b"\n", offset)
        if end < 0:
            break
        raw_line = head[offset:end]
        offset = end + 1
        try:
            line = raw_line.decode("ascii").strip()
        except UnicodeDecodeError as exc:
            raise _invalid(
                path, "the header has a line that is not ASCII text; is this a MetaImage file?"
            ) from exc
        if not line:
            continue
        key, separator, value = line.partition("=")
        if not separator:
            raise _invalid(path, f"header line {line[:60]!r} is not 'Key = Value'")
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            return fields, offset
    raise _invalid(path, "no ElementDataFile line in the header; is this a MetaImage file?")


def _parse_ints(path: Path, fields: dict[str, str], key: str) -> list[int]:
    try:
        return [int(v) for v in fields[key].split()]
    except KeyError as exc:
        raise _invalid(path, f"the header has no {key}") from exc
    except ValueError as exc:
        raise _invalid(path, f"{key} = {fields[key]!r} is not a list of integers") from exc


def _parse_bool(path: Path, fields: dict[str, str], key: str, default: bool) -> bool:
    if key not in fields:
        return default
    value = fields[key].lower()
    if value not in ("true", "false"):
        raise _invalid(path, f"{key} = {fields[key]!r}; expected True or False")
    return value == "true"


def _parse_spacing_mm(path: Path, fields: dict[str, str]) -> tuple[float, float] | None:
    for key in ("ElementSpacing", "ElementSize"):
        if key not in fields:
            continue
        try:
            values = [float(v) for v in fields[key].split()]
        except ValueError as exc:
            raise _invalid(path, f"{key} = {fields[key]!r} is not a list of numbers") from exc
        if len(values) < 2:
            raise _invalid(path, f"{key} = {fields[key]!r}; expected at least two values, x and y in mm")
        return values[0], values[1]
    return None


def read_metaimage_header(path: str | Path) -> MetaImageHeader:
    """Read and check a MetaImage header.

    Args:
        path: the ``.mha`` or ``.mhd`` file.

    Returns:
        The header.

    Raises:
        SlideOpenError: the file is missing or is not a MetaImage this reader
            supports; the message names the field at fault.
    """
    path = Path(path)
    fields, header_end = _split_header(path)

    object_type = fields.get("ObjectType", "Image")
    if object_type.lower() != "image":
        raise _invalid(path, f"ObjectType = {object_type!r}; only Image is supported")

    num_dims = _parse_ints(path, fields, "NDims")
    dim_size = _parse_ints(path, fields, "DimSize")
    if num_dims not in ([2], [3]) or len(dim_size) != num_dims[0]:
        raise _invalid(path, f"NDims = {fields['NDims']}, DimSize = {fields['DimSize']}; expected a 2D image")
    if num_dims == [3] and dim_size[2] != 1:
        raise _invalid(path, f"DimSize = {fields['DimSize']} is a 3D volume; expected a 2D image (depth 1)")
    width, height = dim_size[0], dim_size[1]
    if width < 1 or height < 1:
        raise _invalid(path, f"DimSize = {fields['DimSize']}; width and height must be at least 1")

    element_type = fields.get("ElementType")
    if element_type != "MET_UCHAR":
        raise _invalid(path, f"ElementType = {element_type!r}; only MET_UCHAR (8-bit unsigned) is supported")
    channels = (
        _parse_ints(path, fields, "ElementNumberOfChannels") if "ElementNumberOfChannels" in fields else [1]
    )
    if len(channels) != 1 or channels[0] not in _SUPPORTED_CHANNELS:
        raise _invalid(
            path,
            f"ElementNumberOfChannels = {fields['ElementNumberOfChannels']}; "
            "expected 1 (gray), 3 (RGB) or 4 (RGBA)",
        )
    if not _parse_bool(path, fields, "BinaryData", default=True):
        raise _invalid(path, "BinaryData = False (pixels as text) is not supported")

    compressed = _parse_bool(path, fields, "CompressedData", default=False)
    compressed_size = (
        _parse_ints(path, fields, "CompressedDataSize")[0] if "CompressedDataSize" in fields else None
    )

    data_file = fields["ElementDataFile"]
    if data_file.upper() == "LOCAL":
        data_path, data_offset = path, header_end
    elif data_file.upper().startswith("LIST") or "%" in data_file or " " in data_file:
        raise _invalid(path, f"ElementDataFile = {data_file!r}; only LOCAL or one data file is supported")
    else:
        data_path = path.parent / data_file
        header_size = _parse_ints(path, fields, "HeaderSize")[0] if "HeaderSize" in fields else 0
        if header_size == -1 and compressed:
            raise _invalid(path, "HeaderSize = -1 with CompressedData = True is not supported")
        data_offset = header_size

    return MetaImageHeader(
        path=path,
        fields=fields,
        dimensions=(width, height),
        channels=channels[0],
        spacing_mm=_parse_spacing_mm(path, fields),
        compressed=compressed,
        compressed_size=compressed_size,
        data_path=data_path,
        data_offset=data_offset,
    )


def _resolve_mpp(header: MetaImageHeader, mpp_override: float | None) -> float:
    """Return level-0 µm/px: ``mpp_override`` if given, else from ``ElementSpacing``.

    Raises:
        SlideResolutionError: the header has no spacing, or it lies outside
            ``MIN_MPP``-``MAX_MPP`` µm/px (MetaImage writers put 1 mm when the
            pixel size is unknown).
    """
    if mpp_override is not None:
        mpp_x = mpp_y = float(mpp_override)
        source = "the mpp argument"
    elif header.spacing_mm is None:
        raise SlideResolutionError(
            f"MetaImage {header.path} has no pixel size (no ElementSpacing in its header); "
            "pass its µm/px, for example 0.25"
        )
    else:
        mpp_x, mpp_y = (mpp_from_spacing_mm(s) for s in header.spacing_mm)
        source = f"ElementSpacing {header.spacing_mm[0]:g} {header.spacing_mm[1]:g} mm"

    if not (math.isfinite(mpp_x) and MIN_MPP <= mpp_x <= MAX_MPP):
        raise SlideResolutionError(
            f"MetaImage {header.path}: pixel size {mpp_x:g} µm/px from {source} is outside "
            f"{MIN_MPP:g}-{MAX_MPP:g} µm/px; pass its real µm/px, for example 0.25"
        )
    if abs(mpp_x - mpp_y) > MPP_XY_TOLERANCE * min(mpp_x, mpp_y):
        logger.warning(
            "MetaImage %s has non-square pixels (x %g, y %g µm/px from %s); using x %g for both axes",
            header.path,
            mpp_x,
            mpp_y,
            source,
            mpp_x,
        )
    return mpp_x


def _read_pixels(header: MetaImageHeader) -> np.ndarray:
    """Read the pixel data as ``(height, width, channels)`` uint8.

    Raises:
        SlideReadError: the data file is missing, truncated, or not a valid zlib stream.
    """
    path = header.data_path
    width, height = header.dimensions
    try:
        with path.open("rb") as file:
            file_size = file.seek(0, 2)
            if header.data_offset == -1:
                offset = file_size - header.num_bytes
            else:
                offset = header.data_offset
            file.seek(max(offset, 0))
            if header.compressed:
                data = file.read(header.compressed_size if header.compressed_size is not None else -1)
            else:
                data = file.read(header.num_bytes)
    except OSError as exc:
        raise SlideReadError(
            f"Failed to read the pixel data of MetaImage {header.path} from {path}: {exc}"
        ) from exc

    if header.compressed:
        try:
            data = zlib.decompress(data)
        except zlib.error as exc:
            raise SlideReadError(
                f"Failed to read MetaImage {header.path}: "
                f"the compressed pixel data is invalid or truncated ({exc})"
            ) from exc
    if offset < 0 or len(data) != header.num_bytes:
        raise SlideReadError(
            f"Failed to read MetaImage {header.path}: the pixel data has {max(len(data), 0)} bytes, expected "
            f"{header.num_bytes} ({width} x {height} px, {header.channels} channels); the file is truncated"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, header.channels)


def _rgb_from_samples(samples: np.ndarray, fill_rgb: tuple[int, int, int]) -> np.ndarray:
    """Convert ``(H, W, 1|3|4)`` uint8 to RGB; RGBA is composited onto ``fill_rgb``."""
    channels = samples.shape[2]
    if channels == 1:
        return np.repeat(samples, 3, axis=2)
    if channels == 3:
        return np.ascontiguousarray(samples)
    alpha = samples[..., 3:4].astype(np.uint16)
    fill = np.asarray(fill_rgb, dtype=np.uint16)
    blended = (samples[..., :3].astype(np.uint16) * alpha + fill * (255 - alpha) + 127) // 255
    return blended.astype(np.uint8)


class MetaImageSlide:
    """A 2D MetaImage held in memory, read like a one-level ``SlideReader``.

    Use ``open_metaimage`` to create one. Reads are addressed in level-0 px
    and return RGB. The reader can be pickled for worker processes: the
    pickle stores the path and the mpp override, and unpickling reads the
    file again.

    Attributes:
        path: the header file.
        backend: always "metaimage".
        mpp: µm/px (the ``mpp`` argument if given, else from ``ElementSpacing``).
        dimensions: ``(width, height)`` in px.
        bounds: ``(0, 0, width, height)``, the whole image.
        level_dimensions: ``(dimensions,)``.
        level_downsamples: ``(1.0,)``.
        properties: the header fields, as ``metaimage.<Key>``.
        vendor: always None.
    """

    backend: Literal["metaimage"] = "metaimage"
    vendor: str | None = None

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        """Open a MetaImage; see ``open_metaimage``."""
        self.path = Path(path)
        self._mpp_override = None if mpp is None else float(mpp)
        self._open()

    def _open(self) -> None:
        header = read_metaimage_header(self.path)
        self.mpp = _resolve_mpp(header, self._mpp_override)
        self._samples: np.ndarray | None = _read_pixels(header)
        self.header = header
        self.properties = MappingProxyType({f"metaimage.{k}": v for k, v in header.fields.items()})
        self.dimensions = header.dimensions
        self.bounds = (0, 0, header.dimensions[0], header.dimensions[1])
        self.level_dimensions = (header.dimensions,)
        self.level_downsamples = (1.0,)

    @property
    def level_count(self) -> int:
        """Number of pyramid levels: always 1."""
        return 1

    def _live_samples(self) -> np.ndarray:
        if self._samples is None:
            raise ValueError(f"MetaImage {self.path} is closed")
        return self._samples

    def _check_level(self, level: int) -> None:
        if level != 0:
            raise ValueError(
                f"level {level} is out of range for MetaImage {self.path}, which has level 0 only"
            )

    def level_mpp(self, level: int) -> float:
        """Return the µm/px of a level; only level 0 exists."""
        self._check_level(level)
        return self.mpp

    def best_level_for_mpp(self, target_mpp: float) -> int:
        """Return 0, the only level; the caller resamples to ``target_mpp``.

        Raises:
            ValueError: ``target_mpp`` is not a positive finite number.
        """
        if not (math.isfinite(target_mpp) and target_mpp > 0):
            raise ValueError(f"target_mpp must be a positive number of µm/px, got {target_mpp!r}")
        return 0

    def read_region(
        self,
        l0_xy: tuple[int, int],
        level: int,
        size: tuple[int, int],
        fill_rgb: tuple[int, int, int] = (255, 255, 255),
    ) -> np.ndarray:
        """Read a region as RGB; pixels outside the image get ``fill_rgb``.

        Args:
            l0_xy: ``(x, y)`` of the region's top-left pixel in level-0 px; may be negative.
            level: must be 0.
            size: ``(width, height)`` of the region in px.
            fill_rgb: colour for pixels outside the image or transparent, 0-255.

        Returns:
            ``(height, width, 3)`` uint8 RGB.

        Raises:
            ValueError: invalid level or size, or the reader is closed.
        """
        self._check_level(level)
        width, height = int(size[0]), int(size[1])
        if width < 0 or height < 0:
            raise ValueError(f"region size must be (width, height) >= 0, got {size!r}")
        fill = (int(fill_rgb[0]), int(fill_rgb[1]), int(fill_rgb[2]))
        samples = self._live_samples()
        x, y = int(l0_xy[0]), int(l0_xy[1])

        region = np.empty((height, width, 3), dtype=np.uint8)
        region[:] = fill
        image_width, image_height = self.dimensions
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, image_width), min(y + height, image_height)
        if x1 > x0 and y1 > y0:
            region[y0 - y : y1 - y, x0 - x : x1 - x] = _rgb_from_samples(samples[y0:y1, x0:x1], fill)
        return region

    def read_thumbnail(self, max_size_px: int) -> tuple[np.ndarray, float]:
        """Return the image downsampled so that its longer side is at most ``max_size_px``.

        Returns:
            ``(H, W, 3)`` uint8 RGB, transparent areas white, and the level-0
            px per thumbnail px.

        Raises:
            ValueError: ``max_size_px`` is below 1.
        """
        if max_size_px < 1:
            raise ValueError(f"max_size_px must be at least 1, got {max_size_px}")
        width, height = self.dimensions
        l0_per_thumbnail_px = max(1.0, max(width, height) / max_size_px)
        thumbnail_size = (
            max(1, round(width / l0_per_thumbnail_px)),
            max(1, round(height / l0_per_thumbnail_px)),
        )

        image = Image.fromarray(_rgb_from_samples(self._live_samples(), (255, 255, 255)))
        factor = max(1, int(l0_per_thumbnail_px))
        if factor > 1:
            image = image.reduce(factor)
        if image.size != thumbnail_size:
            image = image.resize(thumbnail_size, Image.Resampling.LANCZOS)
        return np.asarray(image), l0_per_thumbnail_px

    def close(self) -> None:
        """Release the pixels; later reads raise ValueError. Closing twice is allowed."""
        self._samples = None

    def __enter__(self) -> MetaImageSlide:
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


def open_metaimage(path: str | Path, mpp: float | None = None) -> MetaImageSlide:
    """Open a 2D 8-bit MetaImage and read its pixels into memory.

    Args:
        path: the ``.mha`` file, or the ``.mhd`` header of a header-plus-data pair.
        mpp: µm/px; overrides ``ElementSpacing``. Give it for files without
            a usable spacing.

    Returns:
        An open ``MetaImageSlide``.

    Raises:
        SlideOpenError: the file is missing or its header is not a supported MetaImage.
        SlideResolutionError: no pixel size is known, or it is outside
            ``MIN_MPP``-``MAX_MPP`` µm/px; raised before the pixels are read.
        SlideReadError: the pixel data is missing, truncated or not valid zlib.
    """
    return MetaImageSlide(path, mpp)
