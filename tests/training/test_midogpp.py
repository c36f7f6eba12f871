"""MIDOG++ patch sampling, the patch dataset, its worker safety, the EMA hook and a tiny training.

The sampling shares are measured on the real MIDOG++ JSON and domains table. Pixels come
from small TIFFs made by ``midogpp_synthetic``: real images' sizes and cell centres
divided by 4, figures drawn as dark discs and imposters as paler discs.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mmdet")

from midog.errors import AnnotationError, MidogError
from midog.io.annotations import read_annotations
from midog.training.sampling import PatchSampler, max_jitter_px, patch_boxes
from tests.training.midogpp_synthetic import pick_images, write_scaled_midogpp

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "tests" / "rtmdet_s_tiny_midogpp.py"
FULL_CONFIG = REPO / "configs" / "rtmdet_s_midogpp.py"

NUM_CHOICES = 10_000
# Largest allowed difference between a measured share and its configured weight.
SHARE_TOLERANCE = 0.03


@pytest.fixture(scope="module")
def midogpp_dir(shared_data: Path) -> Path:
    return shared_data / "midogpp"


@pytest.fixture(scope="module")
def real_tables(midogpp_dir: Path):
    annotations, images = read_annotations(
        midogpp_dir / "MIDOG++.json", domains_csv=midogpp_dir / "datasets_xvalidation.csv"
    )
    return annotations, images[images["labelled"]]


@pytest.fixture(scope="module")
def scaled_set(midogpp_dir: Path, tmp_path_factory) -> tuple[Path, Path, list[int]]:
    """One real image per tumour type, scaled down 4 times, as TIFFs with their MIDOG++ JSON."""
    image_ids = pick_images(midogpp_dir / "MIDOG++.json")
    images_dir, annotation_file = write_scaled_midogpp(
        midogpp_dir / "MIDOG++.json", image_ids, tmp_path_factory.mktemp("scaled")
    )
    return images_dir, annotation_file, image_ids


def _shares(values: list[str]) -> dict[str, float]:
    counts = Counter(values)
    return {key: count / len(values) for key, count in counts.items()}


def _dataset(images_dir: Path, annotation_file: Path, **kwargs):
    from midog.training.midogpp import MidogppPatchDataset

    settings = dict(patch_size=256, box_size_px=32, length=1000, seed=3)
    settings.update(kwargs)
    return MidogppPatchDataset(images_dir, annotation_file, **settings)


# ---------------------------------------------------------------------------
# Patch choice on the real MIDOG++ JSON, without pixels
# ---------------------------------------------------------------------------


def test_sampler_uniform_domain_shares(real_tables):
    annotations, images = real_tables
    sampler = PatchSampler(images, annotations, (1920, 1280), jitter_px=600, seed=0)
    shares = _shares([sampler.choose(i).domain for i in range(NUM_CHOICES)])
    assert len(shares) == 7
    for domain, share in shares.items():
        assert abs(share - 1 / 7) <= SHARE_TOLERANCE, domain


def test_sampler_weighted_domain_shares(real_tables):
    annotations, images = real_tables
    weights = {
        "human breast cancer": 4.0,
        "canine lung cancer": 1.0,
        "canine lymphosarcoma": 1.0,
        "canine cutaneous mast cell tumor": 2.0,
        "human neuroendocrine tumor": 1.0,
        "canine soft tissue sarcoma": 0.5,
        "human melanoma": 0.5,
    }
    sampler = PatchSampler(images, annotations, (1920, 1280), domain_weights=weights, jitter_px=600, seed=1)
    shares = _shares([sampler.choose(i).domain for i in range(NUM_CHOICES)])
    total = sum(weights.values())
    for domain, weight in weights.items():
        assert abs(shares[domain] - weight / total) <= SHARE_TOLERANCE, domain


def test_sampler_default_kind_shares(real_tables):
    annotations, images = real_tables
    sampler = PatchSampler(images, annotations, (1920, 1280), jitter_px=600, seed=2)
    shares = _shares([sampler.choose(i).kind for i in range(NUM_CHOICES)])
    assert abs(shares["mitotic figure"] - 0.5) <= SHARE_TOLERANCE
    assert abs(shares["imposter"] - 0.25) <= SHARE_TOLERANCE
    assert abs(shares["random"] - 0.25) <= SHARE_TOLERANCE


def test_sampler_weighted_kind_shares(real_tables):
    annotations, images = real_tables
    weights = {"mitotic figure": 0.2, "imposter": 0.7, "random": 0.1}
    sampler = PatchSampler(
        images, annotations, (1920, 1280), patch_kind_weights=weights, jitter_px=600, seed=3
    )
    shares = _shares([sampler.choose(i).kind for i in range(NUM_CHOICES)])
    for kind, weight in weights.items():
        assert abs(shares[kind] - weight) <= SHARE_TOLERANCE, kind


def test_sampler_kind_shares_per_domain(real_tables):
    annotations, images = real_tables
    sampler = PatchSampler(images, annotations, (1920, 1280), jitter_px=600, seed=4)
    choices = [sampler.choose(i) for i in range(NUM_CHOICES)]
    for domain in sampler.domains:
        kinds = [c.kind for c in choices if c.domain == domain]
        # About 1,430 choices per domain: the binomial standard error of a 0.5 share is 1.3 points.
        assert abs(_shares(kinds)["mitotic figure"] - 0.5) <= 0.05, domain


def test_sampler_same_index_same_patch(real_tables):
    annotations, images = real_tables
    first = PatchSampler(images, annotations, (1920, 1280), jitter_px=600, seed=5)
    second = PatchSampler(images, annotations, (1920, 1280), jitter_px=600, seed=5)
    assert [first.choose(i) for i in range(200)] == [second.choose(i) for i in reversed(range(200))][::-1]


def test_sampler_seed_changes_patches(real_tables):
    annotations, images = real_tables
    first = PatchSampler(images, annotations, (1920, 1280), jitter_px=600, seed=5)
    second = PatchSampler(images, annotations, (1920, 1280), jitter_px=600, seed=6)
    assert [first.choose(i) for i in range(50)] != [second.choose(i) for i in range(50)]


def test_sampler_centred_cell_inside_patch(real_tables):
    annotations, images = real_tables
    sampler = PatchSampler(images, annotations, (1920, 1280), jitter_px=600, seed=7)
    offsets = []
    for i in range(2000):
        choice = sampler.choose(i)
        if choice.l0_target_xy is None:
            continue
        width, height = sampler.image_sizes_px[choice.image_index]
        x, y = choice.l0_target_xy
        assert choice.l0_xy[0] <= x < choice.l0_xy[0] + 1920
        assert choice.l0_xy[1] <= y < choice.l0_xy[1] + 1280
        assert 0 <= choice.l0_xy[0] <= width - 1920
        assert 0 <= choice.l0_xy[1] <= height - 1280
        offsets.append(x - choice.l0_xy[0] - 960)
    # Jitter spreads the cell over the patch instead of always at its centre.
    assert np.std(offsets) > 200


def test_sampler_random_patch_inside_image(real_tables):
    annotations, images = real_tables
    sampler = PatchSampler(
        images, annotations, (1920, 1280), patch_kind_weights={"random": 1.0}, jitter_px=0, seed=8
    )
    for i in range(500):
        choice = sampler.choose(i)
        width, height = sampler.image_sizes_px[choice.image_index]
        assert choice.l0_target_xy is None
        assert 0 <= choice.l0_xy[0] <= width - 1920
        assert 0 <= choice.l0_xy[1] <= height - 1280


def test_sampler_no_jitter_centres_cell(real_tables):
    annotations, images = real_tables
    sampler = PatchSampler(
        images, annotations, (512, 512), patch_kind_weights={"mitotic figure": 1.0}, jitter_px=0, seed=9
    )
    centred = 0
    for i in range(300):
        choice = sampler.choose(i)
        width, height = sampler.image_sizes_px[choice.image_index]
        offset_x = np.floor(choice.l0_target_xy[0] + 0.5) - choice.l0_xy[0]
        offset_y = np.floor(choice.l0_target_xy[1] + 0.5) - choice.l0_xy[1]
        # A cell within 256 px of an image border is off the centre, because the patch stops at that border.
        at_border_x = choice.l0_xy[0] in (0, width - 512)
        at_border_y = choice.l0_xy[1] in (0, height - 512)
        assert offset_x == 256 or at_border_x
        assert offset_y == 256 or at_border_y
        centred += (offset_x, offset_y) == (256, 256)
    assert centred >= 200


def test_sampler_unknown_domain_weight(real_tables):
    annotations, images = real_tables
    with pytest.raises(AnnotationError, match="'human glioma', which do not occur"):
        PatchSampler(
            images, annotations, (512, 512), domain_weights={"human glioma": 1.0, "human melanoma": 1.0}
        )


def test_sampler_unknown_patch_kind(real_tables):
    annotations, images = real_tables
    with pytest.raises(AnnotationError, match="patch_kind_weights names 'mitosis'"):
        PatchSampler(images, annotations, (512, 512), patch_kind_weights={"mitosis": 1.0})


def test_sampler_negative_weight(real_tables):
    annotations, images = real_tables
    with pytest.raises(MidogError, match="domain_weights must be finite and >= 0"):
        PatchSampler(images, annotations, (512, 512), domain_weights={"human melanoma": -1.0})


def test_sampler_zero_weight_domain_reported(real_tables, caplog):
    annotations, images = real_tables
    with caplog.at_level(logging.WARNING, logger="midog.training.sampling"):
        sampler = PatchSampler(images, annotations, (512, 512), domain_weights={"human melanoma": 1.0})
    assert sampler.domains == ("human melanoma",)
    assert "gives no weight to 6 of 7 tumor domains" in caplog.text


def test_sampler_jitter_out_of_range(real_tables):
    annotations, images = real_tables
    with pytest.raises(MidogError, match="jitter_px must be in \\[0, 128\\)"):
        PatchSampler(images, annotations, (256, 256), jitter_px=128)


def test_sampler_domain_without_imposters(real_tables, caplog):
    annotations, images = real_tables
    figures_only = annotations[annotations["label"] == "mitotic figure"]
    with caplog.at_level(logging.WARNING, logger="midog.training.sampling"):
        sampler = PatchSampler(images, figures_only, (512, 512), seed=10)
    shares = _shares([sampler.choose(i).kind for i in range(3000)])
    assert "has no imposter cell" in caplog.text
    assert "imposter" not in shares
    assert abs(shares["mitotic figure"] - 2 / 3) <= SHARE_TOLERANCE


# ---------------------------------------------------------------------------
# Boxes inside a patch
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("centre", "expected"),
    [
        # Centre pixel (x, y) -> box of a 20 px square around the pixel's middle, clipped to 100x50 px.
        ((150.0, 220.0), [30.5, 10.5, 50.5, 30.5]),  # inside
        ((110.0, 200.0), [0.0, 0.0, 10.5, 10.5]),  # top-left corner, clipped on two sides
        ((209.0, 249.0), [89.5, 39.5, 100.0, 50.0]),  # last pixel, clipped at bottom-right
        ((109.6, 230.0), [0.0, 20.5, 10.1, 40.5]),  # fractional centre in the first pixel column
    ],
)
def test_patch_boxes_clipped(centre, expected):
    boxes, rows = patch_boxes(np.array([centre]), (110, 200), (100, 50), 20)
    assert rows.tolist() == [0]
    np.testing.assert_allclose(boxes[0], expected, atol=1e-4)


def test_patch_boxes_outside_dropped():
    # Left, right, top and bottom of the 100x50 px patch at (110, 200), then one inside.
    centres = np.array([[109.4, 220.0], [209.5, 220.0], [150.0, 199.4], [150.0, 249.5], [150.0, 220.0]])
    boxes, rows = patch_boxes(centres, (110, 200), (100, 50), 20)
    assert rows.tolist() == [4]
    assert boxes.shape == (1, 4)


def test_patch_boxes_empty():
    boxes, rows = patch_boxes(np.zeros((0, 2)), (0, 0), (64, 64), 32)
    assert boxes.shape == (0, 4)
    assert boxes.dtype == np.float32
    assert rows.shape == (0,)


def test_max_jitter_keeps_box_inside():
    assert max_jitter_px((1920, 1280), 64) == 608
    assert max_jitter_px((256, 256), 33) == 111
    assert max_jitter_px((32, 32), 64) == 0


# ---------------------------------------------------------------------------
# The dataset on generated images
# ---------------------------------------------------------------------------


def test_dataset_patch_and_boxes(scaled_set):
    images_dir, annotation_file, image_ids = scaled_set
    dataset = _dataset(images_dir, annotation_file)
    item = dataset.read_patch(0)
    boxes = item["gt_bboxes"].numpy()
    assert item["img"].shape == (256, 256, 3)
    assert item["img"].dtype == np.uint8
    assert len(dataset.sampler) == len(image_ids)
    assert boxes.dtype == np.float32
    assert len(boxes) == len(item["gt_bboxes_labels"])


def test_dataset_boxes_on_drawn_discs(scaled_set):
    from tests.training.midogpp_synthetic import FIGURE_RGB, IMPOSTER_RGB

    images_dir, annotation_file, _ = scaled_set
    dataset = _dataset(images_dir, annotation_file, patch_kind_weights={"mitotic figure": 1.0}, jitter_px=0)
    item = dataset.read_patch(1)
    boxes = item["gt_bboxes"].numpy()
    labels = item["gt_bboxes_labels"]
    # With no jitter the chosen figure's pixel lies at the patch centre, unless the image border shifted it.
    centre_x, centre_y = ((boxes[:, :2] + boxes[:, 2:]) / 2).astype(int).T
    colours = item["img"][centre_y, centre_x]
    expected = np.where(labels[:, None] == 0, FIGURE_RGB, IMPOSTER_RGB)
    full = (boxes[:, 2] - boxes[:, 0] == 32) & (boxes[:, 3] - boxes[:, 1] == 32)
    # Discs may overlap, so compare only the cells whose box is whole.
    np.testing.assert_array_equal(colours[full], expected[full])
    assert full.sum() >= 1


def test_dataset_boxes_clipped_to_patch(scaled_set):
    images_dir, annotation_file, _ = scaled_set
    dataset = _dataset(images_dir, annotation_file, patch_kind_weights={"random": 1.0})
    clipped = 0
    for index in range(40):
        boxes = dataset.read_patch(index)["gt_bboxes"].numpy()
        assert np.all(boxes >= 0)
        assert np.all(boxes <= 256)
        assert np.all(boxes[:, 2:] > boxes[:, :2])
        clipped += int(np.sum((boxes[:, 2] - boxes[:, 0] < 32) | (boxes[:, 3] - boxes[:, 1] < 32)))
    assert clipped > 0


def test_dataset_empty_patches_kept(scaled_set):
    images_dir, annotation_file, _ = scaled_set
    pipeline = [dict(type="PackDetInputs")]
    dataset = _dataset(
        images_dir, annotation_file, patch_size=64, patch_kind_weights={"random": 1.0}, pipeline=pipeline
    )
    items = [dataset[i] for i in range(60)]
    counts = [len(item["data_samples"].gt_instances) for item in items]
    ids = [item["data_samples"].img_id for item in items]
    assert 0 in counts
    assert max(counts) > 0
    assert len(set(ids)) == len(ids)
    assert len(dataset) == 1000


def test_dataset_single_class_drops_imposter_boxes(scaled_set, caplog):
    images_dir, annotation_file, _ = scaled_set
    with caplog.at_level(logging.WARNING, logger="midog.training.midogpp"):
        dataset = _dataset(images_dir, annotation_file, classes=("mitotic figure",))
    labels = np.concatenate([dataset.read_patch(i)["gt_bboxes_labels"] for i in range(20)])
    assert "labels outside classes 'mitotic figure'" in caplog.text
    assert "imposter (" in caplog.text
    assert set(labels.tolist()) == {0}


def test_dataset_image_ids_restrict(scaled_set):
    images_dir, annotation_file, image_ids = scaled_set
    dataset = _dataset(images_dir, annotation_file, image_ids=image_ids[:2])
    names = {dataset.sampler.choose(i).image for i in range(100)}
    assert names == {f"{image_id:03d}.tiff" for image_id in image_ids[:2]}


def test_dataset_image_ids_by_name(scaled_set):
    images_dir, annotation_file, image_ids = scaled_set
    dataset = _dataset(images_dir, annotation_file, image_ids=[f"{image_ids[0]:03d}.tiff"])
    assert dataset.sampler.image_names == [f"{image_ids[0]:03d}.tiff"]


def test_dataset_unknown_image_ids(scaled_set):
    images_dir, annotation_file, image_ids = scaled_set
    with pytest.raises(AnnotationError, match="2 of 3 image_ids are not in the file \\(9999, 999.tiff\\)"):
        _dataset(images_dir, annotation_file, image_ids=[9999, "999.tiff", image_ids[0]])


def test_dataset_missing_images_reported(midogpp_dir, tmp_path):
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    with pytest.raises(AnnotationError) as info:
        _dataset(images_dir, midogpp_dir / "MIDOG++.json")
    message = str(info.value)
    assert "503 of 503 images listed in" in message
    assert "(001.tiff, 002.tiff, 003.tiff, 004.tiff, 005.tiff, ...)" in message
    assert "--allow-missing-images" in message


def test_dataset_missing_images_allowed(midogpp_dir, scaled_set, tmp_path, caplog):
    _, _, image_ids = scaled_set
    images_dir, annotation_file = write_scaled_midogpp(midogpp_dir / "MIDOG++.json", image_ids, tmp_path)
    missing = images_dir / f"{image_ids[0]:03d}.tiff"
    missing.unlink()
    with pytest.raises(AnnotationError, match=f"1 of {len(image_ids)} images .* \\({missing.name}\\)"):
        _dataset(images_dir, annotation_file)
    with caplog.at_level(logging.WARNING, logger="midog.training.midogpp"):
        dataset = _dataset(images_dir, annotation_file, allow_missing_images=True)
    assert len(dataset.sampler) == len(image_ids) - 1
    assert f"training on the other {len(image_ids) - 1}" in caplog.text


def test_dataset_all_missing_even_allowed(midogpp_dir, tmp_path):
    with pytest.raises(AnnotationError, match="no image is left"):
        _dataset(tmp_path, midogpp_dir / "MIDOG++.json", allow_missing_images=True)


def test_dataset_split_needs_domains(scaled_set):
    images_dir, annotation_file, _ = scaled_set
    with pytest.raises(AnnotationError, match="no image has split 'train' \\(splits present: none\\)"):
        _dataset(images_dir, annotation_file, split="train")


def test_dataset_split_from_domains_csv(scaled_set, midogpp_dir):
    images_dir, annotation_file, _ = scaled_set
    csv = midogpp_dir / "datasets_xvalidation.csv"
    dataset = _dataset(images_dir, annotation_file, domains_csv=csv, split="train")
    table = read_annotations(annotation_file, domains_csv=csv)[1]
    expected = sorted(table.loc[table["split"] == "train", "image"])
    assert sorted(dataset.sampler.image_names) == expected


def test_dataset_unknown_domain_weight(scaled_set):
    images_dir, annotation_file, _ = scaled_set
    with pytest.raises(AnnotationError, match="domain_weights names 'human glioma'"):
        _dataset(images_dir, annotation_file, domain_weights={"human glioma": 1.0})


def test_dataset_unknown_domain_column(scaled_set):
    images_dir, annotation_file, _ = scaled_set
    with pytest.raises(AnnotationError, match="unknown domain_column 'stain'"):
        _dataset(images_dir, annotation_file, domain_column="stain")


def test_dataset_coco_read_as_midogpp(scaled_set, tmp_path):
    images_dir, annotation_file, _ = scaled_set
    data = json.loads(annotation_file.read_text())
    for annotation in data["annotations"]:
        x1, y1, x2, y2 = annotation["bbox"]
        annotation["bbox"] = [x1, y1, x2 - x1, y2 - y1]
        annotation.pop("labels")
    for image in data["images"]:
        image.pop("tumor_type")
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match="not midogpp; read it with format='coco'"):
        _dataset(images_dir, coco, annotation_format="midogpp")


def test_dataset_size_mismatch(scaled_set, tmp_path):
    images_dir, annotation_file, _ = scaled_set
    data = json.loads(annotation_file.read_text())
    data["images"][0]["width"] += 10
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=f"{data['images'][0]['file_name']} is .* px, but .* gives"):
        _dataset(images_dir, changed)


def test_dataset_csv_sizes_from_files(scaled_set, tmp_path, caplog):
    images_dir, _, image_ids = scaled_set
    name = f"{image_ids[0]:03d}.tiff"
    csv = tmp_path / "points.csv"
    csv.write_text(
        "image,x,y,label,tumor\n"
        f"{name},100,100,mitotic figure,human breast cancer\n"
        f"{name},5000,120,mitotic figure,human breast cancer\n"
        f"{name},200,200,unclassified,human breast cancer\n"
    )
    with caplog.at_level(logging.WARNING, logger="midog.training.midogpp"):
        dataset = _dataset(images_dir, csv)
    width = dataset.sampler.image_sizes_px[0][0]
    assert dataset.sampler.cell_centres_xy[0][1].tolist() == [width - 1, 120.0]
    assert "clipped 1 annotation centres lying outside their image" in caplog.text
    assert "unclassified (1)" in caplog.text


def test_stain_augment_moves_boxes(scaled_set):
    from midog.training.midogpp import StainAugment

    images_dir, annotation_file, _ = scaled_set
    dataset = _dataset(images_dir, annotation_file, patch_kind_weights={"mitotic figure": 1.0})
    results = dataset.read_patch(2)
    image = results["img"].copy()
    boxes = results["gt_bboxes"].numpy().copy()
    augmented = StainAugment(
        hed_p=0.0, flip_p=1.0, rotate90_p=0.0, hsv_p=0.0, brightness_contrast_p=0.0, blur_p=0.0, jpeg_p=0.0
    )(results)
    flipped = image[::-1, ::-1]
    expected = np.stack([256 - boxes[:, 2], 256 - boxes[:, 3], 256 - boxes[:, 0], 256 - boxes[:, 1]], axis=1)
    np.testing.assert_array_equal(augmented["img"], flipped)
    np.testing.assert_allclose(
        np.sort(augmented["gt_bboxes"].numpy(), axis=0), np.sort(expected, axis=0), atol=1e-3
    )


def test_stain_augment_seeded_by_item(scaled_set):
    from midog.training.midogpp import StainAugment

    images_dir, annotation_file, _ = scaled_set
    dataset = _dataset(images_dir, annotation_file)
    augment = StainAugment(hed_p=1.0, flip_p=0.5, hsv_p=1.0)
    first = augment(dataset.read_patch(4))["img"]
    augment(dataset.read_patch(5))
    again = augment(dataset.read_patch(4))["img"]
    other = augment(dataset.read_patch(4) | {"seed": (3, 99)})["img"]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_stain_augment_rejects_seed():
    from midog.training.midogpp import StainAugment

    with pytest.raises(MidogError, match="StainAugment sets seed itself"):
        StainAugment(seed=1)


# ---------------------------------------------------------------------------
# Data-loader workers
# ---------------------------------------------------------------------------


def _items_through_loader(dataset, num_workers: int, context: str | None) -> list[tuple]:
    from torch.utils.data import DataLoader

    loader = DataLoader(
        dataset,
        batch_size=1,
        num_workers=num_workers,
        multiprocessing_context=context if num_workers else None,
        collate_fn=list,
        sampler=list(range(8)),
    )
    out = []
    for (item,) in loader:
        sample = item["data_samples"]
        out.append(
            (
                sample.img_id,
                item["inputs"].numpy(),
                sample.gt_instances.bboxes.numpy(),
                sample.gt_instances.labels.numpy(),
            )
        )
    return out


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataset_workers_match_main_process(scaled_set, context):
    images_dir, annotation_file, _ = scaled_set
    pipeline = [dict(type="StainAugment", hed_p=1.0, hsv_p=1.0), dict(type="PackDetInputs")]
    dataset = _dataset(images_dir, annotation_file, pipeline=pipeline)
    expected = _items_through_loader(dataset, 0, None)
    # The parent now has open readers, which forked workers must not share.
    assert len(dataset._readers) > 0
    got = _items_through_loader(dataset, 2, context)
    assert [item[0] for item in got] == list(range(8))
    for (_, image, boxes, labels), (_, image_expected, boxes_expected, labels_expected) in zip(got, expected):
        np.testing.assert_array_equal(image, image_expected)
        np.testing.assert_array_equal(boxes, boxes_expected)
        np.testing.assert_array_equal(labels, labels_expected)


def test_dataset_pickle_drops_readers(scaled_set):
    import pickle

    images_dir, annotation_file, _ = scaled_set
    dataset = _dataset(images_dir, annotation_file)
    dataset.read_patch(0)
    copy = pickle.loads(pickle.dumps(dataset))
    assert len(copy._readers) == 0
    np.testing.assert_array_equal(copy.read_patch(0)["img"], dataset.read_patch(0)["img"])


def test_dataset_keeps_few_images_open(scaled_set):
    images_dir, annotation_file, _ = scaled_set
    dataset = _dataset(images_dir, annotation_file, max_open_images=2)
    for index in range(30):
        dataset.read_patch(index)
    assert len(dataset._readers) == 2
    assert len({dataset.sampler.choose(i).image for i in range(30)}) > 2


# ---------------------------------------------------------------------------
# Moving averages of the weights
# ---------------------------------------------------------------------------


class _Wrapper:
    def __init__(self, every: int) -> None:
        self.count = 0
        self.every = every

    def should_update(self) -> bool:
        return self.count % self.every == 0


def _hook_and_runner(momenta=(0.5, 0.25), checkpoint_momentum=0.5, every=1):
    from mmengine.registry import init_default_scope

    from midog.training.midogpp import MultiEMAHook

    init_default_scope("mmdet")
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    runner = SimpleNamespace(model=model, optim_wrapper=_Wrapper(every), _resume=False)
    hook = MultiEMAHook(momenta, checkpoint_momentum)
    hook.before_run(runner)
    return hook, runner, model


def _set_weight(model, value: float) -> None:
    with torch.no_grad():
        model.weight.fill_(value)


def test_ema_hook_averages_per_momentum():
    hook, runner, model = _hook_and_runner()
    hook.after_train_iter(runner, 0)  # the first update copies the weights (0)
    _set_weight(model, 1.0)
    hook.after_train_iter(runner, 1)
    assert hook.ema_models[0.5].module.weight[0, 0].item() == pytest.approx(0.5)
    assert hook.ema_models[0.25].module.weight[0, 0].item() == pytest.approx(0.25)


def test_ema_hook_waits_for_optimizer_step():
    hook, runner, model = _hook_and_runner(every=3)
    for count in range(1, 7):
        runner.optim_wrapper.count = count
        _set_weight(model, float(count))
        hook.after_train_iter(runner, count)
    # Updates after counts 3 (copy) and 6: 0.5 * 3 + 0.5 * 6.
    assert hook.ema_models[0.5].module.weight[0, 0].item() == pytest.approx(4.5)


def test_ema_hook_checkpoint_and_resume():
    hook, runner, model = _hook_and_runner()
    hook.after_train_iter(runner, 0)
    _set_weight(model, 1.0)
    hook.after_train_iter(runner, 1)
    checkpoint = {"state_dict": {"weight": model.weight.detach().clone()}, "meta": {}}
    hook.before_save_checkpoint(runner, checkpoint)
    assert checkpoint["state_dict"]["weight"][0, 0].item() == pytest.approx(0.5)
    assert checkpoint["raw_state_dict"]["weight"][0, 0].item() == 1.0
    assert set(checkpoint["ema_state_dicts"]) == {"0.5", "0.25"}

    resumed, resumed_runner, _ = _hook_and_runner()
    resumed_runner._resume = True
    resumed.after_load_checkpoint(resumed_runner, checkpoint)
    assert checkpoint["state_dict"]["weight"][0, 0].item() == 1.0
    assert resumed.ema_models[0.25].module.weight[0, 0].item() == pytest.approx(0.25)


def test_ema_hook_rejects_unknown_checkpoint_momentum():
    from midog.training.midogpp import MultiEMAHook

    with pytest.raises(MidogError, match="checkpoint_momentum 0.1 is not one of momenta"):
        MultiEMAHook((0.5, 0.25), 0.1)


# ---------------------------------------------------------------------------
# Configs and the command line
# ---------------------------------------------------------------------------


def test_config_recipe_values():
    from midog.training.train import load_config

    cfg = load_config(FULL_CONFIG)
    dataset = cfg.train_dataloader.dataset
    assert dataset.type == "MidogppPatchDataset"
    assert dataset.patch_size == (1920, 1280)
    assert dataset.box_size_px == 64
    assert cfg.train_dataloader.batch_size * cfg.optim_wrapper.accumulative_counts == 24
    assert cfg.train_cfg.max_iters == 25_000
    assert cfg.param_scheduler[0].start_factor * cfg.optim_wrapper.optimizer.lr == pytest.approx(1e-5)
    assert cfg.param_scheduler[0].end == 250
    assert cfg.model.bbox_head.num_classes == 2
    assert cfg.custom_hooks[0].momenta == (1e-3, 5e-4, 2.5e-4)


def test_tiny_config_values():
    from midog.training.train import load_config

    cfg = load_config(TINY_CONFIG)
    dataset = cfg.train_dataloader.dataset
    assert dataset.patch_size == 256
    assert dataset.split is None
    assert cfg.train_dataloader.num_workers == 0
    assert cfg.optim_wrapper.accumulative_counts == 1
    assert cfg.param_scheduler[-1].end == cfg.train_cfg.max_iters


def test_train_command_missing_images(tmp_path, capsys):
    from midog.cli import main

    code = main(
        ["train", str(FULL_CONFIG), "--images", str(tmp_path / "absent"), "--annotations", str(FULL_CONFIG)]
    )
    assert code == 1
    assert "--images" in capsys.readouterr().err


def test_train_command_missing_annotations(tmp_path, capsys):
    from midog.cli import main

    code = main(
        ["train", str(FULL_CONFIG), "--images", str(tmp_path), "--annotations", str(tmp_path / "a.json")]
    )
    assert code == 1
    assert "--annotations" in capsys.readouterr().err


def test_train_command_rejects_other_dataset(tmp_path, capsys):
    from midog.cli import main

    config = REPO / "configs" / "rtmdet_s_mf_crops.py"
    code = main(["train", str(config), "--images", str(tmp_path)])
    assert code == 1
    assert "trains on MitoticCanvasDataset" in capsys.readouterr().err


def test_train_command_reports_missing_images(midogpp_dir, tmp_path, capsys):
    from midog.cli import main

    code = main(
        [
            "train",
            str(TINY_CONFIG),
            "--images",
            str(tmp_path),
            "--annotations",
            str(midogpp_dir / "MIDOG++.json"),
            "--work-dir",
            str(tmp_path / "work"),
        ]
    )
    assert code == 1
    assert "503 of 503 images listed in" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Tiny end-to-end training
# ---------------------------------------------------------------------------


def _losses(work_dir: Path, key: str) -> list[float]:
    scalars = max(work_dir.glob("*/vis_data/scalars.json"))
    rows = [json.loads(line) for line in scalars.read_text().splitlines() if line.strip()]
    return [row[key] for row in rows if key in row]


@pytest.mark.train
@pytest.mark.slow
def test_tiny_training_loss_falls(scaled_set, tmp_path):
    from midog.cli import main
    from midog.training.checkpoint import load_checkpoint

    images_dir, annotation_file, _ = scaled_set
    work_dir = tmp_path / "work"
    start = time.perf_counter()
    code = main(
        [
            "train",
            str(TINY_CONFIG),
            "--images",
            str(images_dir),
            "--annotations",
            str(annotation_file),
            "--work-dir",
            str(work_dir),
        ]
    )
    seconds = time.perf_counter() - start
    losses = _losses(work_dir, "loss")
    box_losses = _losses(work_dir, "loss_bbox")
    # RTMDet weights its losses by the IoU of its own boxes, so they start near 0 and climb while
    # the first boxes form, and the classification loss keeps climbing while the boxes improve.
    # The comparison therefore starts after the 5 warm-up iterations.
    early, late = np.mean(losses[5:15]), np.mean(losses[-10:])
    early_box, late_box = np.mean(box_losses[5:15]), np.mean(box_losses[-10:])
    print(
        f"tiny MIDOG++ training: {len(losses)} iterations in {seconds:.0f} s, loss {early:.3f} -> {late:.3f}, "
        f"box loss {early_box:.3f} -> {late_box:.3f}"
    )
    assert code == 0
    assert len(losses) == 60
    assert late < early
    assert late_box < 0.75 * early_box

    checkpoint = load_checkpoint(work_dir / "iter_60.pth")
    ema_weights = checkpoint["ema_state_dicts"]["0.05"]
    name = next(iter(checkpoint["state_dict"]))
    assert torch.equal(checkpoint["state_dict"][name], ema_weights[f"module.{name}"])
    assert set(checkpoint["ema_state_dicts"]) == {"0.1", "0.05", "0.01"}
