#!/usr/bin/env python3
"""Mine hard negatives for the default model on its training crops and training tissue.

Runs an exported model over the training crops of ``mf_crops`` (each pasted
on training tissue) and over the training tissue, keeps off-centre and
background detections as candidate false positives, groups them by nuclear
morphology and keeps an even share of each group (see
``midog.training.mining``). Writes into the output folder:

- ``candidates_round<N>.csv``: every candidate with its features, cluster and
  whether it was kept;
- ``hard_negatives.csv``: the kept negatives of this round, after those of
  ``--previous``, for ``configs/rtmdet_s_mf_crops_mined.py``.

Example:
    python tools/mine_default_model.py --model midog/models/rtmdet_s_mf_crops.onnx \
        --data-root ../shared/data --output work_dirs/mining/round1 --round 1
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd

from midog.inference.onnx_detector import OnnxDetector
from midog.training.mining import MiningConfig, mine_crop_canvases, read_negatives, write_negatives


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="exported ONNX model")
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"), help="real data folder")
    parser.add_argument("--output", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--round", type=int, default=1, help="mining round number (default: 1)")
    parser.add_argument(
        "--score-thresh", type=float, help="lowest candidate score (default: the model's stored threshold)"
    )
    parser.add_argument("--clusters", type=int, default=8, help="number of morphology clusters (default: 8)")
    parser.add_argument(
        "--ratio", type=float, default=1.0, help="negatives kept per training crop (default: 1.0)"
    )
    parser.add_argument("--previous", type=Path, help="negatives file of earlier rounds to carry over")
    parser.add_argument("--max-crops", type=int, help="mine at most this many training crops (quick check)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of backgrounds, k-means and sampling (default: 0)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    detector = OnnxDetector(args.model, device="cpu")
    score_thresh = detector.score_thresh if args.score_thresh is None else args.score_thresh
    config = MiningConfig(
        score_thresh=score_thresh, num_clusters=args.clusters, negative_ratio=args.ratio, seed=args.seed
    )
    args.output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    table = mine_crop_canvases(detector, args.data_root, config, args.round, max_crops=args.max_crops)
    seconds = time.perf_counter() - start
    write_negatives(args.output / f"candidates_round{args.round}.csv", table)

    kept = table[table["kept"]]
    negatives = kept
    if args.previous is not None:
        negatives = pd.concat([read_negatives(args.previous), kept], ignore_index=True)
    negatives_path = write_negatives(args.output / "hard_negatives.csv", negatives)

    print(f"round {args.round}, score threshold {score_thresh:.2f}, {seconds:.0f} s")
    counts = table.groupby("source").agg(candidates=("kept", "size"), kept=("kept", "sum"))
    print(counts.to_string())
    by_cluster = table.groupby("cluster").agg(
        candidates=("kept", "size"),
        kept=("kept", "sum"),
        crops=("source", lambda s: int((s == "crop").sum())),
        area_um2=("area_um2", "median"),
        eccentricity=("eccentricity", "median"),
        h_od_mean=("h_od_mean", "median"),
    )
    print(by_cluster.round(2).to_string())
    print(f"wrote {len(negatives)} negatives ({len(kept)} of round {args.round}) to {negatives_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
