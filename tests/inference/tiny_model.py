"""A tiny ONNX model with the exported RTMDet's interface, for tests that need onnxruntime.

``write_tiny_model`` builds a graph with the same input, outputs and ``midog.*``
metadata as a model written by ``midog export``, but with a few fixed
convolutions instead of a trained network. Its class logit at each prior
point rises with the darkness of the ``stride x stride`` cell there, so the
dark discs of ``tests.inference.synthetic`` are found, and every box is
``2 * BOX_HALF_PX`` wide. It runs in milliseconds, so the tests can run real
onnxruntime sessions, quantize the graph and kill a real ``midog detect`` run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["write_tiny_model", "TINY_STRIDES", "BOX_HALF_PX"]

TINY_STRIDES = (8, 16, 32)
BOX_HALF_PX = 40.0

# logit = (darkness - DARKNESS_AT_HALF) / DARKNESS_SCALE, darkness = 255 - channel mean:
# the disc colour (60, 30, 90) scores 0.99, the pink tissue (230, 160, 200) 1e-4.
DARKNESS_AT_HALF = 150.0
DARKNESS_SCALE = 10.0


def _metadata(padding_rgb: tuple[int, int, int]) -> dict[str, str]:
    return {
        "midog.mpp": "0.25",
        "midog.class_names": json.dumps(["mitotic figure"]),
        "midog.score_thresh": "0.5",
        "midog.min_score": "0.05",
        "midog.strides": json.dumps(list(TINY_STRIDES)),
        "midog.topk_candidates": "1000",
        "midog.nms_iou_thresh": "0.65",
        "midog.detections_per_img": "300",
        "midog.padding_rgb": json.dumps(list(padding_rgb)),
        "midog.tile_size": "512",
    }


def write_tiny_model(path: Path, padding_rgb: tuple[int, int, int] = (255, 255, 255)) -> Path:
    """Write the tiny model to ``path`` and return the path.

    The graph maps ``image`` ``(B, 3, H, W)`` float32 RGB 0-255 to
    ``cls_logits`` ``(B, N, 1)`` and ``bbox_distances`` ``(B, N, 4)``, levels
    finest first and row-major, as ``midog.inference.postprocess`` expects.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    initializers = [
        # 1x1 conv: darkness = 255 - (R + G + B) / 3.
        numpy_helper.from_array(np.full((1, 3, 1, 1), -1.0 / 3.0, np.float32), "darkness_w"),
        numpy_helper.from_array(np.array([255.0], np.float32), "darkness_b"),
        numpy_helper.from_array(np.full((1, 1, 1, 1), 1.0 / DARKNESS_SCALE, np.float32), "logit_w"),
        numpy_helper.from_array(np.array([-DARKNESS_AT_HALF / DARKNESS_SCALE], np.float32), "logit_b"),
        numpy_helper.from_array(np.zeros((4, 1, 1, 1), np.float32), "distance_w"),
        numpy_helper.from_array(np.full(4, BOX_HALF_PX, np.float32), "distance_b"),
        numpy_helper.from_array(np.array([0, -1, 1], np.int64), "shape_cls"),
        numpy_helper.from_array(np.array([0, -1, 4], np.int64), "shape_box"),
    ]
    nodes = [helper.make_node("Conv", ["image", "darkness_w", "darkness_b"], ["darkness"], name="darkness")]
    cls_parts, box_parts = [], []
    for stride in TINY_STRIDES:
        nodes += [
            helper.make_node(
                "AveragePool",
                ["darkness"],
                [f"pooled_{stride}"],
                name=f"pool_{stride}",
                kernel_shape=[stride, stride],
                strides=[stride, stride],
                ceil_mode=1,
            ),
            helper.make_node(
                "Conv",
                [f"pooled_{stride}", "logit_w", "logit_b"],
                [f"logit_{stride}"],
                name=f"cls_conv_{stride}",
            ),
            helper.make_node(
                "Conv",
                [f"pooled_{stride}", "distance_w", "distance_b"],
                [f"box_{stride}"],
                name=f"reg_conv_{stride}",
            ),
            helper.make_node(
                "Transpose",
                [f"logit_{stride}"],
                [f"logit_nhwc_{stride}"],
                name=f"cls_nhwc_{stride}",
                perm=[0, 2, 3, 1],
            ),
            helper.make_node(
                "Transpose",
                [f"box_{stride}"],
                [f"box_nhwc_{stride}"],
                name=f"reg_nhwc_{stride}",
                perm=[0, 2, 3, 1],
            ),
            helper.make_node(
                "Reshape",
                [f"logit_nhwc_{stride}", "shape_cls"],
                [f"cls_flat_{stride}"],
                name=f"cls_flat_{stride}",
            ),
            helper.make_node(
                "Reshape",
                [f"box_nhwc_{stride}", "shape_box"],
                [f"box_flat_{stride}"],
                name=f"reg_flat_{stride}",
            ),
        ]
        cls_parts.append(f"cls_flat_{stride}")
        box_parts.append(f"box_flat_{stride}")
    nodes += [
        helper.make_node("Concat", cls_parts, ["cls_logits"], name="cls_concat", axis=1),
        helper.make_node("Concat", box_parts, ["bbox_distances"], name="reg_concat", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_dark_blob_detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [
            helper.make_tensor_value_info("cls_logits", TensorProto.FLOAT, ["batch", "points", 1]),
            helper.make_tensor_value_info("bbox_distances", TensorProto.FLOAT, ["batch", "points", 4]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="midog-tests")
    model.ir_version = 8
    for key, value in _metadata(padding_rgb).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
