#!/usr/bin/env bash
# Rebuild the shipped default model: train, export, choose the threshold on the
# validation crops, and measure the held-out figures for the model card.
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
checkpoint=$(cat "$WORK_DIR/last_checkpoint")
.venv/bin/midog export "$checkpoint" --config configs/rtmdet_s_mf_crops.py --output "$MODEL" --data-root "$DATA"
.venv/bin/python tools/benchmark_crops.py --model "$MODEL" --data-root "$DATA" --write-threshold \
    --output docs/model-card-figures.json
