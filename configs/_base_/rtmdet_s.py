# RTMDet-S (mmdet 3.3, rtmdet_s_8xb32-300e_coco) for point-like cells.
# Differences from the COCO model: BN instead of SyncBN (training on one CPU or
# GPU), RGB input in 0-255 with the mean/std below in RGB order, and
# `num_classes` set by each experiment. Weights start random: no pretrained
# checkpoint can be downloaded on the machines this project trains on.
num_classes = 1
norm_cfg = dict(type="BN")
act_cfg = dict(type="SiLU", inplace=True)

model = dict(
    type="RTMDet",
    data_preprocessor=dict(
        type="DetDataPreprocessor",
        # ImageNet statistics, RGB order, 0-255 scale.
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=False,
        pad_size_divisor=32,
        batch_augments=None,
    ),
    backbone=dict(
        type="CSPNeXt",
        arch="P5",
        expand_ratio=0.5,
        deepen_factor=0.33,
        widen_factor=0.5,
        channel_attention=True,
        norm_cfg=norm_cfg,
        act_cfg=act_cfg,
    ),
    neck=dict(
        type="CSPNeXtPAFPN",
        in_channels=[128, 256, 512],
        out_channels=128,
        num_csp_blocks=1,
        expand_ratio=0.5,
        norm_cfg=norm_cfg,
        act_cfg=act_cfg,
    ),
    bbox_head=dict(
        type="RTMDetSepBNHead",
        num_classes=num_classes,
        in_channels=128,
        stacked_convs=2,
        feat_channels=128,
        anchor_generator=dict(type="MlvlPointGenerator", offset=0, strides=[8, 16, 32]),
        bbox_coder=dict(type="DistancePointBBoxCoder"),
        loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0),
        loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
        with_objectness=False,
        exp_on_reg=False,
        share_conv=True,
        pred_kernel_size=1,
        norm_cfg=norm_cfg,
        act_cfg=act_cfg,
    ),
    train_cfg=dict(
        assigner=dict(type="DynamicSoftLabelAssigner", topk=13),
        allowed_border=-1,
        pos_weight=-1,
        debug=False,
    ),
    # The same settings are written into the exported ONNX metadata, so the
    # numpy post-processing of `midog detect` matches `model.predict`.
    test_cfg=dict(
        nms_pre=1000,
        min_bbox_size=0,
        score_thr=0.05,
        nms=dict(type="nms", iou_threshold=0.65),
        max_per_img=300,
    ),
)
