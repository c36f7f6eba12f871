#!/usr/bin/env bash
# Rebuild the shipped default model: train round 0, mine its false positives on
# the training crops and tissue, fine-tune round 1 with them, export, choose the
# threshold on the validation crops, and measure the held-out figures for the
# model card.
#
# The shipped model was trained this way on 2 CPU cores: two processes with one
# thread each (gloo), because two processes synchronise once per iteration
# while one process with two threads synchronises in every operator and slows
# down badly when anything else runs. On a GPU machine, run
#   midog train configs/rtmdet_s_mf_crops.py --cfg-options train_dataloader.batch_size=8
# instead of the torchrun line.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
WORK_DIR=${WORK_DIR:-work_dirs/rtmdet_s_mf_crops}
MODEL=${MODEL:-midog/models/rtmdet_s_mf_crops.onnx}

OMP_NUM_THREADS=1 .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node 2 \
    -m midog.cli train configs/rtmdet_s_mf_crops.py --work-dir "$WORK_DIR" --data-root "$DATA" \
    --launcher pytorch --cfg-options env_cfg.dist_cfg.backend=gloo
round0=$(cat "$WORK_DIR/last_checkpoint")
.venv/bin/midog export "$round0" --config configs/rtmdet_s_mf_crops.py --output "$WORK_DIR/round0.onnx" \
    --data-root "$DATA"
.venv/bin/python tools/benchmark_crops.py --model "$WORK_DIR/round0.onnx" --data-root "$DATA" \
    --write-threshold --output "$WORK_DIR/round0-figures.json"

.venv/bin/python tools/mine_default_model.py --model "$WORK_DIR/round0.onnx" --data-root "$DATA" \
    --output "$WORK_DIR/mining/round1" --round 1 --score-thresh 0.2
OMP_NUM_THREADS=1 .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node 2 \
    -m midog.cli train configs/rtmdet_s_mf_crops_mined.py --work-dir "$WORK_DIR-mined" --data-root "$DATA" \
    --launcher pytorch --cfg-options env_cfg.dist_cfg.backend=gloo "load_from=$round0" \
    "train_dataloader.dataset.hard_negatives_file=$WORK_DIR/mining/round1/hard_negatives.csv"
round1=$(cat "$WORK_DIR-mined/last_checkpoint")
.venv/bin/midog export "$round1" --config configs/rtmdet_s_mf_crops_mined.py --output "$MODEL" --data-root "$DATA"
.venv/bin/python tools/benchmark_crops.py --model "$MODEL" --data-root "$DATA" --write-threshold \
    --output docs/model-card-figures.json
