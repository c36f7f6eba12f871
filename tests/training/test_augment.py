"""Tests for stain and colour augmentation on synthetic tiles and real H&E images."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from midog.training import augment
from midog.training.augment import (
    OD_MAX,
    hed_from_rgb,
    hed_jitter,
    od_from_rgb,
    rgb_from_hed,
)

NUM_COPIES = 50
CROP_PX = 256
# Tolerance on a mean stain OD change for uint8 rounding and for pixels clipped at white or black.
MEAN_OD_TOLERANCE = 0.01


def small_tile() -> np.ndarray:
    """Return a 4x4 RGB uint8 tile with black, white, near-black, near-white and mid-tone pixels."""
    pixels = [
        (0, 0, 0), (255, 255, 255), (5, 5, 5), (250, 250, 250),
        (128, 128, 128), (200, 100, 180), (90, 40, 140), (230, 160, 200),
        (255, 0, 0), (0, 255, 0), (0, 0, 255), (64, 192, 32),
        (180, 120, 170), (140, 70, 150), (245, 230, 240), (20, 10, 40),
    ]  # fmt: skip
    return np.array(pixels, dtype=np.uint8).reshape(4, 4, 3)


def crop_centre(image: np.ndarray, size_px: int) -> np.ndarray:
    top = max((image.shape[0] - size_px) // 2, 0)
    left = max((image.shape[1] - size_px) // 2, 0)
    return np.ascontiguousarray(image[top : top + size_px, left : left + size_px])


@pytest.fixture(scope="module")
def stain_images(shared_data: Path) -> dict[str, np.ndarray]:
    """Return real H&E images as (256, 256, 3) uint8 RGB centre crops, keyed by name.

    The StainTools strip contains five 360x360 images side by side; each becomes its own entry.
    """
    folder = shared_data / "stain"
    images: dict[str, np.ndarray] = {}
    for name in ("torchstain/source.png", "torchstain/target.png", "tiatoolbox/target_image.png"):
        rgb = np.asarray(Image.open(folder / name).convert("RGB"))
        images[name] = crop_centre(rgb, CROP_PX)

    strip = np.asarray(Image.open(folder / "staintools/normalize_before.png").convert("RGB"))
    tile_px = strip.shape[0]
    for index in range(strip.shape[1] // tile_px):
        tile = strip[:, index * tile_px : (index + 1) * tile_px]
        images[f"staintools/normalize_before.png#{index}"] = crop_centre(tile, CROP_PX)
    return images


# ---------------------------------------------------------------------------
# Colour deconvolution and HED jitter (numpy only)
# ---------------------------------------------------------------------------


def test_od_white_black():
    od = od_from_rgb(np.array([[255, 0, 128]], dtype=np.uint8))
    assert od[0, 0] == 0.0
    assert od[0, 1] == pytest.approx(OD_MAX)
    assert 0.0 < od[0, 2] < OD_MAX


def test_hed_round_trip_small_tile():
    tile = small_tile()
    restored = rgb_from_hed(hed_from_rgb(tile))
    assert np.abs(restored.astype(int) - tile).max() <= 1


def test_hed_round_trip_all_grey_levels():
    levels = np.arange(256, dtype=np.uint8)
    image = np.stack([levels, levels[::-1], np.roll(levels, 85)], axis=-1).reshape(16, 16, 3)
    restored = rgb_from_hed(hed_from_rgb(image))
    assert np.abs(restored.astype(int) - image).max() <= 1


def test_hed_jitter_identity():
    tile = small_tile()
    out = hed_jitter(tile, scale=(1.0, 1.0, 1.0), shift=(0.0, 0.0, 0.0))
    assert out.dtype == np.uint8
    assert np.abs(out.astype(int) - tile).max() <= 1


def test_hed_white_is_zero():
    hed = hed_from_rgb(np.full((2, 2, 3), 255, dtype=np.uint8))
    assert np.abs(hed).max() < 1e-6


def test_rgb_from_hed_clips_out_of_range():
    hed = np.array([[[-5.0, -5.0, -5.0], [50.0, 50.0, 50.0]]], dtype=np.float32)
    rgb = rgb_from_hed(hed)
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[0, 1].tolist() == [0, 0, 0]


@pytest.mark.parametrize("corner", list(itertools.product((0.95, 1.05), (-0.05, 0.05))))
def test_hed_jitter_no_wraparound(corner):
    """At the corners of scale 1 +- 0.05 and shift +- 0.05, bright stays bright and dark stays dark."""
    scale_value, shift_value = corner
    tile = small_tile()
    out = hed_jitter(tile, scale=[scale_value] * 3, shift=[shift_value] * 3).astype(int)
    assert out.dtype.kind == "i"
    assert out.min() >= 0
    assert out.max() <= 255
    assert out[0, 1].min() >= 150, f"white became {out[0, 1]}"
    assert out[0, 3].min() >= 150, f"near-white became {out[0, 3]}"
    assert out[0, 0].max() <= 60, f"black became {out[0, 0]}"
    assert out[0, 2].max() <= 60, f"near-black became {out[0, 2]}"


def test_hed_jitter_strong_shift_saturates():
    """A shift far past the OD range saturates at black or white instead of wrapping around."""
    tile = small_tile()
    darker = hed_jitter(tile, scale=(1.0, 1.0, 1.0), shift=(5.0, 5.0, 5.0))
    lighter = hed_jitter(tile, scale=(1.0, 1.0, 1.0), shift=(-5.0, -5.0, -5.0))
    assert darker.max() == 0
    assert lighter.min() == 255


def test_hed_jitter_changes_stain():
    tile = small_tile()
    out = hed_jitter(tile, scale=(1.05, 1.0, 1.0), shift=(0.05, 0.0, 0.0))
    assert not np.array_equal(out, tile)


def test_hed_jitter_rejects_float_image():
    with pytest.raises(TypeError, match="uint8"):
        hed_jitter(small_tile().astype(np.float32), (1, 1, 1), (0, 0, 0))


def test_hed_jitter_rejects_gray_image():
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        hed_jitter(np.zeros((4, 4), dtype=np.uint8), (1, 1, 1), (0, 0, 0))


def test_hed_jitter_rejects_two_scales():
    with pytest.raises(ValueError, match="scale must have shape"):
        hed_jitter(small_tile(), (1.0, 1.0), (0, 0, 0))


def test_hed_jitter_rejects_nan_shift():
    with pytest.raises(ValueError, match="shift must be finite"):
        hed_jitter(small_tile(), (1, 1, 1), (0.0, float("nan"), 0.0))


def test_rgb_from_hed_rejects_nan():
    hed = np.zeros((2, 2, 3), dtype=np.float32)
    hed[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        rgb_from_hed(hed)


# ---------------------------------------------------------------------------
# HEDJitter (albumentations)
# ---------------------------------------------------------------------------


def test_module_without_albumentations():
    """Without albumentations the module imports, numpy functions work and transforms name the fix."""
    code = (
        "import sys\n"
        "sys.modules['albumentations'] = None\n"  # makes 'import albumentations' raise ImportError
        "import numpy as np\n"
        "from midog.training import augment\n"
        "print(augment.hed_jitter(np.zeros((2, 2, 3), np.uint8), (1, 1, 1), (0, 0, 0)).shape)\n"
        "for build in (augment.HEDJitter, augment.MacenkoPerturb, augment.build_stain_augmentation):\n"
        "    try:\n"
        "        build()\n"
        "    except ImportError as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    )
    repo_root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=60, check=False
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    assert lines[0] == "(2, 2, 3)"
    assert len(lines) == 4, result.stdout
    expected = (
        "ImportError albumentations is not installed; "
        'install the training extra with pip install "midog[train]"'
    )
    for line in lines[1:]:
        assert line == expected


@pytest.fixture(scope="module")
def albumentations():
    return pytest.importorskip("albumentations", reason="albumentations (training extra) is not installed")


def run_hed_jitter(albumentations, image: np.ndarray, seed: int, **kwargs) -> np.ndarray:
    pipeline = albumentations.Compose([augment.HEDJitter(p=1.0, **kwargs)], seed=seed)
    return pipeline(image=image)["image"]


def test_hed_jitter_transform_range(albumentations):
    tile = small_tile()
    for seed in range(20):
        out = run_hed_jitter(albumentations, tile, seed, scale_limit=0.05, shift_limit=0.05).astype(int)
        assert out.min() >= 0
        assert out.max() <= 255
        assert out[0, 3].min() >= 150, f"seed {seed}: near-white became {out[0, 3]}"
        assert out[0, 2].max() <= 60, f"seed {seed}: near-black became {out[0, 2]}"


def test_hed_jitter_transform_dtype(albumentations):
    out = run_hed_jitter(albumentations, small_tile(), seed=0)
    assert out.dtype == np.uint8
    assert out.shape == (4, 4, 3)


def test_hed_jitter_transform_zero_limits(albumentations):
    tile = small_tile()
    out = run_hed_jitter(albumentations, tile, seed=3, scale_limit=0.0, shift_limit=0.0)
    assert np.abs(out.astype(int) - tile).max() <= 1


def test_hed_jitter_same_seed(albumentations, stain_images):
    image = stain_images["tiatoolbox/target_image.png"]
    first = run_hed_jitter(albumentations, image, seed=7)
    second = run_hed_jitter(albumentations, image, seed=7)
    assert np.array_equal(first, second)


def test_hed_jitter_other_seed(albumentations, stain_images):
    image = stain_images["tiatoolbox/target_image.png"]
    first = run_hed_jitter(albumentations, image, seed=7)
    second = run_hed_jitter(albumentations, image, seed=8)
    assert not np.array_equal(first, second)


def test_hed_jitter_bgr_matches_rgb(albumentations, stain_images):
    image = stain_images["torchstain/source.png"]
    from_rgb = run_hed_jitter(albumentations, image, seed=5)
    bgr = np.ascontiguousarray(image[..., ::-1])
    from_bgr = run_hed_jitter(albumentations, bgr, seed=5, channel_order="bgr")
    assert np.array_equal(from_bgr[..., ::-1], from_rgb)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale_limit": 1.0}, "scale_limit"),
        ({"scale_limit": -0.1}, "scale_limit"),
        ({"shift_limit": float("inf")}, "shift_limit"),
        ({"p": 1.5}, "p must be"),
        ({"channel_order": "hsv"}, "channel_order"),
    ],
)
def test_hed_jitter_rejects_bad_args(albumentations, kwargs, message):
    with pytest.raises(ValueError, match=message):
        augment.HEDJitter(**kwargs)


def mean_stain_od(image: np.ndarray) -> np.ndarray:
    """Return the mean H, E and DAB concentration of an RGB image, (3,) float64, decadic OD."""
    return hed_from_rgb(image).reshape(-1, 3).mean(axis=0, dtype=np.float64)


def test_hed_jitter_mean_od_bounds(albumentations, stain_images):
    """Over many copies the mean H and E OD change stays within scale_limit * |c| + shift_limit."""
    scale_limit, shift_limit = 0.05, 0.05
    pipeline = albumentations.Compose(
        [augment.HEDJitter(scale_limit=scale_limit, shift_limit=shift_limit, p=1.0)], seed=11
    )
    for name, image in stain_images.items():
        hed = hed_from_rgb(image).reshape(-1, 3).astype(np.float64)
        bound = scale_limit * np.abs(hed).mean(axis=0) + shift_limit + MEAN_OD_TOLERANCE
        changes = np.array(
            [mean_stain_od(pipeline(image=image)["image"]) - hed.mean(axis=0) for _ in range(NUM_COPIES)]
        )
        print(
            f"{name}: H change [{changes[:, 0].min():+.4f}, {changes[:, 0].max():+.4f}] "
            f"bound {bound[0]:.4f}, E change [{changes[:, 1].min():+.4f}, {changes[:, 1].max():+.4f}] "
            f"bound {bound[1]:.4f}"
        )
        for stain in (0, 1):
            assert np.abs(changes[:, stain]).max() <= bound[stain], f"{name} stain {stain}"
            # The transform must use a good part of its range, or the bound above proves nothing.
            assert np.abs(changes[:, stain]).max() >= 0.3 * shift_limit, f"{name} stain {stain}"


# ---------------------------------------------------------------------------
# Macenko stain matrix and MacenkoPerturb
# ---------------------------------------------------------------------------


def white_patch() -> np.ndarray:
    return np.full((128, 128, 3), 255, dtype=np.uint8)


def pink_square_patch() -> np.ndarray:
    """Return a white 128x128 patch with one 20x20 eosin-pink square, about 2% tissue."""
    patch = white_patch()
    patch[54:74, 54:74] = (230, 150, 200)
    return patch


def five_pixel_patch() -> np.ndarray:
    """Return a white 128x128 patch with five stained pixels of different H&E mixtures."""
    patch = white_patch()
    colours = [(120, 60, 160), (90, 40, 140), (200, 100, 180), (160, 90, 170), (70, 50, 130)]
    for (row, col), colour in zip([(1, 5), (20, 30), (40, 77), (60, 90), (100, 120)], colours):
        patch[row, col] = colour
    return patch


LITTLE_TISSUE = {"white": white_patch, "pink_square": pink_square_patch, "five_pixels": five_pixel_patch}


@pytest.mark.parametrize("name", list(LITTLE_TISSUE))
def test_macenko_little_tissue_reference(name):
    stains, estimated = augment.macenko_stain_matrix(LITTLE_TISSUE[name]())
    assert estimated is False
    assert np.array_equal(stains, augment.MACENKO_REFERENCE_STAINS)


def test_macenko_one_stain_reference():
    """Half the patch in one uniform colour is enough tissue but only one stain direction."""
    patch = white_patch()
    patch[:64] = (230, 150, 200)
    stains, estimated = augment.macenko_stain_matrix(patch)
    assert estimated is False
    assert np.all(np.isfinite(stains))


def test_macenko_reference_unit_rows():
    norms = np.linalg.norm(augment.MACENKO_REFERENCE_STAINS, axis=1)
    assert np.allclose(norms, 1.0)


def test_macenko_real_images_estimated(stain_images):
    for name, image in stain_images.items():
        stains, estimated = augment.macenko_stain_matrix(image)
        assert estimated, name
        assert stains.shape == (2, 3), name
        assert np.all(np.isfinite(stains)), name
        assert stains.min() >= 0.0, name
        assert np.allclose(np.linalg.norm(stains, axis=1), 1.0), name
        # Haematoxylin (row 0) absorbs more red than eosin (row 1).
        assert stains[0, 0] > stains[1, 0], name


def test_macenko_tiatoolbox_near_reference(stain_images):
    """On a typical H&E tile the estimate lies within 15 degrees of the reference vectors."""
    stains, _ = augment.macenko_stain_matrix(stain_images["tiatoolbox/target_image.png"])
    cosines = np.sum(stains * augment.MACENKO_REFERENCE_STAINS, axis=1)
    angles_deg = np.degrees(np.arccos(np.clip(cosines, -1.0, 1.0)))
    print(f"tiatoolbox stain vectors {stains.round(3).tolist()}, angles to reference {angles_deg.round(1)}")
    assert angles_deg.max() < 15.0


def test_macenko_rejects_percentile():
    with pytest.raises(ValueError, match="percentile"):
        augment.macenko_stain_matrix(white_patch(), percentile=50.0)


def test_macenko_rejects_min_tissue_pixels():
    with pytest.raises(ValueError, match="min_tissue_pixels"):
        augment.macenko_stain_matrix(white_patch(), min_tissue_pixels=2.5)


def run_macenko(albumentations, image: np.ndarray, seed: int, **kwargs) -> np.ndarray:
    pipeline = albumentations.Compose([augment.MacenkoPerturb(p=1.0, **kwargs)], seed=seed)
    return pipeline(image=image)["image"]


def test_macenko_perturb_little_tissue_unchanged(albumentations):
    transform = augment.MacenkoPerturb(p=1.0)
    pipeline = albumentations.Compose([transform], seed=0)
    for name, make_patch in LITTLE_TISSUE.items():
        patch = make_patch()
        out = pipeline(image=patch)["image"]
        assert np.array_equal(out, patch), name
    assert transform.num_fallbacks == 3
    assert transform.num_calls == 3


def test_macenko_perturb_little_tissue_reference(albumentations):
    """With on_failure='reference' the little-tissue patches are perturbed, finite and uint8."""
    transform = augment.MacenkoPerturb(on_failure="reference", shift_limit=0.1, p=1.0)
    pipeline = albumentations.Compose([transform], seed=0)
    changed = 0
    for name, make_patch in LITTLE_TISSUE.items():
        patch = make_patch()
        out = pipeline(image=patch)["image"]
        assert out.dtype == np.uint8, name
        assert out.shape == patch.shape, name
        changed += int(not np.array_equal(out, patch))
    assert transform.num_fallbacks == 3
    assert changed == 3


def test_macenko_perturb_zero_limits(albumentations, stain_images):
    image = stain_images["tiatoolbox/target_image.png"]
    out = run_macenko(albumentations, image, seed=1, angle_limit=0.0, scale_limit=0.0, shift_limit=0.0)
    assert np.abs(out.astype(int) - image).max() <= 1


def test_macenko_perturb_changes_image(albumentations, stain_images):
    image = stain_images["tiatoolbox/target_image.png"]
    out = run_macenko(albumentations, image, seed=1)
    assert np.abs(out.astype(int) - image).mean() > 0.5


def test_macenko_perturb_same_seed(albumentations, stain_images):
    image = stain_images["torchstain/target.png"]
    first = run_macenko(albumentations, image, seed=4)
    second = run_macenko(albumentations, image, seed=4)
    assert np.array_equal(first, second)


def test_macenko_perturb_other_seed(albumentations, stain_images):
    image = stain_images["torchstain/target.png"]
    first = run_macenko(albumentations, image, seed=4)
    second = run_macenko(albumentations, image, seed=5)
    assert not np.array_equal(first, second)


def test_macenko_perturb_bgr_matches_rgb(albumentations, stain_images):
    image = stain_images["torchstain/source.png"]
    from_rgb = run_macenko(albumentations, image, seed=2)
    bgr = np.ascontiguousarray(image[..., ::-1])
    from_bgr = run_macenko(albumentations, bgr, seed=2, channel_order="bgr")
    assert np.array_equal(from_bgr[..., ::-1], from_rgb)


def test_macenko_perturb_rejects_on_failure(albumentations):
    with pytest.raises(ValueError, match="on_failure"):
        augment.MacenkoPerturb(on_failure="skip")


def test_macenko_perturb_mean_od_bounds(albumentations, stain_images):
    """Without rotation the mean H and E OD change stays within scale_limit * |c| + shift_limit.

    The bound is checked in the image's own Macenko stain basis, where the perturbation acts.
    """
    scale_limit, shift_limit = 0.1, 0.05
    transform = augment.MacenkoPerturb(
        angle_limit=0.0, scale_limit=scale_limit, shift_limit=shift_limit, p=1.0
    )
    pipeline = albumentations.Compose([transform], seed=12)
    for name, image in stain_images.items():
        stains, _ = augment.macenko_stain_matrix(image)
        unmix = np.linalg.pinv(stains)  # [3, 2]
        concentrations = od_from_rgb(image).reshape(-1, 3).astype(np.float64) @ unmix
        bound = scale_limit * np.abs(concentrations).mean(axis=0) + shift_limit + MEAN_OD_TOLERANCE
        changes = []
        for _ in range(NUM_COPIES):
            out_od = od_from_rgb(pipeline(image=image)["image"]).reshape(-1, 3).astype(np.float64)
            changes.append((out_od @ unmix).mean(axis=0) - concentrations.mean(axis=0))
        changes = np.array(changes)
        print(
            f"{name}: H change [{changes[:, 0].min():+.4f}, {changes[:, 0].max():+.4f}] "
            f"bound {bound[0]:.4f}, E change [{changes[:, 1].min():+.4f}, {changes[:, 1].max():+.4f}] "
            f"bound {bound[1]:.4f}"
        )
        for stain in (0, 1):
            assert np.abs(changes[:, stain]).max() <= bound[stain], f"{name} stain {stain}"
            assert np.abs(changes[:, stain]).max() >= 0.3 * shift_limit, f"{name} stain {stain}"


# ---------------------------------------------------------------------------
# Colour transforms keep geometry; the full pipeline
# ---------------------------------------------------------------------------

GRID_PERIOD_PX = 32
GRID_OFFSET_PX = 5  # lines at 5-6, 37-38, ...: not symmetric, so a flip or rotation moves them
GRID_LINE_PX = (GRID_OFFSET_PX, GRID_OFFSET_PX + 1)  # offsets, within one period, of the 2 px line


def with_black_grid(image: np.ndarray) -> np.ndarray:
    """Return a copy of ``image`` with 2 px black grid lines every 32 px, starting at 5 px."""
    gridded = image.copy()
    for start in range(GRID_OFFSET_PX, image.shape[0], GRID_PERIOD_PX):
        gridded[start : start + 2] = 0
    for start in range(GRID_OFFSET_PX, image.shape[1], GRID_PERIOD_PX):
        gridded[:, start : start + 2] = 0
    return gridded


def grid_offsets(image: np.ndarray) -> tuple[int, int]:
    """Return the row and column offset, within one grid period, of the darkest line of pixels."""
    brightness = image.astype(np.float64).sum(axis=2)
    period = GRID_PERIOD_PX
    rows = brightness.mean(axis=1)[: image.shape[0] // period * period].reshape(-1, period).mean(axis=0)
    cols = brightness.mean(axis=0)[: image.shape[1] // period * period].reshape(-1, period).mean(axis=0)
    return int(np.argmin(rows)), int(np.argmin(cols))


def colour_only_pipeline(seed: int):
    return augment.build_stain_augmentation(
        hed_p=1.0,
        macenko_p=1.0,
        flip_p=0.0,
        rotate90_p=0.0,
        hsv_p=1.0,
        brightness_contrast_p=1.0,
        blur_p=1.0,
        jpeg_p=1.0,
        seed=seed,
    )


def test_colour_transforms_keep_grid(albumentations, stain_images):
    pipeline = colour_only_pipeline(seed=21)
    for name, image in stain_images.items():
        gridded = with_black_grid(image)
        for copy in range(5):
            out = pipeline(image=gridded)["image"]
            row_offset, col_offset = grid_offsets(out)
            assert out.shape == gridded.shape, name
            assert row_offset in GRID_LINE_PX, f"{name} copy {copy}"
            assert col_offset in GRID_LINE_PX, f"{name} copy {copy}"


def test_stain_transforms_keep_grid_pixels(albumentations, stain_images):
    """HED jitter and Macenko perturbation keep black grid pixels black, pixel by pixel."""
    pipeline = albumentations.Compose(
        [augment.HEDJitter(p=1.0), augment.MacenkoPerturb(on_failure="reference", p=1.0)], seed=22
    )
    for name, image in stain_images.items():
        gridded = with_black_grid(image)
        grid = gridded.max(axis=2) == 0
        out = pipeline(image=gridded)["image"]
        assert out[grid].max() <= 40, name


def test_flip_moves_grid(albumentations, stain_images):
    """The grid check above can fail: a horizontal flip moves the column offset."""
    pipeline = albumentations.Compose([albumentations.HorizontalFlip(p=1.0)], seed=0)
    gridded = with_black_grid(stain_images["tiatoolbox/target_image.png"])
    row_offset, col_offset = grid_offsets(pipeline(image=gridded)["image"])
    assert row_offset in GRID_LINE_PX
    assert col_offset not in GRID_LINE_PX


def test_pipeline_same_seed(albumentations, stain_images):
    image = stain_images["torchstain/source.png"]
    first = augment.build_stain_augmentation(macenko_p=0.5, seed=3)(image=image)["image"]
    second = augment.build_stain_augmentation(macenko_p=0.5, seed=3)(image=image)["image"]
    assert np.array_equal(first, second)


def test_pipeline_other_seed(albumentations, stain_images):
    image = stain_images["torchstain/source.png"]
    first = augment.build_stain_augmentation(macenko_p=0.5, seed=3)(image=image)["image"]
    second = augment.build_stain_augmentation(macenko_p=0.5, seed=4)(image=image)["image"]
    assert not np.array_equal(first, second)


def test_pipeline_moves_boxes(albumentations):
    """With bbox_params, a flip moves boxes together with the image."""
    image = np.full((64, 64, 3), 255, dtype=np.uint8)
    pipeline = augment.build_stain_augmentation(
        hed_p=0.0,
        flip_p=1.0,
        rotate90_p=0.0,
        hsv_p=0.0,
        brightness_contrast_p=0.0,
        blur_p=0.0,
        jpeg_p=0.0,
        bbox_params=albumentations.BboxParams(format="pascal_voc", label_fields=["labels"]),
        seed=0,
    )
    out = pipeline(image=image, bboxes=[(0.0, 0.0, 10.0, 20.0)], labels=[1])
    # Horizontal then vertical flip of (0, 0, 10, 20) in a 64x64 image.
    assert np.allclose(out["bboxes"][0], (54.0, 44.0, 64.0, 64.0))


def test_pipeline_zero_probabilities(albumentations, stain_images):
    image = stain_images["torchstain/target.png"]
    pipeline = augment.build_stain_augmentation(
        hed_p=0.0,
        flip_p=0.0,
        rotate90_p=0.0,
        hsv_p=0.0,
        brightness_contrast_p=0.0,
        blur_p=0.0,
        jpeg_p=0.0,
        seed=0,
    )
    assert np.array_equal(pipeline(image=image)["image"], image)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"jpeg_p": 1.2}, "jpeg_p"),
        ({"jpeg_quality_range": (0, 90)}, "jpeg_quality_range"),
        ({"blur_limit": (4, 5)}, "blur_limit"),
    ],
)
def test_pipeline_rejects_bad_args(albumentations, kwargs, message):
    with pytest.raises(ValueError, match=message):
        augment.build_stain_augmentation(**kwargs)
