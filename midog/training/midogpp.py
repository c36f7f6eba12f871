"""Multi-domain training on MIDOG++: patches read lazily from large images, balanced by domain.

Registers three components with mmdet and mmengine:

- :class:`MidogppPatchDataset`: training patches cut on the fly from the MIDOG++
  region-of-interest images (``<images_dir>/001.tiff`` ...), chosen by
  :class:`~midog.training.sampling.PatchSampler` so that every domain (by default the
  tumour type) and every patch kind gets its configured share;
- :class:`StainAugment`: the stain, flip and colour augmentation of
  :func:`~midog.training.augment.build_stain_augmentation`, seeded per item and moving
  the boxes with the image;
- :class:`MultiEMAHook`: exponential moving averages of the weights at several decay
  rates, one of which becomes the checkpoint's weights.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mmdet.registry import DATASETS, HOOKS, TRANSFORMS
from mmdet.structures.bbox import HorizontalBoxes
from mmengine.dataset import Compose
from mmengine.hooks import Hook
from torch.utils.data import Dataset

from midog.errors import AnnotationError, MidogError
from midog.io.annotations import IMPOSTER, MITOTIC_FIGURE, AnnotationFormat, read_annotations
from midog.io.slide import SlideReader, open_slide
from midog.training.augment import build_stain_augmentation
from midog.training.sampling import PatchSampler, max_jitter_px, patch_boxes, patch_size_pair

__all__ = ["MidogppPatchDataset", "MultiEMAHook", "StainAugment"]

logger = logging.getLogger(__name__)

DEFAULT_CLASSES: tuple[str, ...] = (MITOTIC_FIGURE, IMPOSTER)

# Patches are read at level 0 and never resampled, so the pixel size only has to pass
# open_slide's check. Passing it also opens TIFFs that carry no resolution tags.
_OPEN_MPP = 0.25

# Colour of patch pixels that lie outside an image smaller than the patch.
_FILL_RGB = (255, 255, 255)

_MAX_NAMES_SHOWN = 5


def _first_names(names: Sequence[Any]) -> str:
    """Return up to five names joined by commas, with ", ..." when there are more."""
    shown = ", ".join(str(name) for name in names[:_MAX_NAMES_SHOWN])
    return shown + (", ..." if len(names) > _MAX_NAMES_SHOWN else "")


def _format_counts(counts: Mapping[Any, int]) -> str:
    return ", ".join(f"{key} ({count})" for key, count in sorted(counts.items(), key=lambda kv: -kv[1]))


def _select_images(
    images: pd.DataFrame,
    source: Path,
    image_ids: Sequence[int | str] | None,
    split: str | None,
    domain_column: str,
) -> pd.DataFrame:
    """Keep the labelled images, restricted to ``image_ids`` and ``split``, that have a domain.

    Args:
        images: the image table of ``read_annotations``.
        source: the annotation file, for messages.
        image_ids: image ids (int) or file names (str) to keep, or None for all.
        split: value of the ``split`` column to keep, or None for all.
        domain_column: the column whose values are the domains.

    Returns:
        The selected rows, in the table's order.

    Raises:
        AnnotationError: an id or name is not in the table, ``domain_column`` does not
            exist, or no image remains.
    """
    if domain_column not in images.columns:
        raise AnnotationError(
            f"{source}: unknown domain_column {domain_column!r}; use one of tumor, scanner, lab, species"
        )
    selected = images[images["labelled"]]
    unlabelled = len(images) - len(selected)
    if unlabelled:
        logger.info("%s: %d images without annotations are not used for training", source, unlabelled)

    if image_ids is not None:
        requested = list(image_ids)
        by_id = {int(v): name for v, name in zip(images["image_id"], images["image"]) if not pd.isna(v)}
        names = set(images["image"])
        resolved: list[str] = []
        unknown: list[Any] = []
        for value in requested:
            if isinstance(value, str) and value in names:
                resolved.append(value)
            elif not isinstance(value, str) and int(value) in by_id:
                resolved.append(by_id[int(value)])
            else:
                unknown.append(value)
        if unknown:
            raise AnnotationError(
                f"{source}: {len(unknown)} of {len(requested)} image_ids are not in the file "
                f"({_first_names(unknown)}); pass image ids or file names listed there"
            )
        unlabelled_requested = sorted(set(resolved) - set(selected["image"]))
        if unlabelled_requested:
            logger.warning(
                "%s: %d of the requested images have no annotations and are not used (%s)",
                source,
                len(unlabelled_requested),
                _first_names(unlabelled_requested),
            )
        selected = selected[selected["image"].isin(set(resolved))]

    if split is not None:
        present = sorted({str(v) for v in selected["split"] if v is not None})
        selected = selected[selected["split"] == split]
        if len(selected) == 0:
            raise AnnotationError(
                f"{source}: no image has split {split!r} (splits present: {', '.join(present) or 'none'}); "
                "pass the domains table that gives the split (--domains), or set split=None"
            )

    no_domain = selected[selected[domain_column].isna()]
    if len(no_domain):
        logger.warning(
            "%s: %d images have no %s and are not used (%s)",
            source,
            len(no_domain),
            domain_column,
            _first_names(list(no_domain["image"])),
        )
        selected = selected[selected[domain_column].notna()]
    if len(selected) == 0:
        raise AnnotationError(f"{source}: no labelled image with a {domain_column} remains to train on")
    return selected.reset_index(drop=True)


def _drop_missing_files(
    images: pd.DataFrame, images_dir: Path, source: Path, allow_missing_images: bool
) -> pd.DataFrame:
    """Remove images whose file is not in ``images_dir``, or raise.

    Raises:
        AnnotationError: files are missing and ``allow_missing_images`` is False, or
            every file is missing.
    """
    exists = np.array([(images_dir / name).is_file() for name in images["image"]], dtype=bool)
    missing = list(images.loc[~exists, "image"])
    if not missing:
        return images
    message = (
        f"{len(missing)} of {len(images)} images listed in {source} are missing from {images_dir} "
        f"({_first_names(missing)})"
    )
    if not allow_missing_images:
        raise AnnotationError(
            f"{message}; copy them there, or pass --allow-missing-images (allow_missing_images=True) "
            "to train on the others"
        )
    if exists.sum() == 0:
        raise AnnotationError(f"{message}: no image is left; check images_dir (--images)")
    logger.warning("%s; training on the other %d", message, int(exists.sum()))
    return images[exists].reset_index(drop=True)


def _check_image_sizes(
    images: pd.DataFrame, annotations: pd.DataFrame, images_dir: Path, source: Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Compare each file's size with the table's, and take it from the file where the table has none.

    Opens each file once to read its header. Centres of images whose size came from
    the file are clipped to it with one warning that counts them, because the
    annotation reader could not clip them.

    Returns:
        ``(images, annotations)`` with ``width`` and ``height`` known for every image.

    Raises:
        AnnotationError: a file's size differs from the annotation file's.
        SlideOpenError: a file cannot be opened.
    """
    images = images.copy()
    sized_from_file: list[str] = []
    for row in images.itertuples():
        with open_slide(images_dir / row.image, mpp=_OPEN_MPP) as reader:
            width, height = reader.dimensions
        if pd.isna(row.width) or pd.isna(row.height):
            images.loc[row.Index, ["width", "height"]] = (width, height)
            sized_from_file.append(row.image)
        elif (int(row.width), int(row.height)) != (width, height):
            raise AnnotationError(
                f"{images_dir / row.image} is {width}x{height} px, but {source} gives {int(row.width)}x"
                f"{int(row.height)} px; pass the annotation file that belongs to these images"
            )
    images["width"] = images["width"].astype(np.int64)
    images["height"] = images["height"].astype(np.int64)
    if not sized_from_file:
        return images, annotations

    annotations = annotations.copy()
    sizes = images.set_index("image")
    rows = annotations["image"].isin(set(sized_from_file))
    x_max = annotations.loc[rows, "image"].map(sizes["width"]).to_numpy(dtype=np.float64) - 1
    y_max = annotations.loc[rows, "image"].map(sizes["height"]).to_numpy(dtype=np.float64) - 1
    x = annotations.loc[rows, "x"].to_numpy(dtype=np.float64)
    y = annotations.loc[rows, "y"].to_numpy(dtype=np.float64)
    x_clipped = np.clip(x, 0, x_max)
    y_clipped = np.clip(y, 0, y_max)
    moved = int(((x_clipped != x) | (y_clipped != y)).sum())
    if moved:
        logger.warning(
            "%s: clipped %d annotation centres lying outside their image (size read from the file) "
            "to the image border",
            source,
            moved,
        )
        annotations.loc[rows, "x"] = x_clipped
        annotations.loc[rows, "y"] = y_clipped
    return images, annotations


def _report_labels(annotations: pd.DataFrame, classes: tuple[str, ...], source: Path) -> None:
    """Warn about annotation labels that are not classes; those cells get no box."""
    outside = annotations.loc[~annotations["label"].isin(classes), "label"]
    if len(outside):
        logger.warning(
            "%s: %d annotations have labels outside classes %s: %s; they get no box and count as "
            "background (imposters still serve as centres of imposter patches)",
            source,
            len(outside),
            ", ".join(repr(c) for c in classes),
            _format_counts(Counter(outside)),
        )
    absent = [name for name in classes if not (annotations["label"] == name).any()]
    if absent:
        logger.warning("%s: classes %s have no annotation in the selected images", source, ", ".join(absent))


@DATASETS.register_module()
class MidogppPatchDataset(Dataset):
    """Training patches read on the fly from large MIDOG++-style images, balanced by domain.

    Item ``i`` is the patch that :class:`~midog.training.sampling.PatchSampler` draws
    for index ``i`` with seed ``seed``, read at level 0 without resampling. Every
    labelled cell whose centre lies in the patch becomes a ``box_size_px`` square box,
    clipped at the patch border. Patches without any cell are kept: they give valid
    samples with no boxes. ``img_id`` is the index, so every item has its own.

    Images are opened only when a patch is read, and at most ``max_open_images`` stay
    open per process. The open readers are not pickled, and a process that inherited
    them through fork reopens its own, so the dataset works in data-loader workers
    started by fork or spawn.

    Args:
        images_dir: folder with the image files named as in the annotation file.
        annotation_file: MIDOG++ JSON or another file that ``read_annotations`` reads.
        patch_size: patch side in px, or ``(width, height)`` in px.
        annotation_format: format of ``annotation_file`` (see ``read_annotations``).
        domains_csv: optional table of per-image domains and split, such as MIDOG++
            ``datasets_xvalidation.csv``.
        image_ids: restrict training to these image ids (int) or file names (str),
            e.g. one cross-validation fold; None uses every labelled image.
        split: restrict training to images with this ``split`` value (``"train"``
            in MIDOG++ with its domains table); None ignores the split.
        allow_missing_images: train on the images present when some listed images
            are missing from ``images_dir``, with a warning, instead of raising.
        box_size_px: side of the square box around each cell centre, px.
        classes: class names in label order; cells with other labels get no box.
        domain_column: image-table column whose values are the domains balanced.
        domain_weights: relative weight per domain; None weighs domains equally.
        patch_kind_weights: relative weights of ``"mitotic figure"``,
            ``"imposter"`` and ``"random"`` patches; None is 0.5, 0.25, 0.25.
        jitter_px: largest offset of a centred cell from the patch centre, px, per
            axis; None uses the largest offset that keeps the cell's whole box in the
            patch (see ``max_jitter_px``).
        length: number of items, a virtual epoch; the sampler draws indices from it.
        seed: seed of the patch choice and, through the results' ``seed`` key, of
            seeded transforms such as :class:`StainAugment`.
        pipeline: mmdet transforms applied to each patch, ending with ``PackDetInputs``.
        max_open_images: images kept open per process, most recently used first.

    Raises:
        AnnotationError: the annotation file is invalid or of another format than
            declared, images are missing (unless allowed), an image's size differs
            from the annotation file's, an id, split or domain weight matches
            nothing, or no image remains.
        SlideOpenError: an image file cannot be opened.
        MidogError: ``images_dir`` is not a folder, or a size, weight or count is
            out of range.
    """

    def __init__(
        self,
        images_dir: str | Path,
        annotation_file: str | Path,
        patch_size: int | tuple[int, int],
        annotation_format: AnnotationFormat = "auto",
        domains_csv: str | Path | None = None,
        image_ids: Sequence[int | str] | None = None,
        split: str | None = None,
        allow_missing_images: bool = False,
        box_size_px: float = 64,
        classes: Sequence[str] = DEFAULT_CLASSES,
        domain_column: str = "tumor",
        domain_weights: Mapping[str, float] | None = None,
        patch_kind_weights: Mapping[str, float] | None = None,
        jitter_px: int | None = None,
        length: int = 100_000,
        seed: int = 0,
        pipeline: Sequence[Mapping[str, Any]] = (),
        max_open_images: int = 16,
    ) -> None:
        self.images_dir = Path(images_dir)
        self.annotation_file = Path(annotation_file)
        if not self.images_dir.is_dir():
            raise MidogError(
                f"images_dir {self.images_dir} is not a folder; pass the image folder (--images)"
            )
        self.patch_size_px = patch_size_pair(patch_size)
        self.box_size_px = float(box_size_px)
        if not self.box_size_px > 0:
            raise MidogError(f"box_size_px must be positive, got {box_size_px!r}")
        self.classes = tuple(str(name) for name in classes)
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise MidogError(f"classes must be distinct names, at least one, got {classes!r}")
        self.length = int(length)
        if self.length < 1:
            raise MidogError(f"length must be at least 1, got {length!r}")
        self.max_open_images = int(max_open_images)
        if self.max_open_images < 1:
            raise MidogError(f"max_open_images must be at least 1, got {max_open_images!r}")
        self.seed = int(seed)

        annotations, images = read_annotations(self.annotation_file, annotation_format, domains_csv)
        images = _select_images(images, self.annotation_file, image_ids, split, domain_column)
        images = _drop_missing_files(images, self.images_dir, self.annotation_file, allow_missing_images)
        annotations = annotations[annotations["image"].isin(set(images["image"]))]
        images, annotations = _check_image_sizes(images, annotations, self.images_dir, self.annotation_file)
        _report_labels(annotations, self.classes, self.annotation_file)

        if jitter_px is None:
            jitter_px = max_jitter_px(self.patch_size_px, self.box_size_px)
        self.sampler = PatchSampler(
            images,
            annotations,
            self.patch_size_px,
            domain_column=domain_column,
            domain_weights=domain_weights,
            patch_kind_weights=patch_kind_weights,
            jitter_px=jitter_px,
            seed=self.seed,
            source=str(self.annotation_file),
        )
        class_index = {name: i for i, name in enumerate(self.classes)}
        # Per image and cell: the class index, or -1 for labels outside classes.
        self._cell_classes = [
            np.array([class_index.get(label, -1) for label in self.sampler.cells(i)[1]], dtype=np.int64)
            for i in range(len(self.sampler))
        ]
        self.metainfo = {"classes": self.classes}
        # mmdet's registry resolves mmdet's transforms and midog's without a default scope.
        self.pipeline = Compose([TRANSFORMS.build(t) if isinstance(t, Mapping) else t for t in pipeline])
        self._readers: OrderedDict[str, SlideReader] = OrderedDict()
        self._readers_pid = os.getpid()

        domain_counts = Counter(str(v) for v in images[domain_column])
        logger.info(
            "MIDOG++ patch dataset: %d images in %d %s domains (%s), %d cells; %dx%d px patches, "
            "%s px boxes, jitter up to %d px, %d items",
            len(images),
            len(domain_counts),
            domain_column,
            _format_counts(domain_counts),
            len(annotations),
            *self.patch_size_px,
            f"{self.box_size_px:g}",
            jitter_px,
            self.length,
        )

    def __len__(self) -> int:
        return self.length

    def _reader(self, image: str) -> SlideReader:
        """Return an open reader of ``image``, opening it and closing the least recently used as needed."""
        if self._readers_pid != os.getpid():
            # Inherited through fork: the parent's readers belong to the parent.
            self._readers = OrderedDict()
            self._readers_pid = os.getpid()
        reader = self._readers.get(image)
        if reader is not None:
            self._readers.move_to_end(image)
            return reader
        reader = open_slide(self.images_dir / image, mpp=_OPEN_MPP)
        self._readers[image] = reader
        if len(self._readers) > self.max_open_images:
            _, oldest = self._readers.popitem(last=False)
            oldest.close()
        return reader

    def read_patch(self, index: int) -> dict[str, Any]:
        """Read item ``index`` before the pipeline.

        Args:
            index: dataset index in ``[0, length)``.

        Returns:
            mmdet results. ``img`` is ``(H, W, 3)`` uint8 RGB. ``gt_bboxes`` is a
            ``HorizontalBoxes`` of ``(M, 4)`` float32 ``x1, y1, x2, y2`` in patch
            px, with ``gt_bboxes_labels`` ``(M,)`` int64 class indices and
            ``gt_ignore_flags``. ``img_id`` is the index. The image meta keys that
            ``PackDetInputs`` needs are set, and so are ``seed`` ``(seed, index)``,
            ``domain``, ``patch_kind`` and ``patch_l0_xy`` (the patch's top-left
            in level-0 px of its image).

        Raises:
            IndexError: ``index`` is outside ``[0, length)``.
            SlideReadError: the patch's pixels cannot be read.
        """
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} is out of range for a dataset of length {self.length}")
        choice = self.sampler.choose(index)
        image = self._reader(choice.image).read_region(choice.l0_xy, 0, self.patch_size_px, _FILL_RGB)

        centres, _ = self.sampler.cells(choice.image_index)
        boxes, rows = patch_boxes(centres, choice.l0_xy, self.patch_size_px, self.box_size_px)
        labels = self._cell_classes[choice.image_index][rows]
        boxes, labels = boxes[labels >= 0], labels[labels >= 0]

        height, width = image.shape[:2]
        return {
            "img": image,
            "img_id": int(index),
            "img_path": str(self.images_dir / choice.image),
            "ori_shape": (height, width),
            "img_shape": (height, width),
            "scale_factor": (1.0, 1.0),
            "flip": False,
            "flip_direction": None,
            "gt_bboxes": HorizontalBoxes(boxes.reshape(-1, 4)),
            "gt_bboxes_labels": labels.astype(np.int64),
            "gt_ignore_flags": np.zeros(len(labels), dtype=bool),
            "seed": (self.seed, int(index)),
            "domain": choice.domain,
            "patch_kind": choice.kind,
            "patch_l0_xy": choice.l0_xy,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.pipeline(self.read_patch(int(index)))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_readers"] = OrderedDict()
        state["_readers_pid"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._readers_pid = os.getpid()


@TRANSFORMS.register_module()
class StainAugment:
    """Stain, flip, rotation, colour, blur and JPEG augmentation, seeded by the item.

    Builds the pipeline of :func:`~midog.training.augment.build_stain_augmentation`
    once and reseeds it for every item from the results' ``seed`` key, so an item
    looks the same in every worker and rerun. Flips and 90-degree rotations move
    ``gt_bboxes`` with the image; a rotation of a non-square patch swaps its width and
    height.

    Args:
        **augmentation: keyword arguments of ``build_stain_augmentation`` other than
            ``bbox_params`` and ``seed``, e.g. ``hed_p=0.5``, ``rotate90_p=0.0``.

    Raises:
        MidogError: ``bbox_params`` or ``seed`` is given.
        ValueError: an augmentation argument is out of range.
    """

    def __init__(self, **augmentation: Any) -> None:
        import albumentations as A

        reserved = sorted({"bbox_params", "seed"} & set(augmentation))
        if reserved:
            raise MidogError(f"StainAugment sets {', '.join(reserved)} itself; remove it from the config")
        self.augmentation_args = dict(augmentation)
        self.augmentation = build_stain_augmentation(
            **augmentation,
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["rows"]),
            seed=0,
        )

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        seed = np.random.SeedSequence([*results.get("seed", (0, 0)), 2]).generate_state(1)[0]
        self.augmentation.set_random_seed(int(seed))

        boxes = results["gt_bboxes"].numpy().reshape(-1, 4) if "gt_bboxes" in results else np.zeros((0, 4))
        out = self.augmentation(image=results["img"], bboxes=boxes, rows=np.arange(len(boxes)))
        image = np.ascontiguousarray(out["image"])
        results["img"] = image
        results["img_shape"] = image.shape[:2]
        if "gt_bboxes" in results:
            # albumentations returns the boxes with their row indices, which select the matching labels.
            rows = np.asarray(out["rows"], dtype=np.int64)
            results["gt_bboxes"] = HorizontalBoxes(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4))
            for key in ("gt_bboxes_labels", "gt_ignore_flags"):
                if key in results:
                    results[key] = results[key][rows]
        return results

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.augmentation_args.items())
        return f"{type(self).__name__}({arguments})"


@HOOKS.register_module()
class MultiEMAHook(Hook):
    """Exponential moving averages of the model weights at several momenta.

    After every optimizer step (every ``accumulative_counts`` iterations under
    gradient accumulation), each average moves towards the current weights:
    ``average = (1 - momentum) * average + momentum * weights``, where momentum is
    mmengine's name for one minus the decay rate. Parameters and buffers (batch-norm
    statistics) are averaged.

    A saved checkpoint contains the average at ``checkpoint_momentum`` as its
    ``state_dict``, so export and inference use it. All averages are stored under
    ``ema_state_dicts``, keyed by the momentum written with ``repr``, and the
    weights being trained under ``raw_state_dict``, from which resuming continues.

    Args:
        momenta: momenta in (0, 1), e.g. ``(1e-3, 5e-4, 2.5e-4)``.
        checkpoint_momentum: the momentum whose average becomes the checkpoint's
            ``state_dict``; one of ``momenta``.
        ema_type: mmengine averaged-model class: ``"ExponentialMovingAverage"``, or
            ``"ExpMomentumEMA"``, whose momentum starts at 1 and falls to the given
            value, so that early averages follow the weights closely.

    Raises:
        MidogError: a momentum is outside (0, 1) or repeats, or
            ``checkpoint_momentum`` is not among them.
    """

    priority = "NORMAL"

    def __init__(
        self,
        momenta: Sequence[float],
        checkpoint_momentum: float,
        ema_type: str = "ExponentialMovingAverage",
    ) -> None:
        self.momenta = tuple(float(m) for m in momenta)
        if (
            not self.momenta
            or any(not 0 < m < 1 for m in self.momenta)
            or len(set(self.momenta)) < len(momenta)
        ):
            raise MidogError(f"MultiEMAHook momenta must be distinct values in (0, 1), got {momenta!r}")
        if float(checkpoint_momentum) not in self.momenta:
            raise MidogError(
                f"MultiEMAHook checkpoint_momentum {checkpoint_momentum!r} is not one of momenta {momenta!r}"
            )
        self.checkpoint_momentum = float(checkpoint_momentum)
        self.ema_type = ema_type

    def before_run(self, runner) -> None:
        from mmdet.registry import MODELS
        from mmengine.model import is_model_wrapper

        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self.src_model = model
        self.ema_models = {
            momentum: MODELS.build(
                dict(type=self.ema_type, momentum=momentum, update_buffers=True),
                default_args=dict(model=model),
            )
            for momentum in self.momenta
        }

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        should_update = getattr(runner.optim_wrapper, "should_update", None)
        if should_update is not None and not should_update():
            return
        for ema_model in self.ema_models.values():
            ema_model.update_parameters(self.src_model)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        ema_state_dicts = {repr(momentum): ema.state_dict() for momentum, ema in self.ema_models.items()}
        checkpoint["ema_state_dicts"] = ema_state_dicts
        checkpoint["raw_state_dict"] = checkpoint["state_dict"]
        saved = ema_state_dicts[repr(self.checkpoint_momentum)]
        prefix = "module."
        checkpoint["state_dict"] = {
            key[len(prefix) :]: value for key, value in saved.items() if key.startswith(prefix)
        }
        checkpoint.setdefault("meta", {})["ema_checkpoint_momentum"] = self.checkpoint_momentum

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not runner._resume:
            return
        if "raw_state_dict" not in checkpoint:
            logger.warning(
                "the checkpoint has no raw_state_dict; the moving averages restart from its state_dict"
            )
            return
        # The runner loads checkpoint["state_dict"] into the model after this hook.
        checkpoint["state_dict"] = checkpoint["raw_state_dict"]
        stored = checkpoint.get("ema_state_dicts", {})
        for momentum, ema_model in self.ema_models.items():
            if repr(momentum) in stored:
                ema_model.load_state_dict(stored[repr(momentum)])
            else:
                logger.warning("the checkpoint has no moving average at momentum %r; it restarts", momentum)
