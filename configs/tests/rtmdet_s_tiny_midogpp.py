# A few iterations of the MIDOG++ recipe on 256 px patches, for tests on CPU. The tests
# set images_dir and annotation_file to small generated images in the MIDOG++ layout.
_base_ = ["../rtmdet_s_midogpp.py"]

split = None  # the generated annotation files have no domains table
patch_size = 256  # px, square
box_size = 32  # px, square around each cell centre
batch_size = 2  # patches per iteration
max_iters = 60  # iterations
warmup_iters = 5  # iterations
base_lr = 2e-3  # peak learning rate

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        split=split,
        annotation_format="auto",
        patch_size=patch_size,
        box_size_px=box_size,
        jitter_px=None,  # None: the largest offset that keeps the box inside the patch
        length=1000,
        pipeline=[
            # Flips and rotations only, so that the colour of a blob stays a reliable cue.
            dict(
                type="StainAugment", hed_p=0.0, hsv_p=0.0, brightness_contrast_p=0.0, blur_p=0.0, jpeg_p=0.0
            ),
            dict(type="PackDetInputs"),
        ],
    ),
)
train_cfg = dict(max_iters=max_iters, val_interval=max_iters + 1)
optim_wrapper = dict(accumulative_counts=1, optimizer=dict(lr=base_lr))
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=warmup_iters),
    dict(
        type="CosineAnnealingLR",
        eta_min=base_lr * 0.1,
        by_epoch=False,
        begin=warmup_iters,
        end=max_iters,
        T_max=max_iters - warmup_iters,
    ),
]
custom_hooks = [
    dict(
        type="MultiEMAHook",
        momenta=(0.1, 0.05, 0.01),
        checkpoint_momentum=0.05,
        ema_type="ExponentialMovingAverage",
        priority=49,
    ),
]
default_hooks = dict(checkpoint=dict(interval=max_iters), logger=dict(interval=1))
# A fixed seed makes the model's initial weights, and so the loss curve, repeatable.
randomness = dict(seed=0)
# One-iteration window, so that the logged loss of each iteration is its own.
log_processor = dict(window_size=1)
