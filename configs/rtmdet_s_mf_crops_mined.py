# Fine-tune the default model (rtmdet_s_mf_crops.py) with mined hard negatives:
# a share of the unlabelled squares on each canvas is cut around the model's
# own false positives in training crops and training tissue, as written by
# tools/mine_default_model.py. Start from the last checkpoint of the default
# model and give the negatives file on the command line:
#   --cfg-options load_from=work_dirs/rtmdet_s_mf_crops/iter_2000.pth \
#       train_dataloader.dataset.hard_negatives_file=work_dirs/mining/round1/hard_negatives.csv
_base_ = ["rtmdet_s_mf_crops.py"]

# Same batch as the default model (4 canvases per process, 2 processes).
max_iters = 500
warmup_iters = 20
base_lr = 2e-4  # a fifth of the default model's peak learning rate

load_from = None  # the default model's checkpoint, set with --cfg-options load_from=...
hard_negatives_file = None  # set with --cfg-options train_dataloader.dataset.hard_negatives_file=...

train_dataloader = dict(
    dataset=dict(
        hard_negatives_file=hard_negatives_file,
        # Half of the unlabelled squares are centred on mined false positives,
        # within 16 px (4 µm) of them; the figure core of a crop they come
        # from (20 px, 5 µm radius) is left transparent.
        canvas=dict(hard_negative_share=0.5, hard_negative_jitter_px=16, figure_mask_px=20),
    ),
)

train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters + 1)
optim_wrapper = dict(optimizer=dict(lr=base_lr))
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=warmup_iters),
    dict(
        type="CosineAnnealingLR",
        eta_min=base_lr * 0.05,
        by_epoch=False,
        begin=warmup_iters,
        end=max_iters,
        T_max=max_iters - warmup_iters,
    ),
]
default_hooks = dict(checkpoint=dict(interval=250))
