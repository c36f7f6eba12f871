# RTMDet-S, one class "mitotic figure", trained on canvases of real tissue with
# pasted crops of real mitotic figures (see midog/training/crops.py).
# Recipe of the default model shipped in midog/models.
_base_ = ["_base_/rtmdet_s.py", "_base_/runtime.py"]

data_root = "../shared/data"  # `midog train --data-root` overrides it
class_names = ("mitotic figure",)
num_classes = len(class_names)
model_mpp = 0.25  # µm/px of the canvases and of the exported model

canvas_size = 320  # px at model_mpp
# Canvases per process. The default model ran 2 processes on 2 CPU cores
# (torchrun --nproc_per_node 2, gloo), a global batch of 8.
batch_size = 4
max_iters = 2000
warmup_iters = 100
base_lr = 1e-3

model = dict(bbox_head=dict(num_classes=num_classes))

canvas = dict(
    canvas_size=canvas_size,
    max_figures=2,
    negatives_per_figure=1,  # at least as many unlabelled squares as figures
    control_share=0.5,
    scale_range=(0.8, 1.25),
    feather_px=16,
    piece_hed_scale=0.15,
    piece_hed_shift=0.15,
    canvas_hed_scale=0.1,
    canvas_hed_shift=0.1,
    box_size=50,  # px: the MIDOG 50x50 box around each figure centre
)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(
        type="MitoticCanvasDataset",
        data_root=data_root,
        split="train",
        test_source_sets=("AtNorM-Br",),
        val_fraction=0.1,
        split_seed=0,
        canvas=canvas,
        length=1_000_000,
        class_names=class_names,
        pipeline=[
            dict(type="PhotometricAugment", brightness_contrast=0.2, hue_saturation=(5, 15, 10), blur_prob=0.1),
            dict(type="PackDetInputs"),
        ],
    ),
)
val_dataloader = None
val_evaluator = None
val_cfg = None
test_dataloader = None
test_evaluator = None
test_cfg = None

train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters + 1)

optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=base_lr, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0, bias_decay_mult=0, bypass_duplicate=True),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-2, by_epoch=False, begin=0, end=warmup_iters),
    dict(
        type="CosineAnnealingLR",
        eta_min=base_lr * 0.05,
        by_epoch=False,
        begin=warmup_iters,
        end=max_iters,
        T_max=max_iters - warmup_iters,
    ),
]

custom_hooks = [
    dict(type="EMAHook", ema_type="ExpMomentumEMA", momentum=0.0002, update_buffers=True, priority=49),
    dict(type="ProgressBarHook"),
]
default_hooks = dict(checkpoint=dict(interval=600))

# Written into the exported model's metadata by `midog export`.
export = dict(
    mpp=model_mpp,
    class_names=class_names,
    score_thresh=0.5,  # replaced by the threshold chosen on the validation crops
    min_score=0.05,
    tile_size=512,
    padding_rgb=(255, 255, 255),
)
