"""Per-image domain metadata: tumour type, scanner, lab, species, split and ROI type.

The domains come from the annotation file itself or from a companion table
such as MIDOG++ ``datasets_xvalidation.csv``. They are read here, joined to
an image table of :mod:`midog.io.annotations`, and checked, so that every
image without a domain and every table row without an image is reported.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from midog.errors import AnnotationError

__all__ = ["DOMAIN_COLUMNS", "MIDOGPP_TUMOR_TYPES", "read_domains_csv"]

logger = logging.getLogger(__name__)

DOMAIN_COLUMNS: tuple[str, ...] = ("tumor", "scanner", "lab", "species", "split")

# The seven tumour types of MIDOG++, as spelled in MIDOG++.json.
MIDOGPP_TUMOR_TYPES: tuple[str, ...] = (
    "human breast cancer",
    "canine lung cancer",
    "canine lymphosarcoma",
    "canine cutaneous mast cell tumor",
    "human neuroendocrine tumor",
    "canine soft tissue sarcoma",
    "human melanoma",
)

# datasets_xvalidation.csv spells a scanner and a tumour differently from MIDOG++.json
# ("Hamammatsu XR", "canine lymphoma"). One spelling per domain keeps each group whole.
_DOMAIN_ALIASES: dict[str, dict[str, str]] = {
    "tumor": {"canine lymphoma": "canine lymphosarcoma"},
    "scanner": {"Hamammatsu XR": "Hamamatsu XR"},
}

# Column names of a domains CSV (lower case) -> domain column.
_DOMAIN_CSV_COLUMNS: dict[str, str] = {
    "dataset": "split",
    "split": "split",
    "tumor": "tumor",
    "tumour": "tumor",
    "tumor_type": "tumor",
    "scanner": "scanner",
    "origin": "lab",
    "lab": "lab",
    "species": "species",
    "roi_type": "roi_type",
    "roi type": "roi_type",
}
_DOMAIN_CSV_KEYS: tuple[str, ...] = ("slide", "image", "image_id", "file_name")

_MAX_EXAMPLES = 5


# ---------------------------------------------------------------------------
# Helpers shared with midog.io.annotations
# ---------------------------------------------------------------------------


def _format_counts(counts: Mapping[Any, int]) -> str:
    return ", ".join(f"{key!s} ({count})" for key, count in sorted(counts.items(), key=lambda kv: -kv[1]))


def _examples(values: Iterable[Any]) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:_MAX_EXAMPLES])
    return shown + (", ..." if len(values) > _MAX_EXAMPLES else "")


def _object_column(values: Iterable[Any], index: pd.Index) -> pd.Series:
    """Return an object column with None for every missing value (pandas would store NaN)."""
    return pd.Series([_none_if_missing(v) for v in values], index=index, dtype=object)


def _none_if_missing(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass  # a list or tuple, such as expert votes
    return value


def _check_file(path: Path) -> None:
    if not path.exists():
        raise AnnotationError(f"file {path} not found; check the path")
    if path.is_dir():
        raise AnnotationError(f"{path} is a directory; pass a file")


def _read_csv_table(path: Path) -> pd.DataFrame:
    try:
        with path.open("r", encoding="utf-8") as f:
            header = f.readline()
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"{path}: not a UTF-8 text file") from exc
    if header.count(";") > header.count(","):
        sep = ";"
    elif "\t" in header:
        sep = "\t"
    else:
        sep = ","
    try:
        return pd.read_csv(path, sep=sep)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise AnnotationError(f"{path}: invalid CSV ({exc})") from exc


# ---------------------------------------------------------------------------
# Domain tables
# ---------------------------------------------------------------------------


def read_domains_csv(path: str | Path) -> pd.DataFrame:
    """Read a per-image domain table such as MIDOG++ ``datasets_xvalidation.csv``.

    The file is ``;``- or ``,``-separated with a key column (``Slide``,
    ``image``, ``image_id`` or ``file_name``) and any of ``Dataset``
    (-> ``split``), ``Tumor``, ``Scanner``, ``Origin`` (-> ``lab``),
    ``Species`` and ``roi_type``, in any letter case. Known misspellings
    (``Hamammatsu XR``, ``canine lymphoma``) are mapped to the MIDOG++ names.

    Args:
        path: the CSV file.

    Returns:
        DataFrame with ``key`` (str: slide id or image name) and the domain
        columns found, one row per image.

    Raises:
        AnnotationError: the file is missing, unreadable, has no key column
            or lists an image twice.
    """
    path = Path(path)
    _check_file(path)
    frame = _read_csv_table(path)
    lower = {str(c).strip().lower(): c for c in frame.columns}
    key_column = next((lower[k] for k in _DOMAIN_CSV_KEYS if k in lower), None)
    if key_column is None:
        raise AnnotationError(
            f"{path}: domains CSV needs a key column named Slide, image, image_id or file_name; "
            f"found {', '.join(map(str, frame.columns))}"
        )
    out = pd.DataFrame({"key": frame[key_column].astype(str).str.strip()})
    for name, column in lower.items():
        target = _DOMAIN_CSV_COLUMNS.get(name)
        if target is not None and target not in out:
            out[target] = frame[column].map(_none_if_missing)
            out[target] = out[target].map(lambda v: None if v is None else str(v).strip())
    if len(out.columns) == 1:
        raise AnnotationError(
            f"{path}: domains CSV has no domain column (Dataset, Tumor, Scanner, Origin, Species)"
        )
    duplicated = out["key"][out["key"].duplicated()]
    if len(duplicated):
        raise AnnotationError(f"{path}: images listed twice: {_examples(duplicated.unique())}")
    return _apply_domain_aliases(out, source=path)


def _apply_domain_aliases(frame: pd.DataFrame, source: Path) -> pd.DataFrame:
    for column, aliases in _DOMAIN_ALIASES.items():
        if column not in frame:
            continue
        for wrong, right in aliases.items():
            hits = frame[column] == wrong
            if hits.any():
                logger.info("%s: %d %s values %r read as %r", source, int(hits.sum()), column, wrong, right)
                frame.loc[hits, column] = right
    return frame


def _key_of_image(image_table: pd.DataFrame, keys: pd.Series) -> pd.Series:
    """Return, per image row, the domains-CSV key it matches (image id, name or stem)."""
    key_set = set(keys)
    ids = image_table["image_id"].map(lambda v: None if _none_if_missing(v) is None else str(v))
    names = image_table["image"].astype(str)
    stems = names.map(lambda s: Path(s).stem)
    out = []
    for image_id, name, stem in zip(ids, names, stems):
        if image_id is not None and image_id in key_set:
            out.append(image_id)
        elif name in key_set:
            out.append(name)
        elif stem in key_set:
            out.append(stem)
        elif stem.lstrip("0") in key_set:
            out.append(stem.lstrip("0"))
        else:
            out.append(None)
    return pd.Series(out, index=image_table.index, dtype=object)


def _merge_domains(path: Path, image_table: pd.DataFrame, domains: pd.DataFrame, domains_path: Path) -> None:
    """Fill the image table's domain columns from ``domains``, in place."""
    keys = _key_of_image(image_table, domains["key"])
    by_key = domains.set_index("key")

    unmatched = image_table.loc[keys.isna()]
    unmatched_labelled = unmatched.loc[unmatched["labelled"].astype(bool), "image"]
    if len(unmatched_labelled):
        logger.warning(
            "%d labelled images of %s have no row in %s (%s); their domains from that file stay unknown",
            len(unmatched_labelled),
            path,
            domains_path,
            _examples(unmatched_labelled),
        )
    if len(unmatched) > len(unmatched_labelled):
        logger.info(
            "%d unlabelled images of %s have no row in %s",
            len(unmatched) - len(unmatched_labelled),
            path,
            domains_path,
        )
    unused = sorted(set(domains["key"]) - set(keys.dropna()))
    if unused:
        logger.warning(
            "%d rows of %s match no image of %s (%s)", len(unused), domains_path, path, _examples(unused)
        )

    conflicts: Counter[str] = Counter()
    for column in by_key.columns:
        values = [None if k is None else _none_if_missing(by_key.at[k, column]) for k in keys]
        current = [_none_if_missing(v) for v in image_table[column]]
        differs = sum(c is not None and v is not None and c != v for c, v in zip(current, values))
        if differs:
            conflicts[column] += differs
        image_table[column] = _object_column(
            (c if c is not None else v for c, v in zip(current, values)), image_table.index
        )
    if conflicts:
        logger.warning(
            "%s and %s disagree on %s; the annotation file's values are kept",
            path,
            domains_path,
            _format_counts(conflicts),
        )


def _report_domains(path: Path, image_table: pd.DataFrame) -> None:
    labelled = image_table[image_table["labelled"].astype(bool)]
    tumors = labelled["tumor"].map(_none_if_missing)
    if tumors.isna().all():
        logger.info("%s: no tumour types given; pass a domains CSV for per-tumour results", path)
    elif tumors.isna().any():
        logger.warning(
            "%s: %d labelled images have no tumour type (%s); per-tumour results list them as unknown",
            path,
            int(tumors.isna().sum()),
            _examples(labelled.loc[tumors.isna(), "image"]),
        )
    other = tumors.dropna()
    other = other[~other.isin(MIDOGPP_TUMOR_TYPES)]
    # Tumour codes of the MIDOG challenge ground truth are numbers, not names.
    other = other[~other.astype(str).str.fullmatch(r"\d+")]
    if len(other):
        logger.warning(
            "%s: tumour types outside the MIDOG++ set: %s; per-tumour results list them as given",
            path,
            _format_counts(Counter(other)),
        )
