"""``midog train``: train a detector from an mmdet-style config."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any

from midog.errors import MidogError

EPILOG = """examples:
  midog train configs/rtmdet_s_mf_crops.py --data-root ../shared/data
  midog train configs/rtmdet_s_midogpp.py --images /data/midogpp/images \\
      --annotations MIDOG++.json --domains datasets_xvalidation.csv
"""

# Config keys of the patch dataset that the MIDOG++ options set.
_DATASET_KEY = "train_dataloader.dataset"
_PATCH_DATASET_TYPE = "MidogppPatchDataset"


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise MidogError(f"--cfg-options entry {item!r} is not of the form key=value")
        try:
            overrides[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[key] = text
    return overrides


def _check_path(path: Path, option: str, kind: str) -> str:
    if kind == "folder" and not path.is_dir():
        raise MidogError(f"{option} {path} is not a folder; pass the folder that holds the images")
    if kind == "file" and not path.is_file():
        raise MidogError(f"{option} {path} is not a file; check the path")
    return str(path)


def _dataset_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Return the dataset overrides of the MIDOG++ options, checking that their paths exist."""
    overrides: dict[str, Any] = {}
    if args.images is not None:
        overrides[f"{_DATASET_KEY}.images_dir"] = _check_path(args.images, "--images", "folder")
    if args.annotations is not None:
        overrides[f"{_DATASET_KEY}.annotation_file"] = _check_path(args.annotations, "--annotations", "file")
    if args.domains is not None:
        overrides[f"{_DATASET_KEY}.domains_csv"] = _check_path(args.domains, "--domains", "file")
    if args.allow_missing_images:
        overrides[f"{_DATASET_KEY}.allow_missing_images"] = True
    return overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a detector with mmdet/mmengine",
        description="Train RTMDet from an mmdet-style config (CPU, or GPU where torch sees one).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", type=Path, help="config file, e.g. configs/rtmdet_s_mf_crops.py")
    parser.add_argument("--work-dir", type=Path, help="folder for checkpoints and logs (default: work_dirs/<config name>)")
    parser.add_argument("--data-root", help="folder with the real data (sets the config's data_root)")
    parser.add_argument(
        "--images",
        type=Path,
        help="folder with the MIDOG++ images (001.tiff, ...); sets the dataset's images_dir",
    )
    parser.add_argument(
        "--annotations",
        type=Path,
        help="annotation file, e.g. MIDOG++.json; sets the dataset's annotation_file",
    )
    parser.add_argument(
        "--domains",
        type=Path,
        help="per-image domains table, e.g. datasets_xvalidation.csv; sets the dataset's domains_csv",
    )
    parser.add_argument(
        "--allow-missing-images",
        action="store_true",
        help="train on the images present when some listed in --annotations are missing (default: stop)",
    )
    parser.add_argument("--max-iters", type=int, help="number of training iterations (default: the config's)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --work-dir")
    parser.add_argument(
        "--launcher",
        choices=["none", "pytorch"],
        default="none",
        help="'pytorch' when started by torchrun for several processes or GPUs (default: none)",
    )
    parser.add_argument(
        "--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="override config values, e.g. seed=1"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from midog.training.train import train

    if not args.config.is_file():
        raise MidogError(f"config file {args.config} not found")
    overrides = _parse_overrides(args.cfg_options)
    if args.data_root:
        if not Path(args.data_root).is_dir():
            raise MidogError(f"--data-root {args.data_root} is not a folder")
        overrides["train_dataloader.dataset.data_root"] = str(args.data_root)
    dataset_overrides = _dataset_overrides(args)
    if dataset_overrides:
        from midog.training.train import load_config

        dataset_type = load_config(args.config).train_dataloader.dataset.get("type")
        if dataset_type != _PATCH_DATASET_TYPE:
            raise MidogError(
                f"--images, --annotations, --domains and --allow-missing-images set fields of "
                f"{_PATCH_DATASET_TYPE}, but {args.config} trains on {dataset_type}; "
                "use a MIDOG++ config such as configs/rtmdet_s_midogpp.py"
            )
        overrides.update(dataset_overrides)
    if args.max_iters is not None:
        if args.max_iters < 1:
            raise MidogError(f"--max-iters must be at least 1, got {args.max_iters}")
        overrides["train_cfg.max_iters"] = args.max_iters
    work_dir = args.work_dir or Path("work_dirs") / args.config.stem
    checkpoint = train(args.config, work_dir, overrides, resume=args.resume, launcher=args.launcher)
    print(f"trained {args.config}: last checkpoint {checkpoint}")
    return 0
