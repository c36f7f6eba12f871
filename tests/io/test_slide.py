"""Tests for midog.io.slide on the real slides in the shared data folder and on TIFFs made here."""

from __future__ import annotations

import logging
import multiprocessing
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from midog.errors import SlideOpenError, SlideReadError, SlideResolutionError
from midog.io.slide import SlideReader, open_slide

PINK_RGB = (232, 168, 208)
FILL_RGB = (10, 20, 30)


def _write_tiff(
    path: Path,
    image: np.ndarray,
    *,
    tiled: bool,
    resolution: tuple[float, float] | None = (40000, 40000),
    unit: str | None = "CENTIMETER",
    **kwargs: object,
) -> Path:
    """Write an RGB TIFF, tiled at 256 px (OpenSlide opens it) or stripped (OpenSlide rejects it).

    The default resolution is 40,000 px/cm, which is 0.25 µm/px.
    """
    layout = {"tile": (256, 256)} if tiled else {}
    tifffile.imwrite(
        path, image, photometric="rgb", resolution=resolution, resolutionunit=unit, **layout, **kwargs
    )
    return path


def _random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _pink(height: int, width: int) -> np.ndarray:
    return np.broadcast_to(np.array(PINK_RGB, dtype=np.uint8), (height, width, 3)).copy()


@pytest.fixture(scope="session")
def slides_dir(shared_data: Path) -> Path:
    return shared_data / "slides"


@pytest.fixture(scope="session")
def cmu_path(slides_dir: Path) -> Path:
    return slides_dir / "cmu-1-small-region.svs"


# Resolution from TIFF tags


@pytest.mark.parametrize(
    ("tiled", "backend"), [(True, "openslide"), (False, "tifffile")], ids=["tiled", "stripped"]
)
@pytest.mark.parametrize(
    ("resolution", "unit"), [((40000, 40000), "CENTIMETER"), ((101600, 101600), "INCH")], ids=["cm", "inch"]
)
def test_mpp_from_tiff_tags(tmp_path, tiled, backend, resolution, unit):
    image = _pink(1500, 2000)
    path = _write_tiff(tmp_path / "slide.tif", image, tiled=tiled, resolution=resolution, unit=unit)

    with open_slide(path) as slide:
        assert slide.backend == backend
        assert slide.mpp == pytest.approx(0.25)
        assert slide.dimensions == (2000, 1500)


@pytest.mark.parametrize("tiled", [True, False], ids=["tiled", "stripped"])
def test_mpp_unit_none_needs_argument(tmp_path, tiled):
    # tifffile writes XResolution 1 with ResolutionUnit "none" when given no resolution.
    path = _write_tiff(tmp_path / "no-unit.tif", _pink(1500, 2000), tiled=tiled, resolution=None, unit=None)

    with pytest.raises(SlideResolutionError) as excinfo:
        open_slide(path)
    assert "no-unit.tif" in str(excinfo.value)
    assert "--mpp 0.25" in str(excinfo.value)


@pytest.mark.parametrize("tiled", [True, False], ids=["tiled", "stripped"])
def test_mpp_argument_overrides(tmp_path, tiled):
    path = _write_tiff(tmp_path / "no-unit.tif", _pink(1500, 2000), tiled=tiled, resolution=None, unit=None)

    with open_slide(path, mpp=0.3) as slide:
        assert slide.mpp == 0.3


def test_mpp_missing_tags_needs_argument(tmp_path):
    # Pillow writes a stripped TIFF without any resolution tag.
    path = tmp_path / "no-tags.tif"
    Image.fromarray(_pink(1500, 2000)).save(path)
    with tifffile.TiffFile(path) as tif:
        assert "XResolution" not in tif.pages[0].tags

    with pytest.raises(SlideResolutionError, match="no-tags.tif.*--mpp"):
        open_slide(path)
    with open_slide(path, mpp=0.25) as slide:
        assert slide.mpp == 0.25


def test_mpp_72_dpi_rejected(tmp_path):
    path = _write_tiff(tmp_path / "screen.tif", _pink(10, 10), tiled=False, resolution=(72, 72), unit="INCH")

    with pytest.raises(SlideResolutionError) as excinfo:
        open_slide(path)
    assert "352.778 µm/px" in str(excinfo.value)
    assert "XResolution=72 px/inch" in str(excinfo.value)


@pytest.mark.parametrize("mpp", [0.0, -0.25, 0.01, 250.0, float("nan")])
def test_mpp_argument_out_of_range(tmp_path, mpp):
    path = _write_tiff(tmp_path / "slide.tif", _pink(100, 100), tiled=False)

    with pytest.raises(SlideResolutionError, match="from the mpp argument"):
        open_slide(path, mpp=mpp)


def test_mpp_non_square_warns(tmp_path, caplog):
    path = _write_tiff(
        tmp_path / "slide.tif", _pink(100, 100), tiled=False, resolution=(40000, 20000), unit="CENTIMETER"
    )

    with caplog.at_level(logging.WARNING, logger="midog.io.slide"), open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.25)
    assert "non-square pixels" in caplog.text


# Reading regions


@pytest.mark.parametrize("tiled", [True, False], ids=["tiled", "stripped"])
def test_region_overhang_is_fill(tmp_path, tiled):
    path = _write_tiff(tmp_path / "pink.tif", _pink(700, 1000), tiled=tiled)

    with open_slide(path) as slide:
        region = slide.read_region((900, 600), 0, (256, 256), fill_rgb=FILL_RGB)

    assert region.shape == (256, 256, 3)
    assert region.dtype == np.uint8
    assert (region[:100, :100] == PINK_RGB).all()
    assert (region[100:, :] == FILL_RGB).all()
    assert (region[:, 100:] == FILL_RGB).all()


@pytest.mark.parametrize("tiled", [True, False], ids=["tiled", "stripped"])
def test_region_negative_origin(tmp_path, tiled):
    path = _write_tiff(tmp_path / "pink.tif", _pink(700, 1000), tiled=tiled)

    with open_slide(path) as slide:
        region = slide.read_region((-30, -20), 0, (64, 64))

    assert (region[:20, :] == 255).all()
    assert (region[:, :30] == 255).all()
    assert (region[20:, 30:] == PINK_RGB).all()


def test_region_outside_plane(tmp_path):
    path = _write_tiff(tmp_path / "pink.tif", _pink(700, 1000), tiled=False)

    with open_slide(path) as slide:
        region = slide.read_region((5000, 5000), 0, (32, 16), fill_rgb=FILL_RGB)

    assert region.shape == (16, 32, 3)
    assert (region == FILL_RGB).all()


TIFF_LAYOUTS = {
    "strips-uncompressed": {"rowsperstrip": 700},
    "strips-deflate": {"rowsperstrip": 33, "compression": "zlib"},
    "strips-deflate-predictor": {"rowsperstrip": 33, "compression": "zlib", "predictor": True},
    "strips-planar": {"rowsperstrip": 64, "planarconfig": "separate"},
}


@pytest.mark.parametrize("layout", list(TIFF_LAYOUTS))
def test_fallback_region_matches_pixels(tmp_path, layout):
    image = _random_rgb(700, 1000)
    kwargs = dict(TIFF_LAYOUTS[layout])
    data = np.moveaxis(image, -1, 0) if kwargs.get("planarconfig") == "separate" else image
    path = _write_tiff(tmp_path / "random.tif", data, tiled=False, **kwargs)

    with open_slide(path) as slide:
        assert slide.backend == "tifffile"
        for x, y, width, height in [(333, 222, 111, 99), (0, 0, 1000, 700), (990, 0, 10, 700)]:
            region = slide.read_region((x, y), 0, (width, height))
            assert np.array_equal(region, image[y : y + height, x : x + width]), (x, y, width, height)


def test_fallback_corrupt_strip_raises(tmp_path):
    image = _random_rgb(700, 1000)
    path = _write_tiff(tmp_path / "corrupt.tif", image, tiled=False, rowsperstrip=100, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset, bytecount = tif.pages[0].dataoffsets[3], tif.pages[0].databytecounts[3]
    with path.open("r+b") as file:
        file.seek(offset)
        file.write(b"\xff" * bytecount)

    with open_slide(path) as slide:
        assert slide.read_region((0, 0), 0, (1000, 100)).shape == (100, 1000, 3)
        with pytest.raises(SlideReadError) as excinfo:
            slide.read_region((10, 320), 0, (50, 50))
    assert "corrupt.tif" in str(excinfo.value)
    assert "level 0" in str(excinfo.value)
    assert "x=10, y=320" in str(excinfo.value)


def test_fallback_pyramid_levels(tmp_path):
    image = _random_rgb(700, 1000)
    path = tmp_path / "pyramid.tif"
    with tifffile.TiffWriter(path) as tif:
        options = {"photometric": "rgb", "rowsperstrip": 64}
        tif.write(image, subifds=2, resolution=(40000, 40000), resolutionunit="CENTIMETER", **options)
        tif.write(image[::2, ::2], subfiletype=1, **options)
        tif.write(image[::4, ::4], subfiletype=1, **options)

    with open_slide(path) as slide:
        assert slide.backend == "tifffile"
        assert slide.level_dimensions == ((1000, 700), (500, 350), (250, 175))
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        assert slide.level_mpp(2) == pytest.approx(1.0)
        region = slide.read_region((400, 200), 1, (100, 50))
    assert np.array_equal(region, image[::2, ::2][100:150, 200:300])


def test_pillow_png_alpha_on_fill(tmp_path):
    rgba = np.dstack([_pink(50, 80), np.zeros((50, 80), np.uint8)])
    rgba[:, 40:, 3] = 255
    path = tmp_path / "half-transparent.png"
    Image.fromarray(rgba).save(path)

    with open_slide(path, mpp=0.25) as slide:
        region = slide.read_region((0, 0), 0, (80, 50), fill_rgb=FILL_RGB)
    assert slide.backend == "pillow"
    assert (region[:, :40] == FILL_RGB).all()
    assert (region[:, 40:] == PINK_RGB).all()


def test_pillow_png_dpi_gives_mpp(tmp_path):
    path = tmp_path / "tile.png"
    Image.fromarray(_pink(50, 80)).save(path, dpi=(101600, 101600))

    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.25)


def test_pillow_lzw_tiff(tmp_path):
    # tifffile needs the optional imagecodecs package for LZW; Pillow decodes it.
    image = _random_rgb(300, 400)
    path = tmp_path / "lzw.tif"
    Image.fromarray(image).save(path, compression="tiff_lzw", dpi=(101600, 101600))

    with open_slide(path) as slide:
        region = slide.read_region((0, 0), 0, (400, 300))
        assert slide.mpp == pytest.approx(0.25)
    assert np.array_equal(region, image)


def test_region_invalid_level(cmu_path):
    with open_slide(cmu_path) as slide, pytest.raises(ValueError, match="level 1 is out of range"):
        slide.read_region((0, 0), 1, (10, 10))


def test_region_closed_slide(cmu_path):
    slide = open_slide(cmu_path)
    slide.close()

    with pytest.raises(ValueError, match="closed"):
        slide.read_region((0, 0), 0, (10, 10))


# The real slides


def test_cmu_metadata(cmu_path):
    with open_slide(cmu_path) as slide:
        assert slide.backend == "openslide"
        assert slide.vendor == "aperio"
        assert slide.mpp == pytest.approx(0.499, abs=0.001)
        assert slide.dimensions == (2220, 2967)
        assert slide.bounds == (0, 0, 2220, 2967)
        assert slide.level_count == 1


def test_cmu_region_has_tissue(cmu_path):
    with open_slide(cmu_path) as slide:
        region = slide.read_region((1000, 1500), 0, (256, 256))

    assert region.shape == (256, 256, 3)
    assert region.mean() < 200
    assert region.std() > 20


def test_cmu_thumbnail(cmu_path):
    with open_slide(cmu_path) as slide:
        thumbnail, l0_per_px = slide.read_thumbnail(256)

    assert thumbnail.shape == (256, 192, 3)
    assert l0_per_px == pytest.approx(2967 / 256)
    assert thumbnail.mean() < 240


def test_thumbnail_matches_downsampled(tmp_path):
    image = np.zeros((1500, 2000, 3), np.uint8)
    image[:, 1000:] = PINK_RGB
    path = _write_tiff(tmp_path / "halves.tif", image, tiled=False)

    with open_slide(path) as slide:
        thumbnail, l0_per_px = slide.read_thumbnail(200)

    assert thumbnail.shape == (150, 200, 3)
    assert l0_per_px == 10.0
    assert (thumbnail[:, :95] == 0).all()
    assert (thumbnail[:, 105:] == PINK_RGB).all()


def test_best_level_pyramid(slides_dir):
    # boxes.tiff has downsamples 1, 2, 4.016 and 8.086; at 0.25 µm/px level 2 is 1.004 µm/px.
    with open_slide(slides_dir / "openslide_fixtures" / "boxes.tiff", mpp=0.25) as slide:
        assert slide.level_count == 4
        assert slide.best_level_for_mpp(0.1) == 0
        assert slide.best_level_for_mpp(0.25) == 0
        assert slide.best_level_for_mpp(0.5) == 1
        assert slide.best_level_for_mpp(0.9) == 1
        assert slide.best_level_for_mpp(1.0) == 2
        assert slide.best_level_for_mpp(100.0) == 3


def test_best_level_rejects_nonpositive(cmu_path):
    with open_slide(cmu_path) as slide, pytest.raises(ValueError, match="target_mpp"):
        slide.best_level_for_mpp(0.0)


# Errors


@pytest.mark.parametrize("name", ["broken.svs", "openslide_fixtures/unopenable.tiff"])
def test_open_unopenable(slides_dir, name):
    with pytest.raises(SlideOpenError) as excinfo:
        open_slide(slides_dir / name)
    message = str(excinfo.value)
    assert Path(name).name in message
    assert "openslide: " in message
    assert "\n" not in message


def test_open_unopenable_gives_reason(slides_dir):
    with pytest.raises(SlideOpenError, match="Unsupported TIFF compression: 52479"):
        open_slide(slides_dir / "openslide_fixtures" / "unopenable.tiff")


def test_open_missing(tmp_path):
    with pytest.raises(SlideOpenError, match="not found: .*missing.svs"):
        open_slide(tmp_path / "missing.svs")


def test_open_directory(tmp_path):
    folder = tmp_path / "slide.mrxs.d"
    folder.mkdir()

    with pytest.raises(SlideOpenError, match="is a directory.*slide.mrxs.d"):
        open_slide(folder)


def test_read_unreadable(slides_dir):
    with open_slide(slides_dir / "openslide_fixtures" / "unreadable.svs") as slide:
        with pytest.raises(SlideReadError) as excinfo:
            slide.read_region((0, 0), 0, (16, 16))
    message = str(excinfo.value)
    assert "unreadable.svs" in message
    assert "level 0" in message
    assert "x=0, y=0" in message
    assert "\n" not in message


# Pickling and worker processes


def test_repr_shows_path_and_mpp(cmu_path):
    with open_slide(cmu_path) as slide:
        assert repr(slide) == f"SlideReader({str(cmu_path)!r}, mpp=0.499)"


def test_pickle_same_pixels(cmu_path):
    with open_slide(cmu_path) as slide:
        expected = slide.read_region((1000, 1500), 0, (128, 128))
        restored = pickle.loads(pickle.dumps(slide))

    with restored:
        assert isinstance(restored, SlideReader)
        assert restored.mpp == pytest.approx(0.499)
        assert np.array_equal(restored.read_region((1000, 1500), 0, (128, 128)), expected)


def test_pickle_keeps_mpp_override(tmp_path):
    path = _write_tiff(tmp_path / "no-unit.tif", _pink(100, 100), tiled=False, resolution=None, unit=None)

    with open_slide(path, mpp=0.3) as slide:
        restored = pickle.loads(pickle.dumps(slide))
    with restored:
        assert restored.mpp == 0.3


def test_spawn_worker_same_pixels(tmp_path):
    image = _random_rgb(700, 1000)
    path = _write_tiff(tmp_path / "random.tif", image, tiled=False, rowsperstrip=50, compression="zlib")

    with open_slide(path) as slide, multiprocessing.get_context("spawn").Pool(1) as pool:
        region = pool.apply(slide.read_region, ((100, 200), 0, (300, 150)))
    assert np.array_equal(region, image[200:350, 100:400])


def _read_and_send(slide: SlideReader, queue: multiprocessing.Queue) -> None:
    queue.put(slide.read_region((100, 200), 0, (300, 150)))


@pytest.mark.parametrize("tiled", [True, False], ids=["tiled", "stripped"])
def test_fork_inherited_reader(tmp_path, tiled):
    image = _random_rgb(700, 1000)
    path = _write_tiff(tmp_path / "random.tif", image, tiled=tiled, compression="zlib")
    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    with open_slide(path) as slide:
        slide.read_region((0, 0), 0, (10, 10))
        child = context.Process(target=_read_and_send, args=(slide, queue))
        child.start()
        region = queue.get(timeout=60)
        child.join(timeout=60)
        parent_region = slide.read_region((100, 200), 0, (300, 150))

    assert child.exitcode == 0
    assert np.array_equal(region, image[200:350, 100:400])
    assert np.array_equal(parent_region, region)
