"""Training canvases built from the real crops and the real slide."""

from __future__ import annotations

import numpy as np
import pytest

from midog.training.crops import (
    BOX_SIZE_PX,
    CanvasConfig,
    CanvasGenerator,
    control_square,
    list_crops,
    load_rgb,
    load_tissue_sources,
    split_crops,
)


@pytest.fixture(scope="module")
def records(shared_data):
    return list_crops(shared_data / "mf_crops")


@pytest.fixture(scope="module")
def generator(shared_data, records):
    splits = split_crops(records)
    paths = [r.path for r in splits["train"][:64]]
    return CanvasGenerator(paths, load_tissue_sources(shared_data, "train"), CanvasConfig())


def test_list_crops_counts(records):
    assert len(records) == 2853
    assert sum(r.source_set == "AtNorM-Br" for r in records) == 746


def test_split_test_is_whole_source_set(records):
    splits = split_crops(records)
    assert {r.source_set for r in splits["test"]} == {"AtNorM-Br"}
    assert len(splits["test"]) == 746
    assert all(r.source_set != "AtNorM-Br" for r in splits["train"] + splits["val"])


def test_split_train_val_disjoint(records):
    splits = split_crops(records)
    train = {r.path for r in splits["train"]}
    val = {r.path for r in splits["val"]}
    assert not train & val
    assert len(train) + len(val) == 2107
    assert len(val) == 211


def test_split_seeded(records):
    assert split_crops(records, seed=3)["val"] == split_crops(records, seed=3)["val"]
    assert split_crops(records, seed=3)["val"] != split_crops(records, seed=4)["val"]


def test_control_square_moves_figure_to_corners(records):
    crop = load_rgb(records[0].path)
    square = control_square(crop)
    # The pixels around the figure centre (64, 64) end up at the four outer corners.
    assert np.array_equal(square[0, 0], crop[63, 63])
    assert np.array_equal(square[0, 127], crop[63, 64])
    assert np.array_equal(square[127, 0], crop[64, 63])
    assert np.array_equal(square[127, 127], crop[64, 64])
    # The centre shows the crop's outer corners.
    assert np.array_equal(square[63, 63], crop[0, 0])
    assert np.array_equal(square[64, 64], crop[127, 127])


def test_tissue_sources_split_slide_rows(shared_data):
    train = load_tissue_sources(shared_data, "train")
    test = load_tissue_sources(shared_data, "test")
    # The slide (2220x2967 px at 0.499 µm/px) is upsampled to 0.25 µm/px and split 75/25 by rows.
    assert train[0].rgb.shape[0] == pytest.approx(2967 * 0.75 * 0.499 / 0.25, abs=3)
    assert test[0].rgb.shape[0] == pytest.approx(2967 * 0.25 * 0.499 / 0.25, abs=3)
    assert not {s.name for s in train[1:]} & {s.name for s in test[1:]}


def test_canvas_deterministic(generator):
    first = generator.generate(np.random.default_rng(7))
    second = generator.generate(np.random.default_rng(7))
    assert np.array_equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])


def test_canvas_boxes_inside_and_sized(generator):
    sizes = []
    for seed in range(40):
        image, boxes = generator.generate(np.random.default_rng(seed))
        assert image.shape == (320, 320, 3)
        assert image.dtype == np.uint8
        assert (boxes[:, :2] >= 0).all()
        assert (boxes[:, 2:] <= 320).all()
        sizes += list(boxes[:, 2] - boxes[:, 0])
    assert min(sizes) >= BOX_SIZE_PX * 0.8 - 1e-3
    assert max(sizes) <= BOX_SIZE_PX * 1.25 + 1e-3


def test_canvas_has_empty_and_labelled(generator):
    counts = [len(generator.generate(np.random.default_rng(seed))[1]) for seed in range(40)]
    assert 0 in counts
    assert max(counts) >= 1
