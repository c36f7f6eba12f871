"""A stand-in model that finds dark blobs, for tests of tiling and outputs.

``StubDetector`` implements ``TileDetector``: it reports one detection per
8-connected blob of dark pixels, at the blob's centroid, with a fixed score.
The tests draw dark discs on pink "tissue" and check where the runner
reports them, so no trained model is needed.
"""

from __future__ import annotations

import numpy as np

from midog.inference.tissue import label_components
from midog.structures import Detections

__all__ = ["StubDetector", "BLOB_RGB", "TISSUE_RGB"]

# Colours for synthetic slides: pink passes the tissue mask, the blob colour
# is dark enough for the stub, and the default padding is neither.
TISSUE_RGB = (230, 160, 200)
BLOB_RGB = (60, 30, 90)


class StubDetector:
    """Report one detection per dark blob.

    Args:
        mpp: µm/px the tiles are resampled to.
        padding_rgb: colour for pixels outside the image; mmdet pads with 114.
        dark_max: a pixel is dark when its channel mean is below this.
        min_area_px: blobs with fewer pixels are ignored.
        score: score of every detection.
        record_tiles: keep a copy of every tile passed to ``detect`` in ``tiles_seen``.
    """

    def __init__(
        self,
        mpp: float = 0.25,
        padding_rgb: tuple[int, int, int] = (114, 114, 114),
        dark_max: float = 80.0,
        min_area_px: int = 20,
        score: float = 0.9,
        record_tiles: bool = False,
    ) -> None:
        self.mpp = mpp
        self.score_thresh = 0.5
        self.min_score = 0.05
        self.class_names = ("mitotic figure",)
        self.padding_rgb = padding_rgb
        self.dark_max = dark_max
        self.min_area_px = min_area_px
        self.score = score
        self.record_tiles = record_tiles
        self.tiles_seen: list[np.ndarray] = []
        self.num_calls = 0
        self.num_detections = 0

    def detect(self, tiles: np.ndarray) -> list[Detections]:
        """Detect in ``(B, H, W, 3)`` uint8 RGB tiles; centres in continuous tile px."""
        if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
            raise ValueError(f"expected (B, H, W, 3) uint8 tiles, got {tiles.shape} {tiles.dtype}")
        self.num_calls += 1
        results = []
        for tile in tiles:
            if self.record_tiles:
                self.tiles_seen.append(tile.copy())
            results.append(self._detect_one(tile))
        self.num_detections += sum(len(result) for result in results)
        return results

    def _detect_one(self, tile: np.ndarray) -> Detections:
        dark = tile.astype(np.float32).mean(axis=-1) < self.dark_max
        labels, count = label_components(dark, connectivity=8)
        if count == 0:
            return Detections.empty(self.class_names)
        flat = labels.reshape(-1)
        rows, cols = np.indices(labels.shape)
        areas = np.bincount(flat, minlength=count + 1)[1:]
        # Pixel i covers [i, i + 1), so its centre is i + 0.5.
        sum_x = np.bincount(flat, weights=cols.reshape(-1) + 0.5, minlength=count + 1)[1:]
        sum_y = np.bincount(flat, weights=rows.reshape(-1) + 0.5, minlength=count + 1)[1:]
        keep = areas >= self.min_area_px
        xy = np.stack([sum_x[keep] / areas[keep], sum_y[keep] / areas[keep]], axis=1)
        scores = np.full(len(xy), self.score)
        return Detections(xy, scores, np.zeros(len(xy)), self.class_names)
