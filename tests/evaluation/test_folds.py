"""Grouped, stratified fold splits on the real MIDOG++ tables and on small hand-made tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from midog.errors import AnnotationError, MidogError
from midog.evaluation.folds import count_per_fold, load_folds, make_folds, save_folds, split_validation
from midog.io.annotations import read_annotations

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def midogpp_images(shared_data: Path) -> pd.DataFrame:
    folder = shared_data / "midogpp"
    _, images = read_annotations(folder / "MIDOG++.json", domains_csv=folder / "datasets_xvalidation.csv")
    return images


@pytest.fixture(scope="module")
def midogpp_folds(midogpp_images: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The 5-fold split of MIDOG++, saved and read back as later runs do."""
    path = tmp_path_factory.mktemp("split") / "folds.csv"
    save_folds(make_folds(midogpp_images, n_folds=5, seed=0), path)
    return load_folds(path, midogpp_images)


def cases_table() -> pd.DataFrame:
    """12 images of 6 cases: 3 cases of tumour A with 3, 2, 1 images; 3 of tumour B with 2 images each."""
    rows = []
    cases = {"a1": ("A", 3), "a2": ("A", 2), "a3": ("A", 1), "b1": ("B", 2), "b2": ("B", 2), "b3": ("B", 2)}
    for case, (tumor, count) in cases.items():
        rows += [
            {"image": f"{case}_{i}.tiff", "case": case, "tumor": tumor, "labelled": True}
            for i in range(count)
        ]
    rows.append({"image": "unlabelled.tiff", "case": "u", "tumor": "A", "labelled": False})
    return pd.DataFrame(rows)


def write_split(path: Path, rows: str) -> Path:
    path.write_text("image,group,stratum,fold\n" + rows, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------
# The real MIDOG++ split
# ---------------------------------------------------------------------------


def test_midogpp_split_has_labelled_images(midogpp_folds: pd.DataFrame) -> None:
    assert len(midogpp_folds) == 503
    assert not midogpp_folds["image"].isin([f"{i:03d}.tiff" for i in range(151, 201)]).any()


def test_midogpp_split_no_image_twice(midogpp_folds: pd.DataFrame) -> None:
    assert midogpp_folds["image"].is_unique


def test_midogpp_split_no_case_twice(midogpp_folds: pd.DataFrame) -> None:
    # MIDOG++ has no case column: every image is its own case.
    assert (midogpp_folds["group"] == midogpp_folds["image"]).all()
    assert midogpp_folds.groupby("group")["fold"].nunique().max() == 1


def test_midogpp_split_five_folds(midogpp_folds: pd.DataFrame) -> None:
    assert sorted(midogpp_folds["fold"].unique()) == [0, 1, 2, 3, 4]


def test_midogpp_domain_shares_within_5pp(midogpp_folds: pd.DataFrame) -> None:
    counts = count_per_fold(midogpp_folds)
    shares = counts.div(counts["total"], axis=0).drop(columns="total")
    deviation_pp = (shares.drop(index="total") - shares.loc["total"]).abs() * 100
    assert set(shares.columns) == set(midogpp_folds["stratum"])
    assert len(shares.columns) == 7
    assert deviation_pp.max().max() <= 5.0


def test_midogpp_fold_sizes_balanced(midogpp_folds: pd.DataFrame) -> None:
    sizes = midogpp_folds["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 1


def test_midogpp_split_seeded(midogpp_images: pd.DataFrame, midogpp_folds: pd.DataFrame) -> None:
    again = make_folds(midogpp_images, n_folds=5, seed=0)
    other = make_folds(midogpp_images, n_folds=5, seed=1)
    assert again["fold"].tolist() == midogpp_folds["fold"].tolist()
    assert other["fold"].tolist() != midogpp_folds["fold"].tolist()


def test_midogpp_split_two_strata_columns(midogpp_images: pd.DataFrame) -> None:
    folds = make_folds(midogpp_images, n_folds=5, stratify_column=("tumor", "scanner"), seed=0)
    counts = count_per_fold(folds).drop(index="total").drop(columns="total")
    assert "human breast cancer / Hamamatsu S360" in counts.columns
    assert (counts.max() - counts.min()).max() <= 1


def test_midogpp_reuse_from_file(
    midogpp_images: pd.DataFrame, midogpp_folds: pd.DataFrame, tmp_path: Path
) -> None:
    path = save_folds(midogpp_folds, tmp_path / "folds.csv")
    loaded = load_folds(path, midogpp_images)
    pd.testing.assert_frame_equal(loaded, midogpp_folds)


def test_midogpp_validation_part(midogpp_folds: pd.DataFrame) -> None:
    roles = split_validation(midogpp_folds, test_fold=2, val_fraction=0.1, seed=0)
    counts = roles["role"].value_counts()
    training_images = int((midogpp_folds["fold"] != 2).sum())
    assert counts["test"] == int((midogpp_folds["fold"] == 2).sum())
    assert counts["val"] == round(0.1 * training_images)
    assert roles.loc[roles["role"] == "val", "fold"].ne(2).all()
    # Every tumour type gives validation images.
    assert roles.loc[roles["role"] == "val", "stratum"].nunique() == 7


def test_folds_module_imports_no_torch() -> None:
    code = "import sys, midog.evaluation.folds, midog.evaluation.cv_report; print('torch' in sys.modules)"
    output = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert output.stdout.strip() == "False"


# ---------------------------------------------------------------------------
# Groups and settings on a small table
# ---------------------------------------------------------------------------


def test_case_column_groups_images() -> None:
    folds = make_folds(cases_table(), n_folds=3, seed=0)
    assert folds.groupby("group")["fold"].nunique().max() == 1
    assert set(folds["group"]) == {"a1", "a2", "a3", "b1", "b2", "b3"}


def test_case_split_stratified() -> None:
    folds = make_folds(cases_table(), n_folds=3, seed=0)
    per_fold_b = folds[folds["stratum"] == "B"].groupby("fold").size()
    assert per_fold_b.tolist() == [2, 2, 2]


def test_unlabelled_images_left_out() -> None:
    folds = make_folds(cases_table(), n_folds=2, seed=0)
    assert "unlabelled.tiff" not in set(folds["image"])


def test_explicit_group_column() -> None:
    table = cases_table().rename(columns={"case": "patient"})
    folds = make_folds(table, n_folds=3, group_column="patient", seed=3)
    assert folds.groupby("group")["fold"].nunique().max() == 1


def test_without_case_column_each_image_a_group() -> None:
    folds = make_folds(cases_table().drop(columns="case"), n_folds=4, seed=0)
    assert (folds["group"] == folds["image"]).all()


def test_missing_domain_is_unknown_stratum() -> None:
    table = cases_table()
    table.loc[0, "tumor"] = None
    folds = make_folds(table, n_folds=2, group_column=None, stratify_column="tumor", seed=0)
    assert "(unknown)" in set(folds["stratum"])


def test_too_few_groups_rejected() -> None:
    with pytest.raises(MidogError, match="only 6 groups of labelled images for 7 folds"):
        make_folds(cases_table(), n_folds=7)


def test_one_fold_rejected() -> None:
    with pytest.raises(MidogError, match="at least 2"):
        make_folds(cases_table(), n_folds=1)


def test_unknown_group_column_rejected() -> None:
    with pytest.raises(AnnotationError, match="no column 'slide'"):
        make_folds(cases_table(), n_folds=2, group_column="slide")


def test_empty_group_value_rejected() -> None:
    table = cases_table()
    table.loc[2, "case"] = None
    with pytest.raises(AnnotationError, match="1 images have no 'case' value"):
        make_folds(table, n_folds=2)


def test_validation_keeps_groups_whole() -> None:
    folds = make_folds(cases_table(), n_folds=2, seed=0)
    roles = split_validation(folds, test_fold=0, val_fraction=0.4, seed=0)
    assert roles.groupby("group")["role"].nunique().max() == 1
    assert (roles["role"] == "val").any()
    assert (roles["role"] == "train").any()


def test_validation_seeded() -> None:
    folds = make_folds(cases_table().drop(columns="case"), n_folds=2, seed=0)
    first = split_validation(folds, test_fold=1, val_fraction=0.4, seed=5)
    second = split_validation(folds, test_fold=1, val_fraction=0.4, seed=5)
    assert first["role"].tolist() == second["role"].tolist()


def test_validation_bad_fraction() -> None:
    folds = make_folds(cases_table(), n_folds=2, seed=0)
    with pytest.raises(MidogError, match="between 0 and 1"):
        split_validation(folds, test_fold=0, val_fraction=1.0)


def test_validation_unknown_fold() -> None:
    folds = make_folds(cases_table(), n_folds=2, seed=0)
    with pytest.raises(MidogError, match="fold 4 is not in the split"):
        split_validation(folds, test_fold=4)


# ---------------------------------------------------------------------------
# Loading a split
# ---------------------------------------------------------------------------


def test_load_unknown_image(tmp_path: Path) -> None:
    path = write_split(tmp_path / "folds.csv", "a1_0.tiff,a1,A,0\nz.tiff,z,A,1\n")
    with pytest.raises(AnnotationError, match=r"names 1 images that the annotations do not have \(z.tiff\)"):
        load_folds(path, cases_table())


def test_load_group_in_two_folds(tmp_path: Path) -> None:
    path = write_split(tmp_path / "folds.csv", "a1_0.tiff,a1,A,0\na1_1.tiff,a1,A,1\nb1_0.tiff,b1,B,1\n")
    with pytest.raises(AnnotationError, match="puts groups in more than one fold: a1"):
        load_folds(path)


def test_load_unlabelled_image(tmp_path: Path) -> None:
    path = write_split(tmp_path / "folds.csv", "a1_0.tiff,a1,A,0\nunlabelled.tiff,u,A,1\n")
    with pytest.raises(AnnotationError, match="images without annotations"):
        load_folds(path, cases_table())


def test_load_image_twice(tmp_path: Path) -> None:
    path = write_split(tmp_path / "folds.csv", "a1_0.tiff,a1,A,0\na1_0.tiff,a1,A,0\nb1_0.tiff,b1,B,1\n")
    with pytest.raises(AnnotationError, match="lists images twice: a1_0.tiff"):
        load_folds(path)


def test_load_fold_gap(tmp_path: Path) -> None:
    path = write_split(tmp_path / "folds.csv", "a1_0.tiff,a1,A,0\nb1_0.tiff,b1,B,2\n")
    with pytest.raises(AnnotationError, match=r"has folds \[0, 2\]"):
        load_folds(path)


def test_load_bad_fold_value(tmp_path: Path) -> None:
    path = write_split(tmp_path / "folds.csv", "a1_0.tiff,a1,A,zero\nb1_0.tiff,b1,B,1\n")
    with pytest.raises(AnnotationError, match="fold 'zero' of image a1_0.tiff is not a non-negative integer"):
        load_folds(path)


def test_load_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "folds.csv"
    path.write_text("image,group\na1_0.tiff,a1\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match="lacks the column"):
        load_folds(path)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="not found"):
        load_folds(tmp_path / "absent.csv")


def test_load_minimal_columns(tmp_path: Path) -> None:
    path = tmp_path / "folds.csv"
    path.write_text("image,fold\na1_0.tiff,0\nb1_0.tiff,1\n", encoding="utf-8")
    folds = load_folds(path, cases_table())
    assert folds["group"].tolist() == ["a1_0.tiff", "b1_0.tiff"]
    assert folds["fold"].tolist() == [0, 1]


def test_load_warns_left_out_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_split(tmp_path / "folds.csv", "a1_0.tiff,a1,A,0\nb1_0.tiff,b1,B,1\n")
    load_folds(path, cases_table())
    assert "10 labelled images are not in split file" in caplog.text
