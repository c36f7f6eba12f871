"""Hard-negative mining: candidates, morphology, clustering, undersampling, files and canvases."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from midog.errors import AnnotationError, MidogError
from midog.training.augment import rgb_from_hed
from midog.training.crops import (
    CROP_SIZE_PX,
    CanvasConfig,
    CanvasGenerator,
    HardNegative,
    list_crops,
    load_rgb,
    load_tissue_sources,
    split_crops,
)
from midog.training.mining import (
    NEGATIVE_COLUMNS,
    PSEUDO_NEGATIVE,
    MiningConfig,
    candidate_mask,
    kmeans,
    mine_annotated_images,
    mine_training_crops,
    read_negatives,
    select_pseudo_negatives,
    undersample_clusters,
    write_negatives,
)
from midog.training.morphology import FEATURE_NAMES, nucleus_features

REPO = Path(__file__).resolve().parents[2]
DEV_MODEL = Path("/tmp/iter600.onnx")


def _model_path() -> Path | None:
    from midog.inference.onnx_detector import default_model_path

    for path in (default_model_path(), DEV_MODEL):
        if path.is_file():
            return path
    return None


@pytest.fixture(scope="module")
def detector():
    path = _model_path()
    if path is None:
        pytest.skip(f"no trained model: neither the shipped model nor {DEV_MODEL} exists")
    from midog.inference.onnx_detector import OnnxDetector

    return OnnxDetector(path, device="cpu")


@pytest.fixture(scope="module")
def train_records(shared_data):
    return split_crops(list_crops(shared_data / "mf_crops"))["train"]


@pytest.fixture(scope="module")
def train_tissue(shared_data):
    return load_tissue_sources(shared_data, "train")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ellipse_rgb(semi_x_px: float, semi_y_px: float, size_px: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Draw a haematoxylin ellipse on a pale eosin background; return RGB and the drawn mask."""
    yy, xx = np.indices((size_px, size_px)) + 0.5
    centre = size_px / 2
    inside = ((xx - centre) / semi_x_px) ** 2 + ((yy - centre) / semi_y_px) ** 2 <= 1
    hed = np.zeros((size_px, size_px, 3), dtype=np.float32)
    hed[..., 1] = 0.1
    hed[inside, 0] = 0.8
    return rgb_from_hed(hed), inside


# Candidates ------------------------------------------------------------------


def test_candidate_on_radius_is_hit():
    # Distance exactly 30 px from the figure: the boundary counts as a hit, as in MIDOG matching.
    mask = candidate_mask(np.array([[130.0, 100.0]]), np.array([0.9]), np.array([[100.0, 100.0]]), 0.5, 30.0)
    assert not mask[0]


def test_candidate_beyond_radius():
    mask = candidate_mask(np.array([[130.01, 100.0]]), np.array([0.9]), np.array([[100.0, 100.0]]), 0.5, 30.0)
    assert mask[0]


def test_candidate_score_threshold_inclusive():
    mask = candidate_mask(
        np.array([[0.0, 0.0], [50.0, 0.0]]), np.array([0.5, 0.49]), np.zeros((0, 2)), 0.5, 30.0
    )
    assert mask.tolist() == [True, False]


def test_mining_config_rejects_bad_ratio():
    with pytest.raises(MidogError, match="negative_ratio"):
        MiningConfig(negative_ratio=-1)


# Morphology ------------------------------------------------------------------


def test_disk_area():
    rgb, inside = _ellipse_rgb(10, 10)
    features = dict(zip(FEATURE_NAMES, nucleus_features(rgb, mpp=0.25)))
    assert features["area_um2"] == pytest.approx(inside.sum() * 0.25**2, rel=0.05)


def test_disk_eccentricity_near_zero():
    rgb, _ = _ellipse_rgb(10, 10)
    features = dict(zip(FEATURE_NAMES, nucleus_features(rgb, mpp=0.25)))
    assert features["eccentricity"] < 0.15


def test_ellipse_eccentricity():
    rgb, _ = _ellipse_rgb(14, 7)
    features = dict(zip(FEATURE_NAMES, nucleus_features(rgb, mpp=0.25)))
    # sqrt(1 - (7 / 14)²) = 0.866 for the continuous ellipse.
    assert features["eccentricity"] == pytest.approx(np.sqrt(1 - 0.25), abs=0.03)


def test_ellipse_optical_density():
    rgb, _ = _ellipse_rgb(14, 7)
    features = dict(zip(FEATURE_NAMES, nucleus_features(rgb, mpp=0.25)))
    assert features["h_od_mean"] == pytest.approx(0.8, abs=0.05)


def test_blank_window_has_no_nucleus():
    features = dict(zip(FEATURE_NAMES, nucleus_features(np.full((64, 64, 3), 240, np.uint8), mpp=0.25)))
    assert features["area_um2"] == 0.0


# Clustering and undersampling --------------------------------------------------


def test_kmeans_separates_blobs():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.concatenate([c + rng.normal(0, 0.5, (40, 2)) for c in centres])
    labels, _ = kmeans(points, 3, seed=1)
    # Each blob of 40 points ends up in its own cluster.
    assert len({tuple(np.unique(labels[i * 40 : (i + 1) * 40])) for i in range(3)}) == 3
    assert all(len(np.unique(labels[i * 40 : (i + 1) * 40])) == 1 for i in range(3))


def test_kmeans_seeded():
    points = np.random.default_rng(3).normal(size=(100, 4))
    assert np.array_equal(kmeans(points, 5, seed=2)[0], kmeans(points, 5, seed=2)[0])


def test_kmeans_fewer_points_than_clusters():
    _, centres = kmeans(np.array([[0.0, 0.0], [1.0, 1.0]]), 8)
    assert len(centres) == 2


def test_undersample_keeps_every_cluster():
    clusters = np.array([0] * 500 + [1] * 30 + [2] * 5 + [3] * 2)
    kept = undersample_clusters(clusters, 40, seed=0)
    assert set(clusters[kept]) == {0, 1, 2, 3}


def test_undersample_honours_count():
    clusters = np.array([0] * 500 + [1] * 30 + [2] * 5 + [3] * 2)
    assert len(undersample_clusters(clusters, 40, seed=0)) == 40


def test_undersample_evens_out():
    clusters = np.array([0] * 500 + [1] * 30 + [2] * 5 + [3] * 2)
    counts = np.bincount(clusters[undersample_clusters(clusters, 40, seed=0)])
    # Small clusters give all they have; the two large ones share the rest evenly.
    assert counts.tolist() == [17, 16, 5, 2] or counts.tolist() == [16, 17, 5, 2]


def test_undersample_more_than_available():
    assert len(undersample_clusters(np.zeros(7, dtype=int), 100)) == 7


def test_select_ratio_to_positives():
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.normal(size=(300, len(FEATURE_NAMES))), columns=list(FEATURE_NAMES))
    table[["image", "x", "y", "score", "source"]] = ["a.tiff", 1.0, 2.0, 0.7, "image"]
    selected = select_pseudo_negatives(
        table, num_positives=40, config=MiningConfig(negative_ratio=1.5), round_index=2
    )
    assert int(selected["kept"].sum()) == 60


def test_select_every_cluster_kept():
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.normal(size=(300, len(FEATURE_NAMES))), columns=list(FEATURE_NAMES))
    table[["image", "x", "y", "score", "source"]] = ["a.tiff", 1.0, 2.0, 0.7, "image"]
    selected = select_pseudo_negatives(
        table, num_positives=20, config=MiningConfig(num_clusters=6), round_index=1
    )
    assert selected.loc[selected["kept"], "cluster"].nunique() == 6


# Negatives files ---------------------------------------------------------------


def _negatives_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image": ["AtNorM-MD/Normal/1.png", "cmu-1-small-region.svs:train"],
            "x": [10.5, 200.0],
            "y": [20.0, 300.25],
            "label": PSEUDO_NEGATIVE,
            "score": [0.61, 0.93],
            "round": 1,
            "cluster": [0, 3],
            "source": ["crop", "tissue"],
        }
    )


def test_negatives_round_trip(tmp_path):
    path = write_negatives(tmp_path / "negatives.csv", _negatives_table())
    table = read_negatives(path)
    assert table[list(NEGATIVE_COLUMNS)].equals(_negatives_table()[list(NEGATIVE_COLUMNS)])


def test_negatives_header(tmp_path):
    path = write_negatives(tmp_path / "negatives.csv", _negatives_table())
    assert path.read_text().splitlines()[0] == ",".join(NEGATIVE_COLUMNS)


def test_negatives_missing_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("image,x,y\na.png,1,2\n")
    with pytest.raises(AnnotationError, match="lacks the column"):
        read_negatives(path)


def test_negatives_bad_coordinate(tmp_path):
    table = _negatives_table().astype({"x": object})
    table.loc[1, "x"] = "left"
    path = write_negatives(tmp_path / "negatives.csv", table)
    with pytest.raises(AnnotationError, match="row 3 has an invalid x"):
        read_negatives(path)


# Canvases with hard negatives --------------------------------------------------


@pytest.fixture(scope="module")
def small_generator_parts(train_records, train_tissue):
    return [r.path for r in train_records[:8]], train_tissue


def test_cut_tissue_square_centred(small_generator_parts):
    paths, tissue = small_generator_parts
    negative = HardNegative("tissue", tissue[0].name, 1000.0, 800.0)
    generator = CanvasGenerator(paths, tissue, CanvasConfig(hard_negative_jitter_px=0), [negative])
    square = generator.cut_hard_negative(0, np.random.default_rng(0))
    assert np.array_equal(square[64, 64], tissue[0].rgb[800, 1000])
    assert np.array_equal(square[0, 0], tissue[0].rgb[800 - 64, 1000 - 64])


def test_cut_square_outside_source_is_black(small_generator_parts):
    paths, tissue = small_generator_parts
    negative = HardNegative("tissue", tissue[0].name, 10.0, 10.0)
    generator = CanvasGenerator(paths, tissue, CanvasConfig(hard_negative_jitter_px=0), [negative])
    square = generator.cut_hard_negative(0, np.random.default_rng(0))
    assert square[:54, :54].max() == 0


def test_cut_crop_square_masks_figure(small_generator_parts):
    paths, tissue = small_generator_parts
    negative = HardNegative("crop", str(paths[0]), 104.0, 64.0)
    generator = CanvasGenerator(paths, tissue, CanvasConfig(hard_negative_jitter_px=0), [negative])
    square = generator.cut_hard_negative(0, np.random.default_rng(0))
    crop = load_rgb(paths[0])
    # The square's centre is crop pixel (104, 64); the crop's figure centre (64, 64) lies 40 px left of it.
    assert square[64, 24].max() == 0
    assert np.array_equal(square[64, 64], crop[64, 104])


def test_cut_jitter_bounded(small_generator_parts):
    paths, tissue = small_generator_parts
    rgb = tissue[0].rgb
    negative = HardNegative("tissue", tissue[0].name, 1500.0, 1500.0)
    generator = CanvasGenerator(paths, tissue, CanvasConfig(hard_negative_jitter_px=8), [negative])
    square = generator.cut_hard_negative(0, np.random.default_rng(5))
    window = rgb[1500 - 64 - 8 : 1500 + 64 + 8, 1500 - 64 - 8 : 1500 + 64 + 8]
    offsets = [
        (dy, dx)
        for dy in range(17)
        for dx in range(17)
        if np.array_equal(window[dy : dy + 128, dx : dx + 128], square)
    ]
    assert len(offsets) >= 1


def test_unknown_crop_rejected(small_generator_parts, train_records):
    paths, tissue = small_generator_parts
    negative = HardNegative("crop", str(train_records[100].path), 10.0, 10.0)
    with pytest.raises(AnnotationError, match="not among"):
        CanvasGenerator(paths, tissue, CanvasConfig(), [negative])


def test_share_zero_keeps_canvases(small_generator_parts):
    paths, tissue = small_generator_parts
    negative = HardNegative("tissue", tissue[0].name, 1000.0, 800.0)
    plain = CanvasGenerator(paths, tissue, CanvasConfig())
    with_negatives = CanvasGenerator(paths, tissue, CanvasConfig(hard_negative_share=0.0), [negative])
    assert np.array_equal(
        plain.generate(np.random.default_rng(4))[0], with_negatives.generate(np.random.default_rng(4))[0]
    )


def test_generate_uses_hard_negatives(small_generator_parts, monkeypatch):
    paths, tissue = small_generator_parts
    negatives = [
        HardNegative("tissue", tissue[0].name, 1000.0, 800.0),
        HardNegative("crop", str(paths[1]), 20.0, 30.0),
    ]
    generator = CanvasGenerator(paths, tissue, CanvasConfig(hard_negative_share=1.0), negatives)
    cut = []
    original = generator.cut_hard_negative
    monkeypatch.setattr(
        generator, "cut_hard_negative", lambda index, rng: cut.append(index) or original(index, rng)
    )
    generator.generate(np.random.default_rng(0))
    # Every unlabelled square (at least one per canvas) is a hard negative when the share is 1.
    assert len(cut) >= 1


def test_dataset_reads_negatives(shared_data, train_records, tmp_path):
    pytest.importorskip("mmdet")
    from midog.training.registry import MitoticCanvasDataset

    crops_dir = shared_data / "mf_crops"
    table = _negatives_table()
    table.loc[0, "image"] = train_records[0].path.relative_to(crops_dir).as_posix()
    path = write_negatives(tmp_path / "negatives.csv", table)
    dataset = MitoticCanvasDataset(
        data_root=str(shared_data),
        split="train",
        test_source_sets=("AtNorM-Br",),
        val_fraction=0.1,
        split_seed=0,
        canvas={"canvas_size": 192, "hard_negative_share": 1.0},
        length=10,
        class_names=("mitotic figure",),
        pipeline=[],
        hard_negatives_file=str(path),
    )
    assert [n.source for n in dataset.generator.hard_negatives] == ["crop", "tissue"]
    assert dataset[0]["img"].shape == (192, 192, 3)


def test_dataset_rejects_val_crop(shared_data, tmp_path):
    pytest.importorskip("mmdet")
    from midog.training.registry import MitoticCanvasDataset

    crops_dir = shared_data / "mf_crops"
    val_crop = split_crops(list_crops(crops_dir))["val"][0]
    table = _negatives_table()
    table.loc[0, "image"] = val_crop.path.relative_to(crops_dir).as_posix()
    path = write_negatives(tmp_path / "negatives.csv", table)
    with pytest.raises(AnnotationError, match="not among"):
        MitoticCanvasDataset(
            data_root=str(shared_data),
            split="train",
            test_source_sets=("AtNorM-Br",),
            val_fraction=0.1,
            split_seed=0,
            canvas={"canvas_size": 192},
            length=10,
            class_names=("mitotic figure",),
            pipeline=[],
            hard_negatives_file=str(path),
        )


# Mining with a trained model on the real data ------------------------------------


@pytest.fixture(scope="module")
def crop_candidates(detector, train_records, train_tissue, shared_data):
    records = train_records[:: len(train_records) // 24][:24]
    # Off-centre detections in training crops are rare at the model's threshold; take every candidate.
    config = MiningConfig(score_thresh=detector.min_score, batch_size=8)
    return mine_training_crops(
        detector, records, shared_data / "mf_crops", train_tissue, config, progress=False
    )


def test_crop_mining_finds_candidates(crop_candidates):
    assert len(crop_candidates) > 0


def test_crop_candidates_off_centre(crop_candidates):
    distance = np.hypot(crop_candidates["x"] - 64, crop_candidates["y"] - 64)
    assert (distance > 30).all()


def test_crop_candidates_inside_crop(crop_candidates):
    assert crop_candidates[["x", "y"]].to_numpy().min() >= 0
    assert crop_candidates[["x", "y"]].to_numpy().max() < CROP_SIZE_PX


def test_crop_candidates_name_training_crops(crop_candidates, train_records, shared_data):
    names = {r.path.relative_to(shared_data / "mf_crops").as_posix() for r in train_records}
    assert set(crop_candidates["image"]) <= names


def test_crop_mining_writes_file(crop_candidates, tmp_path):
    selected = select_pseudo_negatives(
        crop_candidates, num_positives=24, config=MiningConfig(num_clusters=3), round_index=1
    )
    path = write_negatives(tmp_path / "negatives.csv", selected[selected["kept"]])
    assert len(read_negatives(path)) == int(selected["kept"].sum())


def test_annotated_mining_leaves_input(detector, shared_data, tmp_path):
    # A real tissue tile as a one-image data set, with two labelled cells.
    tile = load_rgb(shared_data / "tiles" / "high-nuclei-score-level0.png")
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    Image.fromarray(tile).save(images_dir / "001.png")
    annotations_path = tmp_path / "annotations.csv"
    annotations_path.write_text("image,x,y,label\n001.png,100,120,mitotic figure\n001.png,300,310,imposter\n")
    before = _sha256(annotations_path)

    from midog.io.annotations import read_annotations

    annotations, _ = read_annotations(annotations_path, format="csv")
    candidates = mine_annotated_images(
        detector,
        annotations,
        images_dir,
        ["001.png"],
        MiningConfig(score_thresh=0.1),
        image_mpp=0.25,
        progress=False,
    )
    selected = select_pseudo_negatives(
        candidates, num_positives=1, config=MiningConfig(negative_ratio=5), round_index=1
    )
    write_negatives(tmp_path / "negatives.csv", selected[selected["kept"]])
    assert _sha256(annotations_path) == before
    assert (tmp_path / "negatives.csv").is_file()


# Fine-tuning with the mined config -------------------------------------------------


@pytest.mark.train
def test_mined_config_fine_tunes(shared_data, train_records, tmp_path):
    pytest.importorskip("mmdet")
    from midog.training.train import train

    # A 2-iteration model of the tiny recipe replaces the default model's checkpoint.
    data_root = {"train_dataloader.dataset.data_root": str(shared_data)}
    start = train(REPO / "configs" / "tests" / "rtmdet_s_tiny_canvas.py", tmp_path / "start", data_root)

    table = _negatives_table()
    table.loc[0, "image"] = train_records[0].path.relative_to(shared_data / "mf_crops").as_posix()
    negatives = write_negatives(tmp_path / "negatives.csv", table)
    overrides = data_root | {
        "load_from": str(start),
        "train_dataloader.dataset.hard_negatives_file": str(negatives),
        "train_cfg.max_iters": 2,
        "train_dataloader.batch_size": 2,
        "train_dataloader.num_workers": 0,
        "train_dataloader.persistent_workers": False,
        "train_dataloader.dataset.canvas.canvas_size": 192,
        "default_hooks.checkpoint.interval": 2,
        "default_hooks.logger.interval": 1,
    }
    checkpoint = train(REPO / "configs" / "rtmdet_s_mf_crops_mined.py", tmp_path / "mined", overrides)
    assert checkpoint.name == "iter_2.pth"


# The mine command ------------------------------------------------------------------


def test_mine_rounds_need_config(tmp_path, capsys):
    from midog.cli import main

    model = tmp_path / "model.onnx"
    model.write_bytes(b"not used")
    code = main(["mine", "canvas", "--model", str(model), "--output", str(tmp_path / "out"), "--rounds", "2"])
    assert code == 1
    assert "--rounds 2 needs --config and --checkpoint" in capsys.readouterr().err


def test_mine_images_with_regions(detector, shared_data, tmp_path):
    from midog.cli import main

    images_dir = tmp_path / "images"
    images_dir.mkdir()
    for name, tile in (
        ("001.png", "high-nuclei-score-level0.png"),
        ("002.png", "medium-nuclei-score-level0.png"),
    ):
        Image.fromarray(load_rgb(shared_data / "tiles" / tile)).save(images_dir / name)
    annotations = tmp_path / "annotations.csv"
    annotations.write_text(
        "image,x,y,label,split\n001.png,100,120,mitotic figure,train\n002.png,50,60,mitotic figure,test\n"
    )
    before = _sha256(annotations)
    regions_dir = tmp_path / "regions"
    regions_dir.mkdir()
    # One necrosis region over the whole first image: every candidate there is a region negative.
    necrosis = {
        "type": "Feature",
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[0, 0], [4000, 0], [4000, 4000], [0, 4000], [0, 0]]],
        },
        "properties": {"classification": {"name": "Necrosis"}},
    }
    (regions_dir / "001.png.geojson").write_text(pd.Series([necrosis]).to_json(orient="values"))

    output = tmp_path / "out"
    code = main(
        [
            "mine",
            "images",
            "--model",
            str(detector.model_path),
            "--images",
            str(images_dir),
            "--annotations",
            str(annotations),
            "--image-mpp",
            "0.25",
            "--regions",
            str(regions_dir),
            "--score-thresh",
            "0.1",
            "--output",
            str(output),
        ]
    )
    report = pd.read_csv(output / "report.csv")
    assert code == 0
    assert _sha256(annotations) == before
    assert report.loc[0, "candidates_image"] > 0
    assert report.loc[0, "region_negatives"] == report.loc[0, "candidates_image"]
    assert (output / "report.md").is_file()
    assert set(read_negatives(output / "round1" / "negatives.csv")["image"]) == {"001.png"}


# Region-guided patches ---------------------------------------------------------------


def _patch_sampler():
    from midog.training.sampling import PatchSampler

    images = pd.DataFrame(
        {"image": ["001.tiff", "002.tiff"], "width": [2000, 2000], "height": [2000, 2000], "tumor": ["a", "b"]}
    )
    annotations = pd.DataFrame(
        {"image": ["001.tiff", "002.tiff"], "x": [500.0, 700.0], "y": [500.0, 700.0], "label": "mitotic figure"}
    )
    return PatchSampler(images, annotations, (256, 256), seed=3)


def _necrosis_regions(tmp_path: Path):
    from midog.io.regions import read_regions

    ring = [[1000, 1000], [1400, 1000], [1400, 1300], [1000, 1300], [1000, 1000]]
    feature = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"classification": {"name": "Necrosis"}},
    }
    path = tmp_path / "002.tiff.geojson"
    path.write_text(pd.Series([feature]).to_json(orient="values"))
    return {"002.tiff": read_regions(path)}


def test_region_patches_centred_inside(tmp_path):
    from midog.training.mining import RegionGuidedSampler

    regions = _necrosis_regions(tmp_path)
    sampler = RegionGuidedSampler(_patch_sampler(), regions, region_share=1.0)
    centres = np.array([np.add(sampler.choose(i).l0_xy, 128) for i in range(50)], dtype=np.float64)
    assert regions["002.tiff"].contains(centres).all()


def test_region_share_zero_keeps_choices(tmp_path):
    from midog.training.mining import RegionGuidedSampler

    base = _patch_sampler()
    sampler = RegionGuidedSampler(base, _necrosis_regions(tmp_path), region_share=0.0)
    assert [sampler.choose(i) for i in range(20)] == [base.choose(i) for i in range(20)]


def test_region_share_honoured(tmp_path):
    from midog.training.mining import RegionGuidedSampler

    sampler = RegionGuidedSampler(_patch_sampler(), _necrosis_regions(tmp_path), region_share=0.3)
    share = np.mean([sampler.choose(i).kind == "region" for i in range(2000)])
    assert share == pytest.approx(0.3, abs=0.04)
