"""Detections, the one result type shared by inference, writers and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Detections"]


@dataclass
class Detections:
    """Point detections of one image or slide.

    Attributes:
        xy: ``(N, 2)`` float64, cell centres ``x, y`` in level-0 pixels of the
            image (or in tile pixels while still inside a tile).
        scores: ``(N,)`` float32 confidence in ``[0, 1]``.
        labels: ``(N,)`` int64 class index into ``class_names``.
        class_names: the model's class names, index 0 first.
    """

    xy: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...] = ("mitotic figure",)

    def __post_init__(self) -> None:
        self.xy = np.asarray(self.xy, dtype=np.float64).reshape(-1, 2)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not (len(self.xy) == len(self.scores) == len(self.labels)):
            raise ValueError(
                f"Detections arrays differ in length: xy {len(self.xy)}, "
                f"scores {len(self.scores)}, labels {len(self.labels)}"
            )

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls, class_names: tuple[str, ...] = ("mitotic figure",)) -> Detections:
        return cls(np.zeros((0, 2)), np.zeros(0), np.zeros(0), class_names)

    @classmethod
    def concatenate(cls, parts: list[Detections], class_names: tuple[str, ...] | None = None) -> Detections:
        """Join detections of several tiles; ``class_names`` defaults to the first part's."""
        if class_names is None:
            class_names = parts[0].class_names if parts else ("mitotic figure",)
        if not parts:
            return cls.empty(class_names)
        return cls(
            np.concatenate([p.xy for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.labels for p in parts]),
            class_names,
        )

    def select(self, mask_or_index: np.ndarray) -> Detections:
        """Return the detections picked by a boolean mask or an index array."""
        return Detections(
            self.xy[mask_or_index], self.scores[mask_or_index], self.labels[mask_or_index], self.class_names
        )

    def translate(self, dx: float, dy: float, scale: float = 1.0) -> Detections:
        """Map tile coordinates to another frame: ``xy * scale + (dx, dy)``."""
        return Detections(self.xy * scale + np.array([dx, dy]), self.scores, self.labels, self.class_names)
