# RTMDet-S with two classes, mitotic figure and imposter, trained on the MIDOG++
# region-of-interest images with patches balanced over the tumour types
# (midog/training/midogpp.py).
#
# The recipe follows Marzahl & Napora, "A bag of tricks for real-time mitotic figure
# detection" (MIDOG 2025), as a secondary summary of that paper reports it. Its values are
# 1920x1280 px patches at 40x, 64x64 px boxes, and 25,000 iterations at an effective batch
# of 24 through gradient accumulation. AdamW warms up over 250 steps from 1e-5 to 1e-3,
# then decays on a cosine. The losses are focal loss with gamma 2 plus an IoU loss, and
# moving averages of the weights are kept at three rates. None of it has been checked
# against the paper itself.
#
# Run with the data paths on the command line, e.g.
#   midog train configs/rtmdet_s_midogpp.py --images /data/midogpp/images \
#       --annotations MIDOG++.json --domains datasets_xvalidation.csv
_base_ = ["_base_/rtmdet_s.py", "_base_/runtime.py"]

# Placeholders: `midog train --images/--annotations/--domains` replaces them.
images_dir = "data/midogpp/images"
annotation_file = "data/midogpp/MIDOG++.json"
domains_csv = None
# The MIDOG++ domains table marks a held-out test set; only "train" images are used.
# Without a domains table no image has a split: pass --domains, or set split=None.
split = "train"

class_names = ("mitotic figure", "imposter")
num_classes = len(class_names)
model_mpp = 0.25  # µm/px: MIDOG++ is scanned at about 0.25 µm/px (40x); patches are not resampled

patch_width = 1920  # px
patch_height = 1280  # px
box_size = 64  # px, square around each cell centre (16 µm at model_mpp)

batch_size = 4  # patches per forward pass
accumulative_counts = 6  # forward passes per optimizer step
effective_batch_size = batch_size * accumulative_counts  # 24 patches per optimizer step

# NOTE: the summary does not say whether its 25,000 iterations and 250 warm-up steps
# count forward passes or optimizer steps. Here both are mmengine iterations (forward
# passes), about 4,167 optimizer steps in all; for the other reading multiply max_iters
# and warmup_iters by accumulative_counts.
max_iters = 25_000  # iterations
warmup_iters = 250  # iterations
base_lr = 1e-3  # peak learning rate, reached at the end of the warm-up
warmup_start_lr = 1e-5  # learning rate of the first iteration
min_lr = 0.0  # learning rate at the end of the cosine decay (the summary gives none)

# Shares of the patch choices. Each tumour type gets the same share of patches,
# whatever its number of images.
domain_column = "tumor"
domain_weights = None  # None: uniform over the domains present
patch_kind_weights = {"mitotic figure": 0.5, "imposter": 0.25, "random": 0.25}
# px, largest offset of a centred cell from the patch centre per axis: the cell's whole
# box stays inside the patch (608 px for 1920x1280 px patches and 64 px boxes).
jitter_px = min(patch_width, patch_height) // 2 - box_size // 2

# mmengine momenta (1 - decay) of the three moving averages. The summary lists 1e-3,
# 5e-4 and a third value cut off after "25 x 10^"; 2.5e-4 continues the halving.
ema_momenta = (1e-3, 5e-4, 2.5e-4)
# NOTE: the summary does not say which average the recipe keeps for inference. Here the
# middle one becomes the checkpoint's weights, and all three are stored beside it.
ema_checkpoint_momentum = 5e-4

model = dict(
    bbox_head=dict(
        num_classes=num_classes,
        # Focal loss with gamma 2 in RTMDet's soft-label form: its assigner scores each
        # positive by IoU, which plain focal loss cannot take as a target.
        loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0),
        # The summary names an IoU loss without the variant; GIoU is RTMDet's default.
        loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
    ),
)

train_pipeline = [
    # Stain, flip, colour, blur and JPEG augmentation. No 90-degree rotations: they would
    # turn 1920x1280 patches into 1280x1920 and make every batch pad to a square.
    dict(type="StainAugment", hed_p=0.5, macenko_p=0.0, flip_p=0.5, rotate90_p=0.0),
    dict(type="PackDetInputs"),
]

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(
        type="MidogppPatchDataset",
        images_dir=images_dir,
        annotation_file=annotation_file,
        annotation_format="midogpp",
        domains_csv=domains_csv,
        image_ids=None,  # a cross-validation fold passes its image ids here
        split=split,
        allow_missing_images=False,
        patch_size=(patch_width, patch_height),
        box_size_px=box_size,
        classes=class_names,
        domain_column=domain_column,
        domain_weights=domain_weights,
        patch_kind_weights=patch_kind_weights,
        jitter_px=jitter_px,
        length=max_iters * batch_size,  # items: every patch of the run has its own index
        seed=0,
        pipeline=train_pipeline,
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
    accumulative_counts=accumulative_counts,
    optimizer=dict(type="AdamW", lr=base_lr, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0, bias_decay_mult=0, bypass_duplicate=True),
)
param_scheduler = [
    dict(
        type="LinearLR",
        start_factor=warmup_start_lr / base_lr,
        by_epoch=False,
        begin=0,
        end=warmup_iters,
    ),
    dict(
        type="CosineAnnealingLR",
        eta_min=min_lr,
        by_epoch=False,
        begin=warmup_iters,
        end=max_iters,
        T_max=max_iters - warmup_iters,
    ),
]

custom_hooks = [
    dict(
        type="MultiEMAHook",
        momenta=ema_momenta,
        checkpoint_momentum=ema_checkpoint_momentum,
        ema_type="ExpMomentumEMA",
        priority=49,
    ),
    dict(type="ProgressBarHook"),
]
default_hooks = dict(checkpoint=dict(interval=2500))

# Written into the exported model's metadata by `midog export`.
export = dict(
    mpp=model_mpp,
    class_names=class_names,
    score_thresh=0.5,  # replace with the threshold chosen on validation images
    min_score=0.05,
    tile_size=512,  # px
    padding_rgb=(255, 255, 255),
)
