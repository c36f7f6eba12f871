"""Input images for the challenge tests: MetaImage files, TIFFs, and real figures on real tissue."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import tifffile

__all__ = ["FIGURE_CANVAS_SIZE_PX", "figure_canvas", "write_metaimage", "write_tiff_without_resolution"]

# Width and height of the canvas of real figures, at 0.25 µm/px (0.512 x 0.32 mm).
FIGURE_CANVAS_SIZE_PX = (2048, 1280)

# Columns of the held-out part of the real slide (at 0.25 µm/px) where it is
# almost all tissue.
_TISSUE_X0_PX = 1024

# Width of the blended border of a pasted crop.
_FEATHER_PX = 8


def write_metaimage(
    path: Path,
    samples: np.ndarray,
    spacing_mm: tuple[float, float] | None = (0.00025, 0.00025),
    compressed: bool = False,
    data_file: str = "LOCAL",
    extra_fields: tuple[tuple[str, str], ...] = (),
) -> Path:
    """Write ``(H, W)`` or ``(H, W, C)`` uint8 samples as a MetaImage, the way SimpleITK does.

    Args:
        path: the ``.mha`` (with ``data_file`` "LOCAL") or ``.mhd`` file.
        samples: the pixels, row-major, channels last.
        spacing_mm: ``ElementSpacing`` x and y in mm; None leaves the line out.
        compressed: store the pixels as one zlib stream.
        data_file: "LOCAL", or the name of a data file written beside ``path``.
        extra_fields: more ``(key, value)`` lines, placed before ``ElementDataFile``.
    """
    samples = np.ascontiguousarray(samples, dtype=np.uint8)
    channels = 1 if samples.ndim == 2 else samples.shape[2]
    data = samples.tobytes()
    if compressed:
        data = zlib.compress(data)

    lines = ["ObjectType = Image", "NDims = 2", "BinaryData = True", "BinaryDataByteOrderMSB = False"]
    lines.append(f"CompressedData = {compressed}")
    if compressed:
        lines.append(f"CompressedDataSize = {len(data)}")
    lines += ["TransformMatrix = 1 0 0 1", "Offset = 0 0"]
    if spacing_mm is not None:
        lines.append(f"ElementSpacing = {spacing_mm[0]!r} {spacing_mm[1]!r}")
    lines.append(f"DimSize = {samples.shape[1]} {samples.shape[0]}")
    if channels > 1:
        lines.append(f"ElementNumberOfChannels = {channels}")
    lines.append("ElementType = MET_UCHAR")
    lines += [f"{key} = {value}" for key, value in extra_fields]
    lines.append(f"ElementDataFile = {data_file}")
    header = ("\n".join(lines) + "\n").encode("ascii")

    if data_file == "LOCAL":
        path.write_bytes(header + data)
    else:
        path.write_bytes(header)
        (path.parent / data_file).write_bytes(data)
    return path


def write_tiff_without_resolution(path: Path, rgb: np.ndarray) -> Path:
    """Write a tiled RGB TIFF whose resolution tags give no unit (tifffile's default, unit "none")."""
    tifffile.imwrite(path, rgb, photometric="rgb", tile=(256, 256), compression="zlib")
    return path


def _feather_alpha(size_px: int, feather_px: int) -> np.ndarray:
    """``(size, size)`` float32 alpha: 0 at the border, rising to 1 over ``feather_px``."""
    coords = np.arange(size_px, dtype=np.float32) + 0.5
    edge = np.minimum(coords, size_px - coords)
    ramp = np.clip(edge / feather_px, 0.0, 1.0)
    return np.minimum(ramp[None, :], ramp[:, None])


def figure_canvas(
    data_dir: Path, num_columns: int = 4, num_rows: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Paste held-out crops of real mitotic figures onto held-out real tissue at 0.25 µm/px.

    The tissue is the held-out bottom part of the real slide; the crops are
    AtNorM-Br crops, which are never trained on. One crop goes into each cell
    of a ``num_columns x num_rows`` grid over the canvas, at a seeded random
    position inside its cell, with a feathered border.

    Returns:
        ``(H, W, 3)`` uint8 RGB of size ``FIGURE_CANVAS_SIZE_PX``, and the
        figure centres ``(N, 2)`` float64 ``x, y`` in px (the crop centres).
    """
    # Imported here because midog.training imports albumentations, and with it torch, where installed.
    from midog.training.crops import CROP_SIZE_PX, list_crops, load_rgb, load_tissue_sources

    width, height = FIGURE_CANVAS_SIZE_PX
    tissue = load_tissue_sources(data_dir, "test")[0].rgb
    canvas = tissue[:height, _TISSUE_X0_PX : _TISSUE_X0_PX + width].astype(np.float32)

    crops = [record for record in list_crops(data_dir / "mf_crops") if record.source_set == "AtNorM-Br"]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(crops), size=num_columns * num_rows, replace=False)
    alpha = _feather_alpha(CROP_SIZE_PX, _FEATHER_PX)[..., None]
    cell_width, cell_height = width // num_columns, height // num_rows

    centres = []
    for index, crop_index in enumerate(chosen):
        column, row = index % num_columns, index // num_columns
        x = column * cell_width + int(rng.integers(0, cell_width - CROP_SIZE_PX + 1))
        y = row * cell_height + int(rng.integers(0, cell_height - CROP_SIZE_PX + 1))
        crop = load_rgb(crops[crop_index].path).astype(np.float32)
        region = canvas[y : y + CROP_SIZE_PX, x : x + CROP_SIZE_PX]
        region[:] = alpha * crop + (1 - alpha) * region
        centres.append((x + CROP_SIZE_PX / 2, y + CROP_SIZE_PX / 2))
    return np.clip(canvas, 0, 255).astype(np.uint8), np.asarray(centres, dtype=np.float64)
