"""Cross-validation results: per-fold, per-domain and summary tables, a Markdown report and plots.

:func:`midog.training.cv.run_cv` produces one :class:`FoldResult` per fold;
:func:`write_cv_report` turns them into ``cv_folds.csv``, ``cv_domains.csv``,
``cv_summary.csv``, ``cv_report.md``, ``f1_vs_threshold.png`` and
``f1_per_domain.png``, each written atomically. Plots use matplotlib's Agg
canvas through ``matplotlib.figure.Figure``, so no display and no pyplot
state are needed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from midog.evaluation.metrics import prf1
from midog.io.writers import atomic_output

__all__ = [
    "CV_GROUP_COLUMNS",
    "FoldResult",
    "domain_table",
    "fold_table",
    "plot_f1_per_domain",
    "plot_f1_vs_threshold",
    "render_markdown",
    "summarize_folds",
    "write_cv_report",
]

logger = logging.getLogger(__name__)

# Image-table columns reported per value: the MIDOG++ domains.
CV_GROUP_COLUMNS: tuple[str, ...] = ("tumor", "scanner", "lab", "species")

FoldStatus = Literal["done", "failed"]


@dataclass
class FoldResult:
    """Outcome of one fold.

    Attributes:
        fold: fold index.
        status: ``"done"`` or ``"failed"``.
        num_train: training images.
        num_val: validation images, which choose the threshold.
        num_test: held-out images, which give the fold's scores.
        threshold: score threshold chosen on the validation images.
        threshold_source: ``"validation"``, or ``"model default"`` when the
            validation images gave no detection.
        val_f1: F1 of the validation images at ``threshold``.
        test_rows: test report rows at ``threshold`` (``REPORT_COLUMNS`` of
            :mod:`midog.evaluation.metrics`: overall and per domain).
        test_sweep: test ``threshold``, ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``.
        oracle_f1: best test F1 of any threshold, the upper bound of the choice.
        seconds: wall time of this run of the fold.
        error: one-line error of a failed fold.
    """

    fold: int
    status: FoldStatus
    num_train: int = 0
    num_val: int = 0
    num_test: int = 0
    threshold: float = math.nan
    threshold_source: str = ""
    val_f1: float = math.nan
    test_rows: pd.DataFrame = field(default_factory=pd.DataFrame)
    test_sweep: pd.DataFrame = field(default_factory=pd.DataFrame)
    oracle_f1: float = math.nan
    seconds: float = math.nan
    error: str = ""

    def overall(self) -> pd.Series | None:
        """Return the overall test row at the chosen threshold, or None for a failed fold."""
        if self.test_rows.empty:
            return None
        rows = self.test_rows[self.test_rows["group_by"] == "overall"]
        return rows.iloc[0] if len(rows) else None


_FOLD_COLUMNS = (
    "fold",
    "status",
    "train_images",
    "val_images",
    "test_images",
    "threshold",
    "threshold_source",
    "val_f1",
    "ground_truth",
    "tp",
    "fp",
    "fn",
    "precision",
    "recall",
    "f1",
    "ap",
    "oracle_f1",
    "seconds",
    "error",
)
_DOMAIN_COLUMNS = (
    "fold",
    "group_by",
    "group",
    "images",
    "ground_truth",
    "tp",
    "fp",
    "fn",
    "precision",
    "recall",
    "f1",
    "ap",
)
_METRICS = ("f1", "precision", "recall", "ap")


def fold_table(results: Sequence[FoldResult]) -> pd.DataFrame:
    """Return one row per fold (``_FOLD_COLUMNS``), failed folds with their error."""
    rows = []
    for result in results:
        overall = result.overall()
        row: dict[str, Any] = {
            "fold": result.fold,
            "status": result.status,
            "train_images": result.num_train,
            "val_images": result.num_val,
            "test_images": result.num_test,
            "threshold": result.threshold,
            "threshold_source": result.threshold_source,
            "val_f1": result.val_f1,
            "oracle_f1": result.oracle_f1,
            "seconds": result.seconds,
            "error": result.error,
        }
        for column in ("ground_truth", "tp", "fp", "fn", "precision", "recall", "f1", "ap"):
            row[column] = overall[column] if overall is not None else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=list(_FOLD_COLUMNS))


def domain_table(results: Sequence[FoldResult]) -> pd.DataFrame:
    """Return the test rows of every finished fold (overall and per domain), with a ``fold`` column."""
    parts = [r.test_rows.assign(fold=r.fold) for r in results if r.status == "done" and not r.test_rows.empty]
    if not parts:
        return pd.DataFrame(columns=list(_DOMAIN_COLUMNS))
    table = pd.concat(parts, ignore_index=True)
    table["group"] = table["group"].astype(str)
    return table[list(_DOMAIN_COLUMNS)]


def summarize_folds(domains: pd.DataFrame) -> pd.DataFrame:
    """Return mean and sample sd over folds of each metric, per group, and the pooled F1.

    The pooled F1 sums TP, FP and FN of all folds, each at its own threshold,
    before computing F1. The sd is NaN for a group seen in one fold only.

    Args:
        domains: the output of :func:`domain_table`.

    Returns:
        Columns ``group_by``, ``group``, ``folds``, ``<metric>_mean`` and
        ``<metric>_sd`` for F1, precision, recall and AP, and ``f1_pooled``;
        the overall row first.
    """
    rows = []
    for (group_by, group), part in domains.groupby(["group_by", "group"], sort=False):
        row: dict[str, Any] = {"group_by": group_by, "group": group, "folds": len(part)}
        for metric in _METRICS:
            values = pd.to_numeric(part[metric], errors="coerce")
            row[f"{metric}_mean"] = float(values.mean())
            row[f"{metric}_sd"] = float(values.std(ddof=1)) if values.count() > 1 else math.nan
        row["f1_pooled"] = prf1(int(part["tp"].sum()), int(part["fp"].sum()), int(part["fn"].sum()))[2]
        rows.append(row)
    columns = (
        ["group_by", "group", "folds"]
        + [f"{m}_{s}" for m in _METRICS for s in ("mean", "sd")]
        + ["f1_pooled"]
    )
    return _sorted_by_group(pd.DataFrame(rows, columns=columns))


def _sorted_by_group(table: pd.DataFrame) -> pd.DataFrame:
    """Sort rows by ``group_by`` (overall, then ``CV_GROUP_COLUMNS`` order, then others) and ``group``."""
    rank = {name: i for i, name in enumerate(("overall", *CV_GROUP_COLUMNS))}
    group_by_rank = table["group_by"].map(lambda g: rank.get(g, len(rank)))
    return (
        table.assign(_rank=group_by_rank)
        .sort_values(["_rank", "group_by", "group"], kind="stable")
        .drop(columns="_rank")
        .reset_index(drop=True)
    )


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_markdown(
    folds: pd.DataFrame,
    domains: pd.DataFrame,
    summary: pd.DataFrame,
    title: str,
    val_fraction: float,
    radius_um: float,
) -> str:
    """Render the three tables as one Markdown report."""
    num_done = int((folds["status"] == "done").sum())
    failed = folds[folds["status"] == "failed"]
    parts = [
        f"# {title}\n",
        (
            f"{len(folds)} folds, {num_done} done, {len(failed)} failed. Each fold's score threshold is the "
            f"F1-optimal one on its validation images ({val_fraction:g} of the training groups). "
            "F1 is measured on the held-out fold at that threshold, with a hit radius of "
            f"{radius_um:g} µm. sd is the sample standard deviation over folds, and the pooled F1 "
            "sums TP, FP and FN over folds.\n"
        ),
        "## Mean ± sd over folds\n",
        _markdown_table(
            ["group_by", "group", "folds", "F1", "precision", "recall", "AP", "pooled F1"],
            [
                [
                    str(row["group_by"]),
                    str(row["group"]),
                    str(row["folds"]),
                    *(f"{_fmt(row[f'{m}_mean'])} ± {_fmt(row[f'{m}_sd'])}" for m in _METRICS[:3]),
                    f"{_fmt(row['ap_mean'])} ± {_fmt(row['ap_sd'])}",
                    _fmt(row["f1_pooled"]),
                ]
                for _, row in summary.iterrows()
            ],
        ),
        "## Per fold\n",
        _markdown_table(
            [
                "fold",
                "status",
                "train",
                "val",
                "test",
                "threshold",
                "val F1",
                "F1",
                "precision",
                "recall",
                "AP",
                "error",
            ],
            [
                [
                    str(row["fold"]),
                    str(row["status"]),
                    str(row["train_images"]),
                    str(row["val_images"]),
                    str(row["test_images"]),
                    _fmt(row["threshold"], 3),
                    _fmt(row["val_f1"]),
                    _fmt(row["f1"]),
                    _fmt(row["precision"]),
                    _fmt(row["recall"]),
                    _fmt(row["ap"]),
                    str(row["error"]) if row["error"] else "",
                ]
                for _, row in folds.iterrows()
            ],
        ),
    ]
    if not domains.empty:
        per_domain = domains[domains["group_by"] != "overall"].pivot_table(
            index=["group_by", "group"], columns="fold", values="f1", aggfunc="first"
        )
        order = _sorted_by_group(per_domain.index.to_frame(index=False))
        per_domain = per_domain.loc[list(zip(order["group_by"], order["group"]))]
        fold_ids = list(per_domain.columns)
        parts += [
            "## Test F1 per domain and fold\n",
            _markdown_table(
                ["group_by", "group", *(f"fold {f}" for f in fold_ids)],
                [
                    [str(g[0]), str(g[1]), *(_fmt(row[f]) for f in fold_ids)]
                    for g, row in per_domain.iterrows()
                ],
            ),
        ]
    return "\n".join(parts)


def _save_figure(figure: Any, path: Path) -> None:
    with atomic_output(path) as temporary_path:
        figure.savefig(temporary_path, format="png", dpi=120, bbox_inches="tight")


def plot_f1_vs_threshold(results: Sequence[FoldResult], path: Path) -> None:
    """Plot test F1 against the score threshold, one line per fold, marking the chosen threshold."""
    from matplotlib.figure import Figure  # the Agg canvas, without pyplot's global state

    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    for result in results:
        if result.status != "done" or result.test_sweep.empty:
            continue
        sweep = result.test_sweep.sort_values("threshold")
        # F1 at a threshold between two sweep points equals F1 at the upper one, hence steps-pre.
        line = axes.plot(
            sweep["threshold"], sweep["f1"], drawstyle="steps-pre", marker=".", label=f"fold {result.fold}"
        )[0]
        overall = result.overall()
        if overall is not None and np.isfinite(result.threshold):
            axes.plot([result.threshold], [overall["f1"]], "o", color=line.get_color())
    axes.set_xlabel("score threshold")
    axes.set_ylabel("test F1")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_title("Held-out F1 against threshold (dot: threshold chosen on validation)")
    if axes.lines:
        axes.legend(loc="lower left")
    _save_figure(figure, path)


def plot_f1_per_domain(domains: pd.DataFrame, path: Path) -> None:
    """Plot mean test F1 per domain value with sd bars and each fold as a dot, one panel per domain column."""
    from matplotlib.figure import Figure

    table = domains[domains["group_by"] != "overall"]
    group_bys = [g for g in CV_GROUP_COLUMNS if g in set(table["group_by"])]
    num_columns = min(2, max(1, len(group_bys)))
    num_rows = max(1, math.ceil(len(group_bys) / num_columns))
    figure = Figure(figsize=(6 * num_columns, 3.5 * num_rows), layout="constrained")
    if not group_bys:
        axes = figure.add_subplot()
        axes.text(0.5, 0.5, "no finished fold with domain values", ha="center", va="center")
        axes.set_axis_off()
    for index, group_by in enumerate(group_bys):
        axes = figure.add_subplot(num_rows, num_columns, index + 1)
        part = table[table["group_by"] == group_by]
        groups = sorted(part["group"].unique())
        values = [pd.to_numeric(part.loc[part["group"] == g, "f1"], errors="coerce").dropna() for g in groups]
        positions = np.arange(len(groups))
        means = [v.mean() if len(v) else np.nan for v in values]
        sds = [v.std(ddof=1) if len(v) > 1 else 0.0 for v in values]
        axes.barh(positions, means, xerr=sds, color="#9ecae1", capsize=3)
        for position, fold_values in zip(positions, values):
            axes.plot(fold_values, np.full(len(fold_values), position), "k.", markersize=4)
        axes.set_yticks(positions, groups, fontsize=8)
        axes.set_xlim(0, 1)
        axes.set_xlabel("test F1")
        axes.set_title(group_by)
    _save_figure(figure, path)


def write_cv_report(
    results: Sequence[FoldResult], work_dir: Path, title: str, val_fraction: float, radius_um: float
) -> list[Path]:
    """Write the fold, domain and summary tables, the Markdown report and the plots, atomically.

    Args:
        results: one result per fold.
        work_dir: the folder to write into, created if missing.
        title: the Markdown report's heading.
        val_fraction: share of the training groups that chose each threshold, for the report text.
        radius_um: hit radius of the matching in µm, for the report text.

    Returns:
        The written paths.

    Raises:
        OutputError: a file cannot be written.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    folds = fold_table(results)
    domains = domain_table(results)
    summary = summarize_folds(domains)
    paths = []
    for name, table in (("cv_folds.csv", folds), ("cv_domains.csv", domains), ("cv_summary.csv", summary)):
        with atomic_output(work_dir / name) as temporary_path:
            table.to_csv(temporary_path, index=False)
        paths.append(work_dir / name)
    report = work_dir / "cv_report.md"
    markdown = render_markdown(folds, domains, summary, title, val_fraction, radius_um)
    with atomic_output(report) as temporary_path:
        temporary_path.write_text(markdown, encoding="utf-8")
    paths.append(report)
    plot_f1_vs_threshold(results, work_dir / "f1_vs_threshold.png")
    plot_f1_per_domain(domains, work_dir / "f1_per_domain.png")
    paths += [work_dir / "f1_vs_threshold.png", work_dir / "f1_per_domain.png"]
    logger.info("wrote the cross-validation report to %s", work_dir)
    return paths
