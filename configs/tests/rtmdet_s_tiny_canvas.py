# A few iterations of the default recipe on 192 px canvases, for tests on CPU.
_base_ = ["../rtmdet_s_mf_crops.py"]

max_iters = 2
train_cfg = dict(max_iters=max_iters, val_interval=max_iters + 1)
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(canvas=dict(canvas_size=192, max_figures=1), length=1000),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=max_iters),
]
default_hooks = dict(checkpoint=dict(interval=max_iters), logger=dict(interval=1))
