"""``midog export``: write a trained checkpoint as ONNX for ``midog detect``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from midog.errors import MidogError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX",
        description="Export an mmengine checkpoint to ONNX with raw head outputs and midog metadata, "
        "and print the maximum absolute difference to PyTorch on real crops.",
    )
    parser.add_argument("checkpoint", type=Path, help="mmengine checkpoint (.pth)")
    parser.add_argument("--config", type=Path, required=True, help="the config the checkpoint was trained with")
    parser.add_argument("--output", type=Path, required=True, help="ONNX file to write")
    parser.add_argument(
        "--threshold", type=float, help="default score threshold stored in the model, 0-1 (default: the config's)"
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path("../shared/data"),
        help="real data folder whose mf_crops are used for the parity check (default: ../shared/data)",
    )
    parser.set_defaults(func=run)


def load_parity_images(data_root: Path, count: int = 8) -> np.ndarray:
    """Return ``count`` real 128x128 crops as ``(count, 128, 128, 3)`` uint8 RGB."""
    from midog.training.crops import list_crops, load_rgb

    records = list_crops(data_root / "mf_crops")
    step = max(1, len(records) // count)
    return np.stack([load_rgb(r.path) for r in records[::step][:count]])


def run(args: argparse.Namespace) -> int:
    from midog.training.export import export_onnx

    if args.threshold is not None and not 0 < args.threshold < 1:
        raise MidogError(f"--threshold must be between 0 and 1, got {args.threshold}")
    if not args.config.is_file():
        raise MidogError(f"config file {args.config} not found")
    try:
        images = load_parity_images(args.data_root)
    except FileNotFoundError as exc:
        raise MidogError(f"{exc}; pass --data-root") from exc
    report = export_onnx(args.config, args.checkpoint, args.output, images, score_thresh=args.threshold)
    print(
        f"wrote {report.output} ({report.size_bytes / 1e6:.1f} MB); PyTorch vs onnxruntime on "
        f"{report.num_parity_images} real crops: max |diff| logits {report.max_abs_diff_logits:.2e}, "
        f"box distances {report.max_abs_diff_distances:.2e} px"
    )
    return 0
