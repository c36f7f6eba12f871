"""Export a trained RTMDet checkpoint to ONNX with raw head outputs.

The graph contains normalisation, backbone, neck and head, and stops before
decoding: ``midog.inference.postprocess`` decodes and suppresses in numpy, so
every runtime keeps the same number of boxes. The settings it needs go into
the ONNX metadata (``midog.inference.onnx_detector.METADATA_KEYS``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from midog.errors import ModelError
from midog.inference.onnx_detector import INPUT_NAME, METADATA_KEYS, OUTPUT_NAMES, OnnxDetector

__all__ = ["ExportReport", "build_model", "export_onnx", "raw_head_module", "set_model_metadata", "ONNX_OPSET"]

logger = logging.getLogger(__name__)

ONNX_OPSET = 17


@dataclass
class ExportReport:
    """Result of ``export_onnx``: the file written and its parity with PyTorch."""

    output: Path
    max_abs_diff_logits: float
    max_abs_diff_distances: float
    num_parity_images: int
    size_bytes: int


def build_model(config_path: str | Path, checkpoint_path: str | Path | None = None):
    """Build the detector of a config and load a checkpoint's weights into it (eval mode).

    The checkpoint's ``state_dict`` contains the EMA weights when the run used
    mmengine's ``EMAHook``, which swaps them in before saving.
    """
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from midog.training.checkpoint import load_checkpoint
    from midog.training.train import load_config

    register_all_modules(init_default_scope=True)
    import midog.training.registry  # noqa: F401  (registers midog's components)

    cfg = load_config(config_path)
    model = MODELS.build(cfg.model)
    if checkpoint_path is not None:
        checkpoint = load_checkpoint(checkpoint_path)
        state_dict = checkpoint.get("state_dict", checkpoint)
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        if missing:
            raise ModelError(
                f"checkpoint {checkpoint_path} does not fit config {config_path}: "
                f"{len(missing)} missing weights, first {missing[:3]}"
            )
        if unexpected:
            logger.warning("checkpoint %s has %d unused weights, first %s", checkpoint_path, len(unexpected),
                           unexpected[:3])
    model.eval()
    return model, cfg


def raw_head_module(model):
    """Wrap an mmdet RTMDet so that it maps RGB 0-255 images to flattened raw head outputs."""
    import torch

    class RawHead(torch.nn.Module):
        def __init__(self, detector) -> None:
            super().__init__()
            self.detector = detector
            preprocessor = detector.data_preprocessor
            self.register_buffer("mean", preprocessor.mean.detach().reshape(1, 3, 1, 1).clone())
            self.register_buffer("std", preprocessor.std.detach().reshape(1, 3, 1, 1).clone())

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            batch = image.shape[0]
            features = self.detector.extract_feat((image - self.mean) / self.std)
            cls_scores, bbox_preds = self.detector.bbox_head(features)
            # [B, C, H, W] per level -> [B, sum(H * W), C], finest level first.
            cls_logits = torch.cat(
                [level.permute(0, 2, 3, 1).reshape(batch, -1, level.shape[1]) for level in cls_scores], dim=1
            )
            bbox_distances = torch.cat(
                [level.permute(0, 2, 3, 1).reshape(batch, -1, 4) for level in bbox_preds], dim=1
            )
            return cls_logits, bbox_distances

    return RawHead(model).eval()


def _metadata(cfg, score_thresh: float | None) -> dict[str, str]:
    export_cfg = cfg.get("export", {})
    test_cfg = cfg.model.test_cfg
    head = cfg.model.bbox_head
    values: dict[str, Any] = {
        "mpp": float(export_cfg.get("mpp", 0.25)),
        "class_names": json.dumps(list(export_cfg.get("class_names", ["mitotic figure"]))),
        "score_thresh": float(score_thresh if score_thresh is not None else export_cfg.get("score_thresh", 0.5)),
        "min_score": float(export_cfg.get("min_score", test_cfg.score_thr)),
        "strides": json.dumps(list(head.anchor_generator.strides)),
        "topk_candidates": int(test_cfg.nms_pre),
        "nms_iou_thresh": float(test_cfg.nms.iou_threshold),
        "detections_per_img": int(test_cfg.max_per_img),
        "padding_rgb": json.dumps([int(v) for v in export_cfg.get("padding_rgb", (255, 255, 255))]),
        "tile_size": int(export_cfg.get("tile_size", 512)),
    }
    return {METADATA_KEYS[name]: str(value) for name, value in values.items()}


def export_onnx(
    config_path: str | Path,
    checkpoint_path: str | Path,
    output_path: str | Path,
    parity_images: np.ndarray,
    score_thresh: float | None = None,
) -> ExportReport:
    """Export a checkpoint to ONNX, write its metadata, and check parity with PyTorch.

    Args:
        config_path: the config the checkpoint was trained with.
        checkpoint_path: an mmengine checkpoint.
        output_path: the ``.onnx`` file to write (atomically).
        parity_images: ``(B, H, W, 3)`` uint8 RGB images, H and W multiples of
            32, run through both PyTorch and onnxruntime.
        score_thresh: threshold stored as the model's default; the config's
            ``export.score_thresh`` when None.

    Returns:
        The report with the maximum absolute differences of the raw outputs.
    """
    import onnx
    import torch

    output_path = Path(output_path)
    if parity_images.ndim != 4 or parity_images.shape[-1] != 3 or parity_images.shape[1] % 32:
        raise ValueError(f"parity_images must be (B, H, W, 3) with H, W multiples of 32, got {parity_images.shape}")
    model, cfg = build_model(config_path, checkpoint_path)
    module = raw_head_module(model)
    example = torch.zeros(1, 3, 256, 256)

    output_path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(suffix=".onnx.part", dir=output_path.parent)
    os.close(handle)
    try:
        with torch.no_grad():
            torch.onnx.export(
                module,
                (example,),
                temp_name,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={
                    INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                    OUTPUT_NAMES[0]: {0: "batch", 1: "points"},
                    OUTPUT_NAMES[1]: {0: "batch", 1: "points"},
                },
                opset_version=ONNX_OPSET,
                dynamo=False,
                # Folding would merge each level's BN into the head convolutions that RTMDet shares
                # across levels, storing them three times (40.2 MB instead of 35.7 MB). onnxruntime
                # fuses Conv and BN when it loads the graph, so inference speed is the same.
                do_constant_folding=False,
            )
        proto = onnx.load(temp_name)
        for key, value in _metadata(cfg, score_thresh).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "midog"
        onnx.checker.check_model(proto)
        onnx.save(proto, temp_name)

        images = parity_images.transpose(0, 3, 1, 2).astype(np.float32)
        with torch.no_grad():
            torch_logits, torch_distances = (t.numpy() for t in module(torch.from_numpy(images)))
        onnx_logits, onnx_distances = OnnxDetector(temp_name, device="cpu").run_raw(images)
        report = ExportReport(
            output=output_path,
            max_abs_diff_logits=float(np.abs(torch_logits - onnx_logits).max()),
            max_abs_diff_distances=float(np.abs(torch_distances - onnx_distances).max()),
            num_parity_images=len(images),
            size_bytes=os.path.getsize(temp_name),
        )
        os.chmod(temp_name, 0o644)  # mkstemp creates 0600; a model is meant to be shared
        os.replace(temp_name, output_path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    logger.info(
        "exported %s (%.1f MB); parity on %d images: max |diff| logits %.2e, distances %.2e px",
        output_path,
        report.size_bytes / 1e6,
        report.num_parity_images,
        report.max_abs_diff_logits,
        report.max_abs_diff_distances,
    )
    return report


def set_model_metadata(onnx_path: str | Path, values: dict[str, str]) -> None:
    """Replace ``midog.*`` metadata entries of an ONNX file in place (atomically).

    Args:
        onnx_path: the model file.
        values: short metadata names (keys of ``METADATA_KEYS``) and their new values.
    """
    import onnx

    onnx_path = Path(onnx_path)
    unknown = sorted(set(values) - set(METADATA_KEYS))
    if unknown:
        raise ValueError(f"unknown metadata names {unknown}; known: {sorted(METADATA_KEYS)}")
    proto = onnx.load(str(onnx_path))
    current = {entry.key: entry.value for entry in proto.metadata_props}
    current.update({METADATA_KEYS[name]: value for name, value in values.items()})
    del proto.metadata_props[:]
    for key, value in current.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    handle, temp_name = tempfile.mkstemp(suffix=".onnx.part", dir=onnx_path.parent)
    os.close(handle)
    try:
        onnx.save(proto, temp_name)
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, onnx_path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
