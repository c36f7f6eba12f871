"""Domain-balanced choice of training patches from annotated images, without reading pixels.

Each training item is one patch of a large image. :class:`PatchSampler` decides, from
the item's index alone, which domain, patch kind, image and position it shows:

1. a domain (a value of one image-table column, such as the tumour type), drawn with
   the configured weights or uniformly;
2. a patch kind: centred on a mitotic figure, centred on an imposter, or at a random
   position, drawn with the configured weights;
3. an image of that domain that has at least one cell of that kind (any image of the
   domain for random patches), uniformly;
4. for centred kinds, one cell of that kind in the image, uniformly, and the patch
   origin so that the cell lies at the patch centre plus a random offset of up to
   ``jitter_px`` in x and y. The patch is then shifted, where the image is large
   enough, so that it lies inside the image; the cell stays inside the patch.

Drawing the kind before the image keeps the kind shares at their configured weights
even where some images have no cell of a kind (28 MIDOG++ images have no mitotic
figure). The random generator of item ``i`` is seeded with ``(seed, i)``, so every
data-loader worker and every rerun draws the same patch for the same index.

Nothing here reads images or imports torch; :func:`patch_boxes` turns the cells
inside a chosen patch into boxes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from midog.errors import AnnotationError, MidogError

__all__ = [
    "DEFAULT_PATCH_KIND_WEIGHTS",
    "PATCH_KINDS",
    "PatchChoice",
    "PatchKind",
    "PatchSampler",
    "max_jitter_px",
    "patch_boxes",
    "patch_size_pair",
]

logger = logging.getLogger(__name__)

PatchKind = Literal["mitotic figure", "imposter", "random"]
PATCH_KINDS: tuple[PatchKind, ...] = ("mitotic figure", "imposter", "random")

# Half the patches are centred on a mitotic figure, a quarter on an imposter
# (hard negatives) and a quarter are placed at random.
DEFAULT_PATCH_KIND_WEIGHTS: dict[str, float] = {"mitotic figure": 0.5, "imposter": 0.25, "random": 0.25}


@dataclass(frozen=True)
class PatchChoice:
    """One sampled patch.

    Attributes:
        index: the dataset index the patch was drawn for.
        domain: the domain drawn, a value of the sampler's domain column.
        kind: ``"mitotic figure"``, ``"imposter"`` or ``"random"``.
        image_index: row of the image in the sampler's image table.
        image: image file name, e.g. ``"001.tiff"``.
        l0_xy: ``(x, y)`` of the patch's top-left pixel in level-0 px of the image;
            may be negative where the image is smaller than the patch.
        l0_target_xy: ``(x, y)`` centre of the cell the patch was centred on, level-0
            px, or None for random patches.
    """

    index: int
    domain: str
    kind: PatchKind
    image_index: int
    image: str
    l0_xy: tuple[int, int]
    l0_target_xy: tuple[float, float] | None


def patch_size_pair(patch_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Return a patch size as ``(width, height)`` in px.

    Args:
        patch_size: one side length in px for square patches, or ``(width, height)``.

    Raises:
        MidogError: a side is not a positive integer.
    """
    if isinstance(patch_size, (int, np.integer)) and not isinstance(patch_size, bool):
        width = height = int(patch_size)
    elif isinstance(patch_size, (tuple, list)) and len(patch_size) == 2:
        width, height = (int(v) for v in patch_size)
    else:
        raise MidogError(f"patch_size must be an integer or (width, height) in px, got {patch_size!r}")
    if width < 1 or height < 1:
        raise MidogError(f"patch_size must be positive, got {patch_size!r}")
    return width, height


def max_jitter_px(patch_size_px: tuple[int, int], box_size_px: float) -> int:
    """Return the largest jitter that keeps a centred cell's whole box inside the patch.

    Args:
        patch_size_px: ``(width, height)`` of the patch in px.
        box_size_px: side of the square box around each cell, px.

    Returns:
        ``min(width, height) // 2 - ceil(box_size_px / 2)``, at least 0.
    """
    return max(0, min(patch_size_px) // 2 - math.ceil(box_size_px / 2))


def patch_boxes(
    l0_centres_xy: np.ndarray,
    l0_patch_xy: tuple[int, int],
    patch_size_px: tuple[int, int],
    box_size_px: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the boxes of the cells inside a patch, clipped at the patch border.

    A cell belongs to the patch when the pixel of its centre lies inside it, which is
    the same as at least half of its box being visible along each axis. Its box is a
    ``box_size_px`` square around the middle of that pixel, clipped to the patch.

    Args:
        l0_centres_xy: ``(N, 2)`` float, cell centres ``x, y`` in level-0 px (pixel
            centres at integer coordinates).
        l0_patch_xy: ``(x, y)`` of the patch's top-left pixel in level-0 px.
        patch_size_px: ``(width, height)`` of the patch in px.
        box_size_px: side of the square box around each cell, px.

    Returns:
        ``(boxes, indices)``: ``(M, 4)`` float32 boxes ``x1, y1, x2, y2`` in patch px
        (pixel ``(0, 0)`` covers ``[0, 1) x [0, 1)``), each inside
        ``[0, width] x [0, height]``, and ``(M,)`` int64 rows of ``l0_centres_xy``
        they belong to, in input order.
    """
    centres = np.asarray(l0_centres_xy, dtype=np.float64).reshape(-1, 2)
    width, height = patch_size_px
    # Pixel (0, 0) of the patch covers [0, 1) x [0, 1) in box coordinates. A centre at
    # integer coordinates names a pixel, whose middle lies half a pixel further.
    middle_x = centres[:, 0] - l0_patch_xy[0] + 0.5
    middle_y = centres[:, 1] - l0_patch_xy[1] + 0.5
    inside = (middle_x >= 0) & (middle_x < width) & (middle_y >= 0) & (middle_y < height)
    indices = np.flatnonzero(inside).astype(np.int64)

    half = box_size_px / 2
    middle_x, middle_y = middle_x[indices], middle_y[indices]
    boxes = np.stack(
        [
            np.clip(middle_x - half, 0, width),
            np.clip(middle_y - half, 0, height),
            np.clip(middle_x + half, 0, width),
            np.clip(middle_y + half, 0, height),
        ],
        axis=1,
    )
    return boxes.astype(np.float32).reshape(-1, 4), indices


def _normalized_weights(
    weights: Mapping[str, float], known: tuple[str, ...], name: str, source: str
) -> np.ndarray:
    """Return weights in the order of ``known``, summing to 1; names missing from ``weights`` get 0.

    Raises:
        AnnotationError: a key is not in ``known``.
        MidogError: a weight is negative or not finite, or all are 0.
    """
    unknown = sorted(str(key) for key in weights if key not in known)
    if unknown:
        raise AnnotationError(
            f"{source}: {name} names {', '.join(repr(k) for k in unknown)}, which do not occur; "
            f"use some of {', '.join(repr(k) for k in known)}"
        )
    values = np.array([float(weights.get(key, 0.0)) for key in known], dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise MidogError(f"{name} must be finite and >= 0, got {dict(weights)!r}")
    if values.sum() <= 0:
        raise MidogError(f"{name} must have at least one positive weight, got {dict(weights)!r}")
    return values / values.sum()


def _cumulative(probabilities: np.ndarray) -> np.ndarray:
    """Return cumulative sums that reach exactly 1 at the last positive probability."""
    # Without this, rounding could leave the sum just below 1 and let a draw land on a
    # trailing zero-probability entry.
    cumulative = np.cumsum(probabilities)
    cumulative[np.flatnonzero(probabilities > 0)[-1] :] = 1.0
    return cumulative


def _draw(cumulative: np.ndarray, rng: np.random.Generator) -> int:
    """Return an index drawn with the probabilities whose cumulative sums are ``cumulative``."""
    return int(np.searchsorted(cumulative, rng.random(), side="right"))


class PatchSampler:
    """Seeded, domain-balanced choice of patches; see the module docstring for the steps.

    The sampler keeps only numpy arrays and plain containers, so it pickles cheaply
    into data-loader workers.

    Args:
        images: image table with one row per image to sample from and the columns
            ``image`` (file name), ``width`` and ``height`` (level-0 px, known for
            every row) and ``domain_column`` (no missing values).
        annotations: annotation table with the columns ``image``, ``x``, ``y``
            (level-0 px) and ``label``; rows of other images are ignored. Cells
            labelled ``"mitotic figure"`` or ``"imposter"`` can be patch centres.
        patch_size_px: ``(width, height)`` of a patch in px.
        domain_column: image-table column whose values are the domains.
        domain_weights: relative weight per domain; None weighs every domain
            equally. Domains left out get weight 0 and are reported.
        patch_kind_weights: relative weight of ``"mitotic figure"``, ``"imposter"``
            and ``"random"`` patches; kinds left out get weight 0. None uses
            ``DEFAULT_PATCH_KIND_WEIGHTS``.
        jitter_px: largest offset of a centred cell from the patch centre, px, per
            axis; below half the shorter patch side.
        seed: seed of all draws.
        source: name of the annotation file, used in messages.

    Raises:
        AnnotationError: a domain weight names a domain that no image has, no domain
            has a positive weight, or no image remains.
        MidogError: a weight is negative, a kind is unknown, or ``jitter_px`` is out
            of range.
    """

    def __init__(
        self,
        images: pd.DataFrame,
        annotations: pd.DataFrame,
        patch_size_px: tuple[int, int],
        *,
        domain_column: str = "tumor",
        domain_weights: Mapping[str, float] | None = None,
        patch_kind_weights: Mapping[str, float] | None = None,
        jitter_px: int = 0,
        seed: int = 0,
        source: str = "annotations",
    ) -> None:
        self.patch_size_px = patch_size_pair(patch_size_px)
        self.domain_column = domain_column
        self.seed = int(seed)
        self.jitter_px = int(jitter_px)
        if not 0 <= self.jitter_px < min(self.patch_size_px) // 2:
            raise MidogError(
                f"jitter_px must be in [0, {min(self.patch_size_px) // 2}) for {self.patch_size_px[0]}x"
                f"{self.patch_size_px[1]} px patches, so that a centred cell stays inside; got {jitter_px}"
            )
        if len(images) == 0:
            raise AnnotationError(f"{source}: no images to sample patches from")

        images = images.reset_index(drop=True)
        self.image_names: list[str] = [str(name) for name in images["image"]]
        self.image_sizes_px = images[["width", "height"]].to_numpy(dtype=np.int64)
        image_domains = [str(value) for value in images[domain_column]]

        # Cells per image, kept in the annotation table's order.
        row_of_image = {name: i for i, name in enumerate(self.image_names)}
        selected = annotations[annotations["image"].isin(row_of_image)]
        self.cell_centres_xy: list[np.ndarray] = [np.zeros((0, 2)) for _ in self.image_names]
        self.cell_labels: list[np.ndarray] = [np.zeros(0, dtype=object) for _ in self.image_names]
        for name, cells in selected.groupby("image", sort=False):
            row = row_of_image[str(name)]
            self.cell_centres_xy[row] = cells[["x", "y"]].to_numpy(dtype=np.float64)
            self.cell_labels[row] = cells["label"].to_numpy(dtype=object)
        self._kind_rows: list[dict[str, np.ndarray]] = [
            {kind: np.flatnonzero(labels == kind) for kind in PATCH_KINDS[:2]} for labels in self.cell_labels
        ]

        # Domains and their weights.
        all_domains = tuple(sorted(set(image_domains)))
        if domain_weights is None:
            domain_p = np.full(len(all_domains), 1.0 / len(all_domains))
        else:
            domain_p = _normalized_weights(domain_weights, all_domains, "domain_weights", source)
            unweighted = [d for d, p in zip(all_domains, domain_p) if p == 0]
            if unweighted:
                logger.warning(
                    "%s: domain_weights gives no weight to %d of %d %s domains (%s); their %d images are "
                    "never sampled",
                    source,
                    len(unweighted),
                    len(all_domains),
                    domain_column,
                    ", ".join(unweighted),
                    sum(domain in unweighted for domain in image_domains),
                )
        self.domains: tuple[str, ...] = tuple(d for d, p in zip(all_domains, domain_p) if p > 0)
        self.domain_probabilities = domain_p[domain_p > 0]
        self._domain_cumulative = _cumulative(self.domain_probabilities)

        # Patch kinds, per domain: a kind without any cell in a domain passes its weight on.
        kind_p = _normalized_weights(
            DEFAULT_PATCH_KIND_WEIGHTS if patch_kind_weights is None else patch_kind_weights,
            PATCH_KINDS,
            "patch_kind_weights",
            source,
        )
        self.kind_probabilities: dict[str, np.ndarray] = {}
        self._kind_cumulative: list[np.ndarray] = []
        self._candidate_rows: list[list[np.ndarray]] = []
        for domain in self.domains:
            rows = np.array([i for i, d in enumerate(image_domains) if d == domain], dtype=np.int64)
            candidates = [
                np.array([i for i in rows if len(self._kind_rows[i][kind])], dtype=np.int64)
                for kind in PATCH_KINDS[:2]
            ]
            candidates.append(rows)
            available = np.array([len(c) > 0 for c in candidates])
            domain_kind_p = np.where(available, kind_p, 0.0)
            if domain_kind_p.sum() == 0:
                raise AnnotationError(
                    f"{source}: {domain_column} domain {domain!r} has no cell of the patch kinds with weight "
                    f"{', '.join(k for k, p in zip(PATCH_KINDS, kind_p) if p > 0)}; add random patches to "
                    "patch_kind_weights or give the domain no weight"
                )
            missing = [k for k, a, p in zip(PATCH_KINDS, available, kind_p) if p > 0 and not a]
            if missing:
                logger.warning(
                    "%s: %s domain %r has no %s cell in its %d images; its other patch kinds take that weight",
                    source,
                    domain_column,
                    domain,
                    " or ".join(missing),
                    len(rows),
                )
            domain_kind_p = domain_kind_p / domain_kind_p.sum()
            self.kind_probabilities[domain] = domain_kind_p
            self._kind_cumulative.append(_cumulative(domain_kind_p))
            self._candidate_rows.append(candidates)

    def __len__(self) -> int:
        """Return the number of images the sampler draws from."""
        return len(self.image_names)

    def choose(self, index: int) -> PatchChoice:
        """Draw the patch of dataset item ``index``; the same index always gives the same patch.

        Args:
            index: dataset index, >= 0.

        Returns:
            The domain, kind, image and level-0 position of the patch.
        """
        rng = np.random.default_rng((self.seed, int(index)))
        domain_i = _draw(self._domain_cumulative, rng)
        kind_i = _draw(self._kind_cumulative[domain_i], rng)
        candidates = self._candidate_rows[domain_i][kind_i]
        row = int(candidates[rng.integers(len(candidates))])
        kind = PATCH_KINDS[kind_i]

        width, height = (int(v) for v in self.image_sizes_px[row])
        patch_width, patch_height = self.patch_size_px
        # Range of origins that keep the patch inside the image, or the image inside the patch.
        x_low, x_high = min(0, width - patch_width), max(0, width - patch_width)
        y_low, y_high = min(0, height - patch_height), max(0, height - patch_height)

        target: tuple[float, float] | None = None
        if kind == "random":
            l0_x = int(rng.integers(x_low, x_high + 1))
            l0_y = int(rng.integers(y_low, y_high + 1))
        else:
            cell_rows = self._kind_rows[row][kind]
            centre = self.cell_centres_xy[row][cell_rows[rng.integers(len(cell_rows))]]
            jitter_x, jitter_y = rng.integers(-self.jitter_px, self.jitter_px + 1, size=2)
            # Centres lie at pixel centres, so the cell's pixel is the centre rounded.
            l0_x = math.floor(centre[0] + 0.5) - patch_width // 2 + int(jitter_x)
            l0_y = math.floor(centre[1] + 0.5) - patch_height // 2 + int(jitter_y)
            l0_x = min(max(l0_x, x_low), x_high)
            l0_y = min(max(l0_y, y_low), y_high)
            target = (float(centre[0]), float(centre[1]))
        return PatchChoice(
            index=int(index),
            domain=self.domains[domain_i],
            kind=kind,
            image_index=row,
            image=self.image_names[row],
            l0_xy=(l0_x, l0_y),
            l0_target_xy=target,
        )

    def cells(self, image_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the cells of one image.

        Args:
            image_index: row of the image, as in ``PatchChoice.image_index``.

        Returns:
            ``(centres, labels)``: ``(N, 2)`` float64 centres ``x, y`` in level-0 px and
            ``(N,)`` object array of label strings.
        """
        return self.cell_centres_xy[image_index], self.cell_labels[image_index]
