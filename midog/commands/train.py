"""``midog train``: train a detector from an mmdet-style config."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any

from midog.errors import MidogError


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


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a detector with mmdet/mmengine",
        description="Train RTMDet from an mmdet-style config (CPU, or GPU where torch sees one).",
    )
    parser.add_argument("config", type=Path, help="config file, e.g. configs/rtmdet_s_mf_crops.py")
    parser.add_argument("--work-dir", type=Path, help="folder for checkpoints and logs (default: work_dirs/<config name>)")
    parser.add_argument("--data-root", help="folder with the real data (sets the config's data_root)")
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
    if args.max_iters is not None:
        if args.max_iters < 1:
            raise MidogError(f"--max-iters must be at least 1, got {args.max_iters}")
        overrides["train_cfg.max_iters"] = args.max_iters
    work_dir = args.work_dir or Path("work_dirs") / args.config.stem
    checkpoint = train(args.config, work_dir, overrides, resume=args.resume, launcher=args.launcher)
    print(f"trained {args.config}: last checkpoint {checkpoint}")
    return 0
