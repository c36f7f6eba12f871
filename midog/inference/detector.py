"""The interface between the slide runner and a detection model."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from midog.structures import Detections

__all__ = ["TileDetector"]


@runtime_checkable
class TileDetector(Protocol):
    """A model that finds cell centres in batches of RGB tiles.

    Attributes:
        mpp: µm/px of the images the model was trained on; tiles must be
            resampled to it before ``detect``.
        score_thresh: default score at or above which a candidate counts as
            a mitotic figure.
        min_score: lowest score that ``detect`` returns; candidates between
            ``min_score`` and ``score_thresh`` are kept for average precision.
        class_names: class names, index 0 first.
        padding_rgb: colour used for pixels outside the image, the same as in
            training.
    """

    mpp: float
    score_thresh: float
    min_score: float
    class_names: tuple[str, ...]
    padding_rgb: tuple[int, int, int]

    def detect(self, tiles: np.ndarray) -> list[Detections]:
        """Detect in a batch of tiles.

        Args:
            tiles: ``(B, H, W, 3)`` uint8 RGB tiles at ``mpp``.

        Returns:
            One ``Detections`` per tile, ``xy`` in tile pixels, after
            non-maximum suppression, with every candidate scoring at least
            ``min_score``.
        """
        ...
