#!/usr/bin/env python3
"""Measure how fast the MIDOG++ patch sampler delivers augmented patches, next to one training step.

The MIDOG++ images are not available here, so the benchmark writes its own. For a few
real MIDOG++ images, one per tumour type, it draws an image of the real size with the
real cell centres: dark discs for mitotic figures and paler discs for imposters, on a
noisy pink background. Each is saved as a tiled, Deflate-compressed TIFF, a layout
OpenSlide reads. The dataset then reads patches from those files exactly as in
training, with the training config's augmentation.

It reports patches per second through a PyTorch DataLoader with 0, 1 and 2 worker
processes (the first batch, which includes starting the workers, is left out), and
the time of one training step (forward, backward and optimizer step) of RTMDet-S at
the same batch size, on this machine's CPU. The sampler keeps up when a batch takes
less time to load than a step takes to train.

Example:
    python tools/benchmark_sampler.py --annotations ../shared/data/midogpp/MIDOG++.json \
        --output docs/benchmarks-sampler.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "rtmdet_s_midogpp.py"

BACKGROUND_RGB = (236, 190, 214)
FIGURE_RGB = (50, 20, 80)
IMPOSTER_RGB = (160, 120, 190)
DISC_RADIUS_PX = 20  # px at 0.25 µm/px, a 10 µm wide nucleus

logger = logging.getLogger("benchmark_sampler")


def _draw(width: int, height: int, cells: list[tuple[float, float, int]], seed: int) -> np.ndarray:
    """Return a ``(height, width, 3)`` uint8 RGB image with one disc per cell (category 1 dark, 2 pale)."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = BACKGROUND_RGB
    # Row-wise noise keeps memory low on 7215x5412 px images.
    for y0 in range(0, height, 512):
        rows = image[y0 : y0 + 512]
        noise = rng.integers(-12, 13, size=rows.shape[:2] + (1,), dtype=np.int16)
        rows[:] = np.clip(rows.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    yy, xx = np.ogrid[-DISC_RADIUS_PX : DISC_RADIUS_PX + 1, -DISC_RADIUS_PX : DISC_RADIUS_PX + 1]
    disc = xx**2 + yy**2 <= DISC_RADIUS_PX**2
    for x, y, category in cells:
        x0, y0 = int(x) - DISC_RADIUS_PX, int(y) - DISC_RADIUS_PX
        if x0 < 0 or y0 < 0 or x0 + disc.shape[1] > width or y0 + disc.shape[0] > height:
            continue
        window = image[y0 : y0 + disc.shape[0], x0 : x0 + disc.shape[1]]
        window[disc] = FIGURE_RGB if category == 1 else IMPOSTER_RGB
    return image


def write_images(annotations: Path, out_dir: Path, num_images: int) -> tuple[Path, Path]:
    """Write ``num_images`` real-size TIFFs, one per tumour type, and their MIDOG++ annotation file.

    Returns:
        ``(images_dir, annotation_file)``.
    """
    data = json.loads(annotations.read_text())
    cells: dict[int, list[tuple[float, float, int]]] = {}
    for annotation in data["annotations"]:
        x1, y1, x2, y2 = annotation["bbox"]
        cells.setdefault(annotation["image_id"], []).append(
            ((x1 + x2) / 2, (y1 + y2) / 2, annotation["category_id"])
        )
    # Images with both a mitotic figure and an imposter, so that every patch kind occurs.
    chosen, seen_tumours = [], set()
    for image in data["images"]:
        categories = {category for _, _, category in cells.get(image["id"], [])}
        if categories >= {1, 2} and image["tumor_type"] not in seen_tumours:
            chosen.append(image)
            seen_tumours.add(image["tumor_type"])
        if len(chosen) == num_images:
            break

    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for image in chosen:
        start = time.perf_counter()
        rgb = _draw(image["width"], image["height"], cells[image["id"]], image["id"])
        tifffile.imwrite(
            images_dir / image["file_name"],
            rgb,
            photometric="rgb",
            tile=(256, 256),
            compression="zlib",
            resolution=(40000, 40000),
            resolutionunit="CENTIMETER",
        )
        logger.info(
            "wrote %s (%dx%d px) in %.1f s",
            image["file_name"],
            image["width"],
            image["height"],
            time.perf_counter() - start,
        )
    chosen_ids = {image["id"] for image in chosen}
    subset = dict(
        data, images=chosen, annotations=[a for a in data["annotations"] if a["image_id"] in chosen_ids]
    )
    annotation_file = out_dir / "MIDOG++.json"
    annotation_file.write_text(json.dumps(subset))
    return images_dir, annotation_file


def _build_dataset(config, images_dir: Path, annotation_file: Path):
    from midog.training.midogpp import MidogppPatchDataset

    settings = dict(config.train_dataloader.dataset)
    settings.pop("type")
    settings.update(images_dir=images_dir, annotation_file=annotation_file, domains_csv=None, split=None)
    return MidogppPatchDataset(**settings)


def measure_sampler(dataset, batch_size: int, num_workers: int, num_batches: int) -> float:
    """Return patches per second over ``num_batches`` batches after the first."""
    from mmengine.dataset import pseudo_collate
    from torch.utils.data import DataLoader

    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=pseudo_collate,
        sampler=range(batch_size * (num_batches + 1)),
    )
    batches = iter(loader)
    next(batches)  # warm-up: worker start, first file opens
    start = time.perf_counter()
    count = sum(len(batch["inputs"]) for batch in batches)
    return count / (time.perf_counter() - start)


def measure_train_step(config, dataset, batch_size: int, num_steps: int) -> float:
    """Return the median seconds of one RTMDet-S training step on CPU, after one warm-up step."""
    import torch
    from mmdet.registry import MODELS
    from mmengine.dataset import pseudo_collate
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope

    init_default_scope("mmdet")
    torch.manual_seed(0)
    model = MODELS.build(config.model)
    model.train()
    optim_config = dict(config.optim_wrapper, accumulative_counts=1)
    optim_wrapper = build_optim_wrapper(model, optim_config)
    seconds = []
    for step in range(num_steps + 1):
        batch = pseudo_collate([dataset[step * batch_size + i] for i in range(batch_size)])
        start = time.perf_counter()
        model.train_step(batch, optim_wrapper)
        if step > 0:
            seconds.append(time.perf_counter() - start)
        logger.info("training step %d: %.1f s", step, time.perf_counter() - start)
    return float(np.median(seconds))


def markdown(rows: list[tuple[int, float]], step_s: float, args: argparse.Namespace, num_images: int) -> str:
    """Return the results as a Markdown section."""
    width, height = args.patch_size
    setup = (
        f"Patches of {width}x{height} px read from {num_images} generated real-size MIDOG++ TIFFs (tiled, "
        "Deflate) with the augmentation of `configs/rtmdet_s_midogpp.py`, batch size "
        f"{args.batch_size}, measured with `tools/benchmark_sampler.py` on {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}, Python {platform.python_version()})."
    )
    step = (
        f"One RTMDet-S training step (forward, backward, AdamW step) on batch {args.batch_size} on the "
        f"same CPU: {step_s:.1f} s (median of {args.train_steps} after one warm-up step)."
    )
    lines = [
        "## MIDOG++ patch sampler",
        "",
        setup,
        "",
        "| data-loader workers | patches/s | s per batch | batches loaded per training step |",
        "|---|---|---|---|",
    ]
    for num_workers, patches_per_s in rows:
        batch_s = args.batch_size / patches_per_s
        lines.append(f"| {num_workers} | {patches_per_s:.2f} | {batch_s:.2f} | {step_s / batch_s:.1f} |")
    gpu = (
        "A GPU takes far less time per step, and this benchmark does not measure one: for GPU training, "
        "the patches/s above must exceed the batch size divided by the GPU's step time."
    )
    lines += ["", step, "", gpu, ""]
    if args.note:
        lines += [args.note, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--annotations",
        type=Path,
        default=REPO.parent / "shared/data/midogpp/MIDOG++.json",
        help="the real MIDOG++.json (default: ../shared/data/midogpp/MIDOG++.json)",
    )
    parser.add_argument("--num-images", type=int, default=4, help="images to generate, one per tumour type")
    parser.add_argument(
        "--patch-size",
        type=int,
        nargs=2,
        default=(1920, 1280),
        metavar=("WIDTH", "HEIGHT"),
        help="patch size in px (default: 1920 1280, the recipe's)",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="patches per batch (default: 4)")
    parser.add_argument("--batches", type=int, default=5, help="timed batches per worker count (default: 5)")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=(0, 1, 2), help="worker counts (default: 0 1 2)"
    )
    parser.add_argument("--train-steps", type=int, default=1, help="timed training steps (default: 1)")
    parser.add_argument("--output", type=Path, help="Markdown file for the results")
    parser.add_argument(
        "--note", default="", help="sentence appended to the Markdown, e.g. about machine load"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from midog.training.train import load_config

    config = load_config(CONFIG)
    config.train_dataloader.dataset.patch_size = tuple(args.patch_size)
    with tempfile.TemporaryDirectory(prefix="benchmark_sampler_") as tmp:
        images_dir, annotation_file = write_images(args.annotations, Path(tmp), args.num_images)
        dataset = _build_dataset(config, images_dir, annotation_file)
        rows = []
        for num_workers in args.workers:
            patches_per_s = measure_sampler(dataset, args.batch_size, num_workers, args.batches)
            logger.info("%d workers: %.2f patches/s", num_workers, patches_per_s)
            rows.append((num_workers, patches_per_s))
        step_s = measure_train_step(config, dataset, args.batch_size, args.train_steps)

    text = markdown(rows, step_s, args, args.num_images)
    print(text)
    if args.output:
        args.output.write_text(text)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
