"""Grouped, domain-stratified k-fold splits of an image table for cross-validation.

A split assigns every labelled image to one of ``n_folds`` folds so that

* all images of a group (a case or slide) share one fold, so no case is
  seen in training and in testing, and
* every fold contains about the same share of each domain (tumour type by
  default) as the whole data set.

Folds are numbered from 0. The split is stored as a CSV with the columns
``image``, ``group``, ``stratum`` and ``fold``, so the same split can be
reused by later runs and other tools. Only pandas and numpy are used here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from midog.errors import AnnotationError, MidogError

__all__ = [
    "DEFAULT_GROUP_COLUMN",
    "DEFAULT_STRATIFY_COLUMN",
    "FOLD_COLUMNS",
    "UNKNOWN_STRATUM",
    "count_per_fold",
    "load_folds",
    "make_folds",
    "save_folds",
    "split_validation",
]

logger = logging.getLogger(__name__)

# Images sharing a value of this column form one group. Without it, as in
# MIDOG++, where every image comes from its own case, each image is a group.
DEFAULT_GROUP_COLUMN = "case"
DEFAULT_STRATIFY_COLUMN = "tumor"
UNKNOWN_STRATUM = "(unknown)"
FOLD_COLUMNS: tuple[str, ...] = ("image", "group", "stratum", "fold")

# Separates the values of several stratify columns in the stratum name.
_STRATUM_SEPARATOR = " / "
_MAX_EXAMPLES = 5


def _examples(values: Sequence[object]) -> str:
    shown = ", ".join(str(v) for v in list(values)[:_MAX_EXAMPLES])
    return shown + (", ..." if len(values) > _MAX_EXAMPLES else "")


def _as_columns(columns: str | Sequence[str] | None) -> tuple[str, ...]:
    if columns is None:
        return ()
    if isinstance(columns, str):
        return (columns,)
    return tuple(columns)


def _stratum_of_rows(table: pd.DataFrame, columns: tuple[str, ...]) -> pd.Series:
    if not columns:
        return pd.Series("all", index=table.index, dtype=object)
    parts = [
        table[c].map(lambda v: UNKNOWN_STRATUM if pd.isna(v) or str(v).strip() == "" else str(v))
        for c in columns
    ]
    strata = parts[0].astype(str)
    for part in parts[1:]:
        strata = strata + _STRATUM_SEPARATOR + part.astype(str)
    return strata


def _group_of_rows(table: pd.DataFrame, group_column: str | None) -> pd.Series:
    if group_column is None:
        return table["image"].astype(str)
    missing = table[group_column].isna() | (table[group_column].astype(str).str.strip() == "")
    if missing.any():
        raise AnnotationError(
            f"{int(missing.sum())} images have no {group_column!r} value ({_examples(table.loc[missing, 'image'].tolist())}); "
            f"fill the column or choose another group column"
        )
    return table[group_column].astype(str).str.strip()


def _assign_groups(group_counts: pd.DataFrame, n_folds: int, rng: np.random.Generator) -> dict[str, int]:
    """Assign groups to folds greedily, largest group first, balancing each stratum's count.

    Each group goes to the fold where adding it least increases the sum over
    strata of ``(count - target)² / target``, with ``target`` a stratum's
    total divided by ``n_folds``. Ties go to the fold with fewer images, then
    to a random fold.

    Args:
        group_counts: ``(groups, strata)`` image counts, indexed by group.
        n_folds: number of folds.
        rng: source of the random group order and tie breaks.

    Returns:
        Fold index of every group.
    """
    counts = group_counts.to_numpy(dtype=np.float64)  # [G, S]
    targets = counts.sum(axis=0) / n_folds  # [S]
    sizes = counts.sum(axis=1)  # [G]

    # A random order first, so that groups of equal size are taken in a seeded order.
    order = rng.permutation(len(counts))
    order = order[np.argsort(-sizes[order], kind="stable")]

    fold_counts = np.zeros((n_folds, counts.shape[1]))  # [K, S]
    assignment: dict[str, int] = {}
    for index in order:
        group_vector = counts[index]
        increase = (group_vector * (2.0 * (fold_counts - targets) + group_vector) / targets).sum(
            axis=1
        )  # [K]
        fold_sizes = fold_counts.sum(axis=1)
        tie_break = rng.random(n_folds)
        # np.lexsort sorts by the last key first.
        fold = int(np.lexsort((tie_break, fold_sizes, np.round(increase, 9)))[0])
        fold_counts[fold] += group_vector
        assignment[str(group_counts.index[index])] = fold
    return assignment


def make_folds(
    images: pd.DataFrame,
    n_folds: int = 5,
    group_column: str | None = None,
    stratify_column: str | Sequence[str] | None = DEFAULT_STRATIFY_COLUMN,
    seed: int = 0,
) -> pd.DataFrame:
    """Split the labelled images into grouped folds stratified by domain.

    Args:
        images: image table of :func:`midog.io.annotations.read_annotations`;
            needs ``image``, and uses ``labelled`` where present to drop
            unannotated images.
        n_folds: number of folds, at least 2.
        group_column: column whose equal values must share a fold; None uses
            ``"case"`` where the table has it, else every image is a group.
        stratify_column: domain column (or columns, combined) whose shares
            every fold should match; None balances fold sizes only. Missing
            values form the stratum ``"(unknown)"``.
        seed: seed of the group order and tie breaks; the same table and
            seed give the same split.

    Returns:
        One row per labelled image with columns ``image`` (str), ``group``
        (str), ``stratum`` (str) and ``fold`` (int, 0 to ``n_folds - 1``),
        sorted by image.

    Raises:
        MidogError: ``n_folds`` is below 2 or above the number of groups.
        AnnotationError: a named column is missing, an image is listed twice,
            or an image has no group value.
    """
    if n_folds < 2:
        raise MidogError(f"the number of folds must be at least 2, got {n_folds}")
    strata_columns = _as_columns(stratify_column)
    if group_column is None and DEFAULT_GROUP_COLUMN in images.columns:
        group_column = DEFAULT_GROUP_COLUMN
    for column in ("image", *strata_columns, *([group_column] if group_column else [])):
        if column not in images.columns:
            raise AnnotationError(
                f"the image table has no column {column!r} to split by; columns: {', '.join(map(str, images.columns))}"
            )

    table = images
    if "labelled" in images.columns:
        table = images[images["labelled"].astype(bool)]
        if len(table) < len(images):
            logger.info(
                "splitting %d labelled images; %d unlabelled images left out",
                len(table),
                len(images) - len(table),
            )
    duplicated = table["image"][table["image"].duplicated()]
    if len(duplicated):
        raise AnnotationError(
            f"images listed twice in the image table: {_examples(duplicated.unique().tolist())}"
        )

    folds = pd.DataFrame(
        {
            "image": table["image"].astype(str).to_numpy(),
            "group": _group_of_rows(table, group_column).to_numpy(),
            "stratum": _stratum_of_rows(table, strata_columns).to_numpy(),
        }
    )
    num_groups = folds["group"].nunique()
    if num_groups < n_folds:
        raise MidogError(
            f"only {num_groups} groups of labelled images for {n_folds} folds; use at most {num_groups} folds"
        )

    group_counts = pd.crosstab(folds["group"], folds["stratum"])
    assignment = _assign_groups(group_counts, n_folds, np.random.default_rng(seed))
    folds["fold"] = folds["group"].map(assignment).astype(np.int64)
    folds = folds.sort_values("image", kind="stable").reset_index(drop=True)
    logger.info(
        "split %d images in %d groups into %d folds of %s images, stratified by %s (seed %d)",
        len(folds),
        num_groups,
        n_folds,
        "/".join(str(n) for n in folds["fold"].value_counts().sort_index()),
        ", ".join(strata_columns) or "nothing",
        seed,
    )
    return folds[list(FOLD_COLUMNS)]


def split_validation(
    folds: pd.DataFrame, test_fold: int, val_fraction: float = 0.1, seed: int = 0
) -> pd.DataFrame:
    """Assign the roles ``train``, ``val`` and ``test`` for one cross-validation fold.

    The images of ``test_fold`` are ``test``. Of the other folds' groups,
    ``round(val_fraction * groups)`` become ``val``, at least 1 and at most
    all but 1. They are shared among the strata by the largest remainder, so
    each stratum gives about ``val_fraction`` of its groups, and drawn at
    random with the seed ``seed + test_fold``. A group whose images lie in
    several strata counts for its most frequent one.

    Args:
        folds: a split of :func:`make_folds` or :func:`load_folds`.
        test_fold: the held-out fold.
        val_fraction: share of the training folds' groups used for validation,
            in ``(0, 1)``.
        seed: base seed of the draw.

    Returns:
        ``folds`` with a column ``role`` (``"train"``, ``"val"`` or ``"test"``).

    Raises:
        MidogError: ``test_fold`` is not a fold of ``folds``, ``val_fraction``
            is outside ``(0, 1)``, or the training folds hold fewer than 2 groups.
    """
    if test_fold not in set(folds["fold"]):
        raise MidogError(
            f"fold {test_fold} is not in the split, which has folds {sorted(set(folds['fold']))}"
        )
    if not 0.0 < val_fraction < 1.0:
        raise MidogError(f"the validation fraction must be between 0 and 1, got {val_fraction}")

    out = folds.copy()
    out["role"] = np.where(out["fold"] == test_fold, "test", "train")
    training = out[out["role"] == "train"]
    strata = training["stratum"] if "stratum" in training.columns else pd.Series("all", index=training.index)
    group_stratum = strata.groupby(training["group"]).agg(lambda s: s.value_counts().index[0])
    num_groups = len(group_stratum)
    if num_groups < 2:
        raise MidogError(
            f"the training folds of fold {test_fold} hold {num_groups} group; a validation part needs at least 2"
        )

    num_val = min(max(1, round(val_fraction * num_groups)), num_groups - 1)
    per_stratum = group_stratum.value_counts().sort_index()
    exact = per_stratum * (num_val / num_groups)
    allocation = np.floor(exact).astype(int)
    # Largest remainder; ties go to the stratum first in sorted order.
    remainders = (exact - allocation).sort_values(ascending=False, kind="stable")
    for stratum in remainders.index[: num_val - int(allocation.sum())]:
        allocation[stratum] += 1

    rng = np.random.default_rng(seed + test_fold)
    val_groups: list[str] = []
    for stratum, count in allocation.items():
        candidates = sorted(group_stratum.index[group_stratum == stratum])
        val_groups.extend(rng.choice(candidates, size=int(count), replace=False).tolist())
    out.loc[out["group"].isin(val_groups) & (out["role"] == "train"), "role"] = "val"
    return out


def count_per_fold(folds: pd.DataFrame) -> pd.DataFrame:
    """Count images per fold and stratum, with a total column and row.

    Returns:
        An integer table indexed by fold (and ``"total"``), one column per
        stratum plus ``"total"``.
    """
    strata = folds["stratum"] if "stratum" in folds.columns else pd.Series("all", index=folds.index)
    return pd.crosstab(folds["fold"], strata, margins=True, margins_name="total")


def save_folds(folds: pd.DataFrame, path: str | Path) -> Path:
    """Write a split as CSV (``image,group,stratum,fold``), atomically.

    Raises:
        OutputError: the file cannot be written.
    """
    from midog.io.writers import atomic_output

    path = Path(path)
    columns = [c for c in FOLD_COLUMNS if c in folds.columns]
    with atomic_output(path) as temporary_path:
        folds[columns].to_csv(temporary_path, index=False)
    return path


def load_folds(path: str | Path, images: pd.DataFrame | None = None) -> pd.DataFrame:
    """Read and check a split written by :func:`save_folds` or by hand.

    The file needs ``image`` and ``fold`` (integers from 0); ``group``
    (default: the image) and ``stratum`` (default: ``"all"``) are optional.

    Args:
        path: the CSV file.
        images: the image table the split is used with; when given, every
            image of the split must be one of its labelled images. Labelled
            images missing from the split are left out with a warning.

    Returns:
        The split with columns ``FOLD_COLUMNS``, sorted by image.

    Raises:
        AnnotationError: the file is missing or unreadable, or lacks a column.
            Also when a fold is not a non-negative integer or a fold number
            is skipped, an image is listed twice or a group lies in two
            folds, or an image is not among the labelled images of ``images``.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"split file {path} not found; pass a CSV written by 'midog cv'")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
        raise AnnotationError(f"split file {path} is not a readable CSV: {exc}") from exc
    missing = [c for c in ("image", "fold") if c not in table.columns]
    if missing:
        raise AnnotationError(
            f"split file {path} lacks the column(s) {', '.join(missing)}; expected {','.join(FOLD_COLUMNS)}"
        )
    table["image"] = table["image"].str.strip()
    if "group" not in table.columns:
        table["group"] = table["image"]
    if "stratum" not in table.columns:
        table["stratum"] = "all"

    fold_text = table["fold"].str.strip()
    bad = ~fold_text.str.fullmatch(r"\d+")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise AnnotationError(
            f"split file {path}: fold {table['fold'].iloc[row]!r} of image {table['image'].iloc[row]} "
            "is not a non-negative integer"
        )
    table["fold"] = fold_text.astype(np.int64)
    present = sorted(set(table["fold"]))
    if present != list(range(len(present))) or len(present) < 2:
        raise AnnotationError(
            f"split file {path} has folds {present}; expected at least 2 folds numbered 0, 1, ... without gaps"
        )

    duplicated = table["image"][table["image"].duplicated()]
    if len(duplicated):
        raise AnnotationError(
            f"split file {path} lists images twice: {_examples(duplicated.unique().tolist())}"
        )
    folds_per_group = table.groupby("group")["fold"].nunique()
    split_groups = folds_per_group.index[folds_per_group > 1].tolist()
    if split_groups:
        raise AnnotationError(
            f"split file {path} puts groups in more than one fold: {_examples(split_groups)}; "
            "every group's images must share a fold"
        )

    if images is not None:
        known = set(images["image"].astype(str))
        unknown = sorted(set(table["image"]) - known)
        if unknown:
            raise AnnotationError(
                f"split file {path} names {len(unknown)} images that the annotations do not have "
                f"({_examples(unknown)}); make the split from the same annotation file"
            )
        if "labelled" in images.columns:
            labelled = set(images.loc[images["labelled"].astype(bool), "image"].astype(str))
            unlabelled = sorted(set(table["image"]) - labelled)
            if unlabelled:
                raise AnnotationError(
                    f"split file {path} names {len(unlabelled)} images without annotations "
                    f"({_examples(unlabelled)}); remove them from the split"
                )
        else:
            labelled = known
        left_out = sorted(labelled - set(table["image"]))
        if left_out:
            logger.warning(
                "%d labelled images are not in split file %s and are left out (%s)",
                len(left_out),
                path,
                _examples(left_out),
            )
    return table[list(FOLD_COLUMNS)].sort_values("image", kind="stable").reset_index(drop=True)
