"""MetaImage reading: header fields, pixel layout, spacing and broken files."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest

from midog.errors import SlideOpenError, SlideReadError, SlideResolutionError
from midog.io.metaimage import MetaImageSlide, mpp_from_spacing_mm, open_metaimage, read_metaimage_header
from tests.deploy.images import write_metaimage


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    # 40 rows, 60 columns: a transposed read would show up as a shape or value mismatch.
    return np.random.default_rng(0).integers(0, 256, size=(40, 60, 3), dtype=np.uint8)


def test_spacing_mm_to_mpp():
    assert mpp_from_spacing_mm(0.00025) == pytest.approx(0.25)


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zlib"])
def test_mha_pixels_round_trip(tmp_path, rgb, compressed):
    path = write_metaimage(tmp_path / "image.mha", rgb, compressed=compressed)

    with open_metaimage(path) as image:
        region = image.read_region((0, 0), 0, (60, 40))
    np.testing.assert_array_equal(region, rgb)


def test_mha_dimensions(tmp_path, rgb):
    with open_metaimage(write_metaimage(tmp_path / "image.mha", rgb)) as image:
        assert image.dimensions == (60, 40)


def test_mha_bounds_whole_image(tmp_path, rgb):
    with open_metaimage(write_metaimage(tmp_path / "image.mha", rgb)) as image:
        assert image.bounds == (0, 0, 60, 40)


def test_mha_spacing_gives_mpp(tmp_path, rgb):
    path = write_metaimage(tmp_path / "image.mha", rgb, spacing_mm=(0.000227, 0.000227))

    with open_metaimage(path) as image:
        assert image.mpp == pytest.approx(0.227)


def test_mha_element_size_fallback(tmp_path, rgb):
    path = write_metaimage(
        tmp_path / "image.mha", rgb, spacing_mm=None, extra_fields=(("ElementSize", "0.0005 0.0005"),)
    )

    with open_metaimage(path) as image:
        assert image.mpp == pytest.approx(0.5)


def test_mhd_with_data_file(tmp_path, rgb):
    path = write_metaimage(tmp_path / "image.mhd", rgb, data_file="image.raw")

    with open_metaimage(path) as image:
        np.testing.assert_array_equal(image.read_region((0, 0), 0, (60, 40)), rgb)


def test_mhd_header_size_minus_one(tmp_path, rgb):
    path = write_metaimage(
        tmp_path / "image.mhd", rgb, data_file="image.raw", extra_fields=(("HeaderSize", "-1"),)
    )
    raw = tmp_path / "image.raw"
    raw.write_bytes(b"skipped preamble" + raw.read_bytes())

    with open_metaimage(path) as image:
        np.testing.assert_array_equal(image.read_region((0, 0), 0, (60, 40)), rgb)


def test_mha_gray_becomes_rgb(tmp_path, rgb):
    gray = rgb[..., 0]
    with open_metaimage(write_metaimage(tmp_path / "gray.mha", gray)) as image:
        region = image.read_region((0, 0), 0, (60, 40))
    np.testing.assert_array_equal(region, np.repeat(gray[..., None], 3, axis=2))


def test_mha_rgba_composited_on_fill(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    with open_metaimage(write_metaimage(tmp_path / "rgba.mha", rgba)) as image:
        region = image.read_region((0, 0), 0, (2, 2), fill_rgb=(200, 100, 50))
    assert region[0, 0].tolist() == [10, 20, 30]
    assert region[1, 1].tolist() == [200, 100, 50]


def test_mha_depth_one_volume(tmp_path, rgb):
    path = write_metaimage(tmp_path / "volume.mha", rgb)
    text = (
        path.read_bytes()
        .replace(b"NDims = 2", b"NDims = 3")
        .replace(b"DimSize = 60 40", b"DimSize = 60 40 1")
    )
    text = text.replace(b"ElementSpacing = 0.00025 0.00025", b"ElementSpacing = 0.00025 0.00025 1")
    path.write_bytes(text)

    with open_metaimage(path) as image:
        np.testing.assert_array_equal(image.read_region((0, 0), 0, (60, 40)), rgb)


def test_region_past_edges_is_fill(tmp_path, rgb):
    with open_metaimage(write_metaimage(tmp_path / "image.mha", rgb)) as image:
        region = image.read_region((-5, 30), 0, (10, 20), fill_rgb=(1, 2, 3))
    np.testing.assert_array_equal(region[:10, 5:], rgb[30:40, 0:5])
    assert (region[:, :5] == (1, 2, 3)).all()
    assert (region[10:] == (1, 2, 3)).all()


def test_thumbnail_size(tmp_path, rgb):
    with open_metaimage(write_metaimage(tmp_path / "image.mha", rgb)) as image:
        thumbnail, l0_per_px = image.read_thumbnail(30)
    assert thumbnail.shape == (20, 30, 3)
    assert l0_per_px == pytest.approx(2.0)


def test_level_other_than_zero_rejected(tmp_path, rgb):
    with open_metaimage(write_metaimage(tmp_path / "image.mha", rgb)) as image, pytest.raises(ValueError):
        image.read_region((0, 0), 1, (4, 4))


def test_pickle_reopens(tmp_path, rgb):
    with open_metaimage(write_metaimage(tmp_path / "image.mha", rgb), mpp=0.3) as image:
        copy = pickle.loads(pickle.dumps(image))
    assert copy.mpp == 0.3
    np.testing.assert_array_equal(copy.read_region((0, 0), 0, (60, 40)), rgb)


def test_closed_read_rejected(tmp_path, rgb):
    image = open_metaimage(write_metaimage(tmp_path / "image.mha", rgb))
    image.close()
    with pytest.raises(ValueError, match="closed"):
        image.read_region((0, 0), 0, (4, 4))


def test_header_fields_kept(tmp_path, rgb):
    header = read_metaimage_header(write_metaimage(tmp_path / "image.mha", rgb, compressed=True))
    assert header.fields["CompressedData"] == "True"


# Pixel size


def test_missing_spacing_raises(tmp_path, rgb):
    path = write_metaimage(tmp_path / "nospacing.mha", rgb, spacing_mm=None)

    with pytest.raises(SlideResolutionError, match="nospacing.mha.*no ElementSpacing"):
        open_metaimage(path)


def test_unit_spacing_rejected(tmp_path, rgb):
    # SimpleITK writes ElementSpacing = 1 1 (1 mm/px) when the pixel size is unknown.
    path = write_metaimage(tmp_path / "unit.mha", rgb, spacing_mm=(1.0, 1.0))

    with pytest.raises(SlideResolutionError, match="1000 µm/px"):
        open_metaimage(path)


def test_mpp_argument_overrides(tmp_path, rgb):
    path = write_metaimage(tmp_path / "unit.mha", rgb, spacing_mm=(1.0, 1.0))

    with open_metaimage(path, mpp=0.25) as image:
        assert image.mpp == 0.25


def test_non_square_spacing_warns(tmp_path, rgb, caplog):
    path = write_metaimage(tmp_path / "image.mha", rgb, spacing_mm=(0.00025, 0.0003))

    with caplog.at_level(logging.WARNING, logger="midog.io.metaimage"), open_metaimage(path) as image:
        assert image.mpp == pytest.approx(0.25)
    assert "non-square pixels" in caplog.text


# Broken and unsupported files


def test_missing_file(tmp_path):
    with pytest.raises(SlideOpenError, match="not found.*absent.mha"):
        open_metaimage(tmp_path / "absent.mha")


def test_not_a_metaimage(tmp_path):
    path = tmp_path / "noise.mha"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())

    with pytest.raises(SlideOpenError, match="noise.mha"):
        open_metaimage(path)


def test_text_without_data_file_line(tmp_path):
    path = tmp_path / "header.mha"
    path.write_text("ObjectType = Image\nNDims = 2\n")

    with pytest.raises(SlideOpenError, match="no ElementDataFile"):
        open_metaimage(path)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (b"ElementType = MET_UCHAR", b"ElementType = MET_USHORT", "MET_USHORT"),
        (b"ElementNumberOfChannels = 3", b"ElementNumberOfChannels = 2", "ElementNumberOfChannels = 2"),
        (b"NDims = 2", b"NDims = 4", "expected a 2D image"),
        (b"BinaryData = True", b"BinaryData = False", "BinaryData = False"),
        (b"ElementDataFile = LOCAL", b"ElementDataFile = LIST", "ElementDataFile = 'LIST'"),
        (b"DimSize = 60 40", b"DimSize = 60 forty", "DimSize"),
    ],
    ids=["ushort", "two-channels", "4d", "text-data", "file-list", "bad-size"],
)
def test_unsupported_header(tmp_path, rgb, old, new, message):
    path = write_metaimage(tmp_path / "image.mha", rgb)
    path.write_bytes(path.read_bytes().replace(old, new, 1))

    with pytest.raises(SlideOpenError, match=message):
        open_metaimage(path)


def test_three_d_volume_rejected(tmp_path, rgb):
    path = write_metaimage(tmp_path / "volume.mha", rgb)
    path.write_bytes(
        path.read_bytes()
        .replace(b"NDims = 2", b"NDims = 3")
        .replace(b"DimSize = 60 40", b"DimSize = 60 20 2")
    )

    with pytest.raises(SlideOpenError, match="3D volume"):
        open_metaimage(path)


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zlib"])
def test_truncated_data(tmp_path, rgb, compressed):
    path = write_metaimage(tmp_path / "cut.mha", rgb, compressed=compressed)
    path.write_bytes(path.read_bytes()[:-100])

    with pytest.raises(SlideReadError, match="cut.mha"):
        open_metaimage(path)


def test_missing_data_file(tmp_path, rgb):
    path = write_metaimage(tmp_path / "image.mhd", rgb, data_file="image.raw")
    (tmp_path / "image.raw").unlink()

    with pytest.raises(SlideReadError, match="image.raw"):
        open_metaimage(path)


def test_resolution_checked_before_pixels(tmp_path, rgb):
    # A file without spacing raises SlideResolutionError, not the read error of its truncated data.
    path = write_metaimage(tmp_path / "cut.mha", rgb, spacing_mm=None)
    path.write_bytes(path.read_bytes()[:-100])

    with pytest.raises(SlideResolutionError):
        MetaImageSlide(path)
