"""midog's components registered with mmdet and mmengine.

Configs load this module through ``custom_imports``. It registers the canvas
dataset, a photometric transform, a progress-bar hook, and the safe
checkpoint loader for mmengine's own ``load_from`` and ``resume``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from mmdet.registry import DATASETS, HOOKS, TRANSFORMS
from mmdet.structures.bbox import HorizontalBoxes
from mmengine.dataset import Compose
from mmengine.hooks import Hook
from torch.utils.data import Dataset

from midog.training import midogpp  # noqa: F401  (registers the MIDOG++ components)
from midog.training.checkpoint import register_safe_loader
from midog.training.crops import (
    CanvasConfig,
    CanvasGenerator,
    HardNegative,
    list_crops,
    load_tissue_sources,
    split_crops,
)

__all__ = ["MitoticCanvasDataset", "PhotometricAugment", "ProgressBarHook"]

logger = logging.getLogger(__name__)

register_safe_loader()


def _read_hard_negatives(path: Path, crops_dir: Path) -> list[HardNegative]:
    """Read a negatives file as ``HardNegative`` locations; crop names become paths below ``crops_dir``."""
    from midog.errors import AnnotationError
    from midog.training.mining import read_negatives

    table = read_negatives(path)
    if "kept" in table.columns:
        # A candidates file: only the rows chosen by undersampling are negatives.
        table = table[table["kept"].astype(str).str.lower() == "true"]
    wrong = table[~table["source"].isin(["crop", "tissue"])]
    if len(wrong):
        raise AnnotationError(
            f"negatives file {path} has {len(wrong)} rows of source {wrong['source'].iloc[0]!r}; canvases "
            "take only 'crop' and 'tissue' negatives from tools/mine_default_model.py"
        )
    negatives = []
    for row in table.itertuples(index=False):
        name = str(crops_dir / row.image) if row.source == "crop" else str(row.image)
        negatives.append(HardNegative(str(row.source), name, float(row.x), float(row.y)))
    counts = table["source"].value_counts().to_dict()
    logger.info("hard negatives from %s: %s", path, ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return negatives


@DATASETS.register_module()
class MitoticCanvasDataset(Dataset):
    """Canvases of real tissue with pasted figure crops, generated on the fly.

    Item ``i`` is generated from a random generator seeded with ``(seed, i)``,
    so the same index always gives the same canvas, in any worker process.

    Args:
        data_root: folder with ``mf_crops/``, ``slides/`` and ``tiles/``.
        split: ``"train"`` or ``"val"`` crops; both use the training tissue.
        test_source_sets: crop source sets held out as test, never used here.
        val_fraction: share of the remaining crops kept for validation.
        split_seed: seed of the train/val split.
        canvas: keyword arguments of ``CanvasConfig``.
        length: number of distinct canvases (the sampler draws from them).
        class_names: class names; the figures get label 0.
        pipeline: mmdet transforms applied after generation, ending with
            ``PackDetInputs``.
        seed: seed of the canvases.
        hard_negatives_file: negatives file written by
            ``tools/mine_default_model.py`` (``midog.training.mining``); a
            share ``canvas["hard_negative_share"]`` of the unlabelled squares
            are cut around its locations. Every row must name a crop of this
            split or a training tissue source. None trains without.
    """

    def __init__(
        self,
        data_root: str,
        split: str,
        test_source_sets: tuple[str, ...],
        val_fraction: float,
        split_seed: int,
        canvas: dict[str, Any],
        length: int,
        class_names: tuple[str, ...],
        pipeline: list[dict[str, Any]],
        seed: int = 0,
        hard_negatives_file: str | None = None,
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val' (the test crops are never trained on), got {split!r}")
        data_root_path = Path(data_root)
        splits = split_crops(
            list_crops(data_root_path / "mf_crops"), tuple(test_source_sets), val_fraction, split_seed
        )
        records = splits[split]
        logger.info(
            "canvas dataset: %d %s crops (%d val, %d test held out), tissue from %s",
            len(records),
            split,
            len(splits["val"]),
            len(splits["test"]),
            data_root_path,
        )
        hard_negatives = None
        if hard_negatives_file is not None:
            hard_negatives = _read_hard_negatives(Path(hard_negatives_file), data_root_path / "mf_crops")
        elif canvas.get("hard_negative_share", 0.0) > 0:
            logger.warning(
                "canvas hard_negative_share is %s but no hard_negatives_file is given; the canvases get "
                "no hard negatives (set train_dataloader.dataset.hard_negatives_file)",
                canvas["hard_negative_share"],
            )
        self.generator = CanvasGenerator(
            [r.path for r in records],
            load_tissue_sources(data_root_path, "train"),
            CanvasConfig(**canvas),
            hard_negatives,
        )
        self.length = int(length)
        self.seed = int(seed)
        self.metainfo = {"classes": tuple(class_names)}
        self.pipeline = Compose(pipeline)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng((self.seed, int(index)))
        image, boxes = self.generator.generate(rng)
        height, width = image.shape[:2]
        results = {
            "img": image,
            "img_id": int(index),
            "img_path": None,
            "ori_shape": (height, width),
            "img_shape": (height, width),
            "scale_factor": (1.0, 1.0),
            "flip": False,
            "flip_direction": None,
            "gt_bboxes": HorizontalBoxes(boxes.reshape(-1, 4)),
            "gt_bboxes_labels": np.zeros(len(boxes), dtype=np.int64),
            "gt_ignore_flags": np.zeros(len(boxes), dtype=bool),
            "seed": (self.seed, int(index)),
        }
        return self.pipeline(results)


@TRANSFORMS.register_module()
class PhotometricAugment:
    """Brightness/contrast, hue/saturation/value shifts and blur, seeded by the item.

    Args:
        brightness_contrast: maximum relative change of brightness and of contrast.
        hue_saturation: maximum shifts ``(hue, saturation, value)`` in
            OpenCV units (hue in 0-180, the others in 0-255).
        blur_prob: probability of a 3x3 box blur.
    """

    def __init__(
        self,
        brightness_contrast: float = 0.2,
        hue_saturation: tuple[int, int, int] = (5, 15, 10),
        blur_prob: float = 0.1,
    ) -> None:
        self.brightness_contrast = brightness_contrast
        self.hue_saturation = tuple(hue_saturation)
        self.blur_prob = blur_prob

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        import cv2

        rng = np.random.default_rng((*results.get("seed", (0, 0)), 1))
        image = results["img"].astype(np.float32)
        limit = self.brightness_contrast
        contrast = rng.uniform(1 - limit, 1 + limit)
        brightness = rng.uniform(-limit, limit) * 255
        image = (image - image.mean()) * contrast + image.mean() + brightness
        image = np.clip(image, 0, 255).astype(np.uint8)

        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.int16)
        hue_shift, saturation_shift, value_shift = (int(rng.integers(-m, m + 1)) for m in self.hue_saturation)
        hsv[..., 0] = (hsv[..., 0] + hue_shift) % 180
        hsv[..., 1] = np.clip(hsv[..., 1] + saturation_shift, 0, 255)
        hsv[..., 2] = np.clip(hsv[..., 2] + value_shift, 0, 255)
        image = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)

        if rng.random() < self.blur_prob:
            image = cv2.blur(image, (3, 3))
        results["img"] = np.ascontiguousarray(image)
        return results


@HOOKS.register_module()
class ProgressBarHook(Hook):
    """Show training progress as a tqdm bar with the latest loss."""

    priority = "VERY_LOW"

    def before_train(self, runner) -> None:
        from tqdm.auto import tqdm

        # Only the first process of a distributed run shows the bar.
        self._bar = tqdm(
            total=runner.max_iters,
            initial=runner.iter,
            desc="train",
            unit="iter",
            dynamic_ncols=True,
            disable=runner.rank != 0,
        )

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._bar.update(1)
        if outputs and "loss" in outputs:
            self._bar.set_postfix(loss=f"{outputs['loss'].item():.3f}", refresh=False)

    def after_train(self, runner) -> None:
        self._bar.close()
