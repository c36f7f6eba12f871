#!/usr/bin/env python3
"""Measure an exported model on held-out real crops, tissue and control squares.

Chooses the score threshold on the validation crops (never on the test
crops), optionally stores it in the model's metadata, and writes the figures
of the model card as JSON. See ``midog.training.crop_benchmark`` for the
construction of the held-out canvases.

Example:
    python tools/benchmark_crops.py --model midog/models/rtmdet_s_mf_crops.onnx \
        --data-root ../shared/data --write-threshold --output docs/model-card-figures.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from midog.inference.onnx_detector import OnnxDetector
from midog.training.crop_benchmark import benchmark_detector


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="exported ONNX model")
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"), help="real data folder")
    parser.add_argument("--threshold", type=float, help="score threshold (default: chosen on validation crops)")
    parser.add_argument("--max-crops", type=int, help="use at most this many crops per split (quick check)")
    parser.add_argument("--write-threshold", action="store_true", help="store the threshold in the model metadata")
    parser.add_argument("--output", type=Path, help="JSON file for the figures")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    detector = OnnxDetector(args.model, device="cpu")
    start = time.perf_counter()
    result = benchmark_detector(detector, args.data_root, threshold=args.threshold, max_crops=args.max_crops)
    figures = result.as_dict() | {"model": str(args.model), "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(figures, indent=2))
    if args.write_threshold:
        from midog.training.export import set_model_metadata

        set_model_metadata(args.model, {"score_thresh": f"{result.threshold:.2f}"})
        print(f"stored score threshold {result.threshold:.2f} in {args.model}")
    if args.output:
        args.output.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
