"""Training images built from real crops of mitotic figures.

The crop collections hold 128x128 px patches at about 0.25 µm/px, each
centred on one mitotic figure, from two source sets: ``AtNorM-Br`` (human
breast, TCGA) and ``AtNorM-MD`` (several MIDOG++ domains). A detector trained
on crops alone could learn the shortcuts "centre of a pasted square" or "the
crops' stain". The canvases built here guard against both:

- every canvas has a background of real tissue at 0.25 µm/px with its own
  ordinary nuclei and no labels;
- for every pasted crop at least as many unlabelled 128 px squares are pasted
  the same way (feathered, jittered borders): squares of ordinary tissue and
  same-stain control squares assembled from the outer quadrants of crops;
- each pasted piece gets its own HED stain jitter, so stain is no cue.

The same construction, on held-out crops and held-out tissue, measures the
shortcuts (see ``midog.training.crop_benchmark``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from midog.errors import AnnotationError
from midog.training.augment import hed_jitter

__all__ = [
    "CropRecord",
    "HardNegative",
    "TissueSource",
    "CanvasConfig",
    "CanvasGenerator",
    "list_crops",
    "split_crops",
    "load_tissue_sources",
    "control_square",
    "BOX_SIZE_PX",
    "CROP_SIZE_PX",
]

logger = logging.getLogger(__name__)

CROP_SIZE_PX = 128
# MIDOG convention: a 50x50 px box (12.5 µm at 0.25 µm/px) around each figure centre.
BOX_SIZE_PX = 50
MODEL_MPP = 0.25
SOURCE_SETS = ("AtNorM-Br", "AtNorM-MD")

# Tiles of H&E tissue usable as background; the others (IHC, pen marks, empty
# glass, 50 px liver thumbnails) are left out. The last two are held out.
TISSUE_TILES_TRAIN = (
    "tissue-level0-4302-10273-4814-10785.png",
    "high-nuclei-score-level0.png",
    "very-low-nuclei-score-level0.png",
    "medium-nuclei-score-level1.png",
    "medium-nuclei-score-level1-2.png",
    "low-nuclei-score-level0.png",
)
TISSUE_TILES_TEST = (
    "tissue-level0-7352-11762-7864-12274.png",
    "medium-nuclei-score-level0.png",
)
# The real slide is split by rows at 0.25 µm/px: the top part for training,
# the bottom part held out.
SLIDE_NAME = "cmu-1-small-region.svs"
SLIDE_TRAIN_FRACTION = 0.75


@dataclass(frozen=True)
class CropRecord:
    """One crop file: the figure is at its centre, ``(64, 64)``."""

    path: Path
    source_set: str
    subtype: str  # "Atypical" or "Normal"


def list_crops(crops_dir: str | Path) -> list[CropRecord]:
    """List the crops below ``crops_dir`` (``<set>/<subtype>/<n>.png``), sorted by path.

    Raises:
        FileNotFoundError: the folder or one of the source sets is missing.
    """
    crops_dir = Path(crops_dir)
    records = []
    for source_set in SOURCE_SETS:
        set_dir = crops_dir / source_set
        if not set_dir.is_dir():
            raise FileNotFoundError(f"crop folder {set_dir} not found; expected {crops_dir}/<set>/<subtype>/*.png")
        for path in sorted(set_dir.glob("*/*.png")):
            records.append(CropRecord(path, source_set, path.parent.name))
    return records


def split_crops(
    records: list[CropRecord],
    test_sets: tuple[str, ...] = ("AtNorM-Br",),
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, list[CropRecord]]:
    """Split crops into train, val and test, with the test split grouped by source set.

    The crops carry no slide identifiers, so the only grouping that keeps a
    slide out of two splits is the source set: every crop of ``test_sets`` is
    test, and no crop of it is ever trained on. ``val`` is a seeded random
    ``val_fraction`` of the remaining crops (same sets as train, used to choose
    the score threshold), and the rest is ``train``.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    test = [r for r in records if r.source_set in test_sets]
    rest = [r for r in records if r.source_set not in test_sets]
    order = np.random.default_rng(seed).permutation(len(rest))
    num_val = int(round(val_fraction * len(rest)))
    val = [rest[i] for i in sorted(order[:num_val])]
    train = [rest[i] for i in sorted(order[num_val:])]
    return {"train": train, "val": val, "test": test}


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB; transparent pixels become white."""
    with Image.open(path) as image:
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        return np.asarray(image.convert("RGB"))


@dataclass
class TissueSource:
    """A tissue image at 0.25 µm/px to cut backgrounds and tissue squares from."""

    name: str
    rgb: np.ndarray  # (H, W, 3) uint8
    tissue_mask: np.ndarray  # (H // 32, W // 32) bool, one cell per 32x32 px block

    @classmethod
    def from_array(cls, name: str, rgb: np.ndarray) -> TissueSource:
        blocks_h, blocks_w = rgb.shape[0] // 32, rgb.shape[1] // 32
        blocks = rgb[: blocks_h * 32, : blocks_w * 32].reshape(blocks_h, 32, blocks_w, 32, 3)
        # A block is tissue when it is clearly darker or more saturated than glass.
        mean = blocks.mean(axis=(1, 3))
        saturation = mean.max(-1) - mean.min(-1)
        mask = (mean.mean(-1) < 215) | (saturation > 25)
        return cls(name, rgb, mask)

    def sample_window(self, size_px: int, rng: np.random.Generator, min_tissue: float = 0.5) -> np.ndarray:
        """Cut a ``size_px`` square, preferring windows whose tissue share is at least ``min_tissue``."""
        height, width = self.rgb.shape[:2]
        if height < size_px or width < size_px:
            raise ValueError(f"tissue source {self.name} ({width}x{height} px) is smaller than {size_px} px")
        best, best_share = None, -1.0
        for _ in range(10):
            y = int(rng.integers(0, height - size_px + 1))
            x = int(rng.integers(0, width - size_px + 1))
            cells = self.tissue_mask[y // 32 : (y + size_px) // 32, x // 32 : (x + size_px) // 32]
            share = float(cells.mean()) if cells.size else 0.0
            if share > best_share:
                best, best_share = (y, x), share
            if share >= min_tissue:
                break
        y, x = best
        return self.rgb[y : y + size_px, x : x + size_px]


def _resize(rgb: np.ndarray, scale: float) -> np.ndarray:
    if abs(scale - 1.0) < 1e-3:
        return rgb
    height, width = rgb.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))


def load_tissue_sources(data_dir: str | Path, split: str) -> list[TissueSource]:
    """Load the background tissue of one split at 0.25 µm/px.

    ``train`` gets the top 75% of rows of the real slide and most tissue tiles;
    ``test`` gets the bottom 25% of rows and two held-out tiles. The slide is
    scanned at about 0.5 µm/px and is upsampled by its own mpp; the tiles have
    no recorded resolution and are used as they are (scale augmentation covers
    the difference).
    """
    import openslide

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data_dir = Path(data_dir)
    slide_path = data_dir / "slides" / SLIDE_NAME
    with openslide.OpenSlide(str(slide_path)) as slide:
        slide_mpp = float(slide.properties[openslide.PROPERTY_NAME_MPP_X])
        width, height = slide.dimensions
        region = np.asarray(slide.read_region((0, 0), 0, (width, height)).convert("RGB"))
    cut = int(height * SLIDE_TRAIN_FRACTION)
    part = region[:cut] if split == "train" else region[cut:]
    sources = [TissueSource.from_array(f"{SLIDE_NAME}:{split}", _resize(part, slide_mpp / MODEL_MPP))]
    for name in TISSUE_TILES_TRAIN if split == "train" else TISSUE_TILES_TEST:
        sources.append(TissueSource.from_array(name, load_rgb(data_dir / "tiles" / name)))
    return sources


def control_square(crop: np.ndarray) -> np.ndarray:
    """Assemble a same-stain control square from a crop's four outer quadrants.

    Each 64 px quadrant is turned by 180° in place, so the fragment of the
    figure that sat at its inner corner moves to an outer corner, and the
    square's centre shows the crop's own ordinary tissue and stain.
    """
    half = crop.shape[0] // 2
    out = crop.copy()
    for y in (0, half):
        for x in (0, half):
            out[y : y + half, x : x + half] = crop[y : y + half, x : x + half][::-1, ::-1]
    return out


def _feather_alpha(size_px: int, feather_px: int, rng: np.random.Generator) -> np.ndarray:
    """Alpha ``(size, size)`` float32 that ramps from 0 at a jittered border to 1 inside."""
    coords = np.arange(size_px, dtype=np.float32)
    distances = []
    for _ in range(2):
        # Each side's ramp starts at its own random inset, so the edge is not a clean square.
        start, end = rng.uniform(0, feather_px / 2, size=2)
        distances.append(np.minimum(coords - start, size_px - 1 - end - coords))
    edge = np.minimum(distances[0][None, :], distances[1][:, None])
    return np.clip(edge / max(feather_px, 1), 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class CanvasConfig:
    """How training canvases are built. Sizes are px at 0.25 µm/px.

    Attributes:
        canvas_size: side of the square canvas.
        max_figures: most crops with a figure pasted on one canvas (0 to this).
        negatives_per_figure: unlabelled squares pasted per figure; at least
            this many, and at least one per canvas.
        control_share: share of unlabelled squares that are same-stain control
            squares; the rest are squares of ordinary tissue.
        scale_range: random rescaling of pasted pieces.
        feather_px: maximum width of the blended border of a pasted piece.
        piece_hed_scale: per-stain scale jitter of a pasted piece, ``1 ± this``.
        piece_hed_shift: per-stain shift jitter of a pasted piece, ``± this``.
        canvas_hed_scale: the same for the whole canvas afterwards.
        canvas_hed_shift: the same for the whole canvas afterwards.
        box_size: side of the box around each figure centre.
        hard_negative_share: share of unlabelled squares centred on mined
            hard negatives, where the generator was given any; the other
            squares follow ``control_share``.
        hard_negative_jitter_px: maximum offset of a hard negative from the
            centre of its square, per axis.
        figure_mask_px: radius around a crop's figure (its centre) that is
            left transparent in hard-negative squares cut from that crop, so
            the unlabelled square shows no part of the labelled figure core.
    """

    canvas_size: int = 320
    max_figures: int = 2
    negatives_per_figure: int = 1
    control_share: float = 0.5
    scale_range: tuple[float, float] = (0.8, 1.25)
    feather_px: int = 16
    piece_hed_scale: float = 0.15
    piece_hed_shift: float = 0.15
    canvas_hed_scale: float = 0.1
    canvas_hed_shift: float = 0.1
    box_size: int = BOX_SIZE_PX
    hard_negative_share: float = 0.0
    hard_negative_jitter_px: int = 16
    figure_mask_px: int = 20


@dataclass(frozen=True)
class HardNegative:
    """A mined false-positive location to centre an unlabelled square on.

    Attributes:
        source: ``"crop"`` for a training crop, ``"tissue"`` for a training
            tissue source.
        name: the crop's path (as given to ``CanvasGenerator``) or the tissue
            source's ``name``.
        x_px: x of the location in the source's px (crop px, or tissue px at 0.25 µm/px).
        y_px: y of the location, same frame.
    """

    source: str
    name: str
    x_px: float
    y_px: float


def _cut_square(rgb: np.ndarray, centre_x: int, centre_y: int, size_px: int) -> np.ndarray:
    """Cut a ``size_px`` square centred on a pixel; pixels outside ``rgb`` are black (pasted transparent)."""
    height, width = rgb.shape[:2]
    x0, y0 = centre_x - size_px // 2, centre_y - size_px // 2
    square = np.zeros((size_px, size_px, 3), dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + size_px, width), min(y0 + size_px, height)
    if sx1 > sx0 and sy1 > sy0:
        square[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    return square


class CanvasGenerator:
    """Build canvases of real tissue with pasted figure crops and unlabelled squares.

    Args:
        crop_paths: crop files of one split; each crop's figure is at its centre.
        tissue_sources: background tissue of the same split.
        config: canvas settings.
        hard_negatives: mined locations in these crops or tissue sources;
            ``config.hard_negative_share`` of the unlabelled squares are cut
            around them. None or empty keeps the canvases exactly as without.

    Raises:
        AnnotationError: a hard negative names a crop or tissue source that
            is not among those given.
    """

    def __init__(
        self,
        crop_paths: list[Path],
        tissue_sources: list[TissueSource],
        config: CanvasConfig,
        hard_negatives: list[HardNegative] | None = None,
    ) -> None:
        if not crop_paths:
            raise ValueError("no crops given to build canvases from")
        if not tissue_sources:
            raise ValueError("no tissue sources given to build canvases on")
        self.crops = [load_rgb(p) for p in crop_paths]
        for path, crop in zip(crop_paths, self.crops):
            if crop.shape[:2] != (CROP_SIZE_PX, CROP_SIZE_PX):
                raise ValueError(f"crop {path} is {crop.shape[1]}x{crop.shape[0]} px; expected 128x128")
        self.tissue_sources = tissue_sources
        self.config = config
        self.hard_negatives = list(hard_negatives or [])
        self._hard_negative_sources = self._index_hard_negatives(crop_paths)

    def _index_hard_negatives(self, crop_paths: list[Path]) -> list[tuple[str, int]]:
        """Return ``(source, index into self.crops or self.tissue_sources)`` per hard negative."""
        crop_index = {str(Path(p)): i for i, p in enumerate(crop_paths)}
        tissue_index = {source.name: i for i, source in enumerate(self.tissue_sources)}
        indices = []
        for negative in self.hard_negatives:
            table = {"crop": crop_index, "tissue": tissue_index}.get(negative.source)
            if table is None:
                raise AnnotationError(
                    f"hard negative {negative} has source {negative.source!r}; expected 'crop' or 'tissue'"
                )
            key = str(Path(negative.name)) if negative.source == "crop" else negative.name
            if key not in table:
                raise AnnotationError(
                    f"hard negative {negative.source} {negative.name!r} is not among this generator's "
                    f"{len(table)} {negative.source} sources; mine only training crops and training tissue"
                )
            indices.append((negative.source, table[key]))
        return indices

    def cut_hard_negative(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """Cut the 128 px unlabelled square of hard negative ``index``, centred on it with jitter.

        Pixels outside the source, and in squares cut from a crop the disc of
        ``figure_mask_px`` around the crop's figure, are black, which
        ``_prepare_piece`` makes transparent, so the canvas shows through.

        Returns:
            ``(128, 128, 3)`` uint8 RGB.
        """
        cfg = self.config
        negative = self.hard_negatives[index]
        source, source_index = self._hard_negative_sources[index]
        jitter = cfg.hard_negative_jitter_px
        jitter_x, jitter_y = (int(v) for v in rng.integers(-jitter, jitter + 1, size=2))
        centre_x = int(np.floor(negative.x_px + 0.5)) + jitter_x
        centre_y = int(np.floor(negative.y_px + 0.5)) + jitter_y
        if source == "tissue":
            return _cut_square(self.tissue_sources[source_index].rgb, centre_x, centre_y, CROP_SIZE_PX)
        crop = self.crops[source_index].copy()
        # Pixel (i, j) covers [i, i + 1); the figure centre is the crop's middle, 64.0.
        yy, xx = np.indices(crop.shape[:2]) + 0.5
        half = CROP_SIZE_PX / 2
        crop[np.hypot(xx - half, yy - half) <= cfg.figure_mask_px] = 0
        return _cut_square(crop, centre_x, centre_y, CROP_SIZE_PX)

    def _jitter_stain(self, rgb: np.ndarray, scale: float, shift: float, rng: np.random.Generator) -> np.ndarray:
        return hed_jitter(rgb, rng.uniform(1 - scale, 1 + scale, 3), rng.uniform(-shift, shift, 3))

    def _prepare_piece(self, rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
        """Flip, turn, rescale and stain-jitter a square; return it, its alpha and the scale."""
        cfg = self.config
        alpha_valid = (rgb.max(axis=-1) > 2).astype(np.float32)  # black border padding is not tissue
        if rng.random() < 0.5:
            rgb, alpha_valid = rgb[:, ::-1], alpha_valid[:, ::-1]
        turns = int(rng.integers(0, 4))
        rgb, alpha_valid = np.rot90(rgb, turns), np.rot90(alpha_valid, turns)
        scale = float(rng.uniform(*cfg.scale_range))
        rgb = _resize(np.ascontiguousarray(rgb), scale)
        alpha_valid = _resize((np.ascontiguousarray(alpha_valid) * 255).astype(np.uint8), scale) / 255.0
        rgb = self._jitter_stain(rgb, cfg.piece_hed_scale, cfg.piece_hed_shift, rng)
        feather = int(rng.integers(2, cfg.feather_px + 1))
        alpha = _feather_alpha(rgb.shape[0], feather, rng) * alpha_valid.astype(np.float32)
        return rgb, alpha, scale

    def _place(self, size: int, occupied: list[tuple[int, int, int]], rng: np.random.Generator) -> tuple[int, int]:
        """Pick a top-left corner for a ``size`` square that overlaps earlier pieces little."""
        limit = self.config.canvas_size - size
        best, best_overlap = (0, 0), None
        for _ in range(20):
            x, y = int(rng.integers(0, limit + 1)), int(rng.integers(0, limit + 1))
            overlap = 0
            for ox, oy, osize in occupied:
                dx = max(0, min(x + size, ox + osize) - max(x, ox))
                dy = max(0, min(y + size, oy + osize) - max(y, oy))
                overlap = max(overlap, dx * dy)
            if best_overlap is None or overlap < best_overlap:
                best, best_overlap = (x, y), overlap
            if overlap == 0:
                break
        return best

    def generate(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Build one canvas.

        Returns:
            ``(image, boxes)``: ``(S, S, 3)`` uint8 RGB and ``(N, 4)`` float32
            ``x1, y1, x2, y2`` px of the figures, one box per pasted crop.
        """
        cfg = self.config
        background_scale = float(rng.uniform(*cfg.scale_range))
        source = self.tissue_sources[int(rng.integers(len(self.tissue_sources)))]
        window = source.sample_window(int(np.ceil(cfg.canvas_size / background_scale)) + 1, rng)
        canvas = _resize(window, background_scale)[: cfg.canvas_size, : cfg.canvas_size].astype(np.float32)
        if rng.random() < 0.5:
            canvas = canvas[::-1]

        num_figures = int(rng.integers(0, cfg.max_figures + 1))
        num_negatives = max(1, num_figures * cfg.negatives_per_figure) + int(rng.integers(0, 2))
        pieces = [("figure", self.crops[int(rng.integers(len(self.crops)))]) for _ in range(num_figures)]
        for _ in range(num_negatives):
            # The short-circuit keeps the random draws, and so the canvases, unchanged without hard negatives.
            if self.hard_negatives and cfg.hard_negative_share > 0 and rng.random() < cfg.hard_negative_share:
                index = int(rng.integers(len(self.hard_negatives)))
                pieces.append(("hard negative", self.cut_hard_negative(index, rng)))
            elif rng.random() < cfg.control_share:
                crop = self.crops[int(rng.integers(len(self.crops)))]
                pieces.append(("control", control_square(crop)))
            else:
                tissue = self.tissue_sources[int(rng.integers(len(self.tissue_sources)))]
                pieces.append(("tissue", tissue.sample_window(CROP_SIZE_PX, rng)))
        order = rng.permutation(len(pieces))

        boxes = []
        occupied: list[tuple[int, int, int]] = []
        for index in order:
            kind, rgb = pieces[index]
            piece, alpha, scale = self._prepare_piece(rgb, rng)
            size = piece.shape[0]
            x, y = self._place(size, occupied, rng)
            occupied.append((x, y, size))
            region = canvas[y : y + size, x : x + size]
            region[:] = alpha[..., None] * piece + (1 - alpha[..., None]) * region
            if kind == "figure":
                centre_x, centre_y, half = x + size / 2, y + size / 2, cfg.box_size * scale / 2
                boxes.append([centre_x - half, centre_y - half, centre_x + half, centre_y + half])

        # A piece pasted later may cover an earlier figure; drop boxes whose centre is covered.
        boxes_array = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if len(boxes_array):
            boxes_array = self._drop_covered(boxes_array, order, pieces, occupied)
        image = np.clip(canvas, 0, 255).astype(np.uint8)
        image = self._jitter_stain(image, cfg.canvas_hed_scale, cfg.canvas_hed_shift, rng)
        return image, boxes_array

    @staticmethod
    def _drop_covered(boxes: np.ndarray, order: np.ndarray, pieces: list, occupied: list) -> np.ndarray:
        keep = []
        figure_slots = [slot for slot, index in enumerate(order) if pieces[index][0] == "figure"]
        for box, slot in zip(boxes, figure_slots):
            centre_x, centre_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            covered = False
            for ox, oy, osize in occupied[slot + 1 :]:
                # Covered when the centre lies well inside a later piece (its feathered border excluded).
                if ox + 16 <= centre_x <= ox + osize - 16 and oy + 16 <= centre_y <= oy + osize - 16:
                    covered = True
            keep.append(not covered)
        return boxes[np.asarray(keep, dtype=bool)]
