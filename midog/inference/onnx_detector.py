"""The exported RTMDet model run with onnxruntime.

The ONNX file is self-describing. Its graph takes ``image``, ``(B, 3, H, W)``
float32 RGB in 0-255 (normalisation is inside the graph), with H and W
multiples of 32, and returns the raw head outputs ``cls_logits`` ``(B, N, C)``
and ``bbox_distances`` ``(B, N, 4)``. Its metadata (``midog.*`` keys, see
``METADATA_KEYS``) holds the µm/px, class names, score threshold, strides
and NMS settings that ``postprocess`` needs.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

import numpy as np

from midog.errors import ModelError
from midog.inference.postprocess import PostprocessConfig, postprocess
from midog.inference.precision import check_variant_source
from midog.inference.session import IoBindingRunner, session_options
from midog.structures import Detections

__all__ = ["OnnxDetector", "load_detector", "default_model_path", "METADATA_KEYS"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "rtmdet_s_mf_crops.onnx"
INPUT_NAME = "image"
OUTPUT_NAMES = ("cls_logits", "bbox_distances")
SIZE_DIVISOR = 32

# Metadata written by ``midog export`` and read here; values are strings.
METADATA_KEYS = {
    "mpp": "midog.mpp",  # µm/px of the training images
    "class_names": "midog.class_names",  # JSON list
    "score_thresh": "midog.score_thresh",  # default threshold for "mitotic figure"
    "min_score": "midog.min_score",  # lowest candidate score kept
    "strides": "midog.strides",  # JSON list, finest first
    "topk_candidates": "midog.topk_candidates",
    "nms_iou_thresh": "midog.nms_iou_thresh",
    "detections_per_img": "midog.detections_per_img",
    "padding_rgb": "midog.padding_rgb",  # JSON list of 3 ints
    "tile_size": "midog.tile_size",  # suggested tile size in px
}


def default_model_path() -> Path:
    """Return the path of the model shipped in the package."""
    return Path(str(resources.files("midog.models").joinpath(DEFAULT_MODEL_NAME)))


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ModelError(
                f"--device cuda requested but onnxruntime offers only {available}; "
                "install onnxruntime-gpu (pip install 'midog[gpu]') or use --device cpu"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device != "auto":
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxDetector:
    """RTMDet exported to ONNX, implementing ``TileDetector``.

    Args:
        model_path: the ``.onnx`` file written by ``midog export``.
        device: ``"auto"`` (CUDA when onnxruntime offers it, else CPU),
            ``"cpu"`` or ``"cuda"``.
        intra_op_threads: onnxruntime threads per operator; 0 lets
            onnxruntime choose (one per physical core).

    Raises:
        ModelError: the file is missing, is not ONNX, lacks the metadata, or
            has other inputs or outputs than described above.
    """

    def __init__(self, model_path: str | Path, device: str = "auto", intra_op_threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ModuleNotFoundError as exc:
            raise ModelError(
                "onnxruntime is not installed; install 'midog[cpu]' or, on a CUDA machine, 'midog[gpu]'"
            ) from exc

        self.model_path = Path(model_path)
        self.device = device
        if not self.model_path.is_file():
            raise ModelError(f"model file {self.model_path} not found")
        options = session_options(intra_op_threads)
        try:
            self.session = ort.InferenceSession(str(self.model_path), options, providers=_providers(device))
        except ModelError:
            raise
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"model file {self.model_path} is not a valid ONNX model: {first_line}") from exc
        self._check_signature()
        self._read_metadata()
        check_variant_source(self.model_path, self.session.get_modelmeta().custom_metadata_map)
        # On CUDA, IO binding copies each batch to the GPU once and the outputs
        # straight into host arrays. On CPU it would save no copy.
        self._bound_runner = (
            IoBindingRunner(self.session, INPUT_NAME, OUTPUT_NAMES)
            if self.session.get_providers()[0] != "CPUExecutionProvider"
            else None
        )
        logger.debug("loaded %s with providers %s", self.model_path, self.session.get_providers())

    def __repr__(self) -> str:
        return f"OnnxDetector({str(self.model_path)!r}, device={self.device!r})"

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def _check_signature(self) -> None:
        inputs = self.session.get_inputs()
        outputs = [o.name for o in self.session.get_outputs()]
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or len(inputs[0].shape) != 4:
            found = [(i.name, i.shape) for i in inputs]
            raise ModelError(
                f"model file {self.model_path} has inputs {found}; expected one input "
                f"'{INPUT_NAME}' of shape (B, 3, H, W) as written by 'midog export'"
            )
        if inputs[0].shape[1] != 3:
            raise ModelError(f"model file {self.model_path} takes {inputs[0].shape[1]} channels; expected 3 (RGB)")
        if tuple(outputs) != OUTPUT_NAMES:
            raise ModelError(
                f"model file {self.model_path} has outputs {outputs}; expected {list(OUTPUT_NAMES)} "
                "as written by 'midog export'"
            )

    def _read_metadata(self) -> None:
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = [key for key in METADATA_KEYS.values() if key not in meta]
        if missing:
            raise ModelError(
                f"model file {self.model_path} lacks metadata {missing}; export it with 'midog export'"
            )
        try:
            self.mpp = float(meta[METADATA_KEYS["mpp"]])
            self.class_names = tuple(json.loads(meta[METADATA_KEYS["class_names"]]))
            self.score_thresh = float(meta[METADATA_KEYS["score_thresh"]])
            self.min_score = float(meta[METADATA_KEYS["min_score"]])
            self.padding_rgb = tuple(int(v) for v in json.loads(meta[METADATA_KEYS["padding_rgb"]]))
            self.tile_size = int(meta[METADATA_KEYS["tile_size"]])
            self.postprocess_config = PostprocessConfig(
                strides=tuple(int(s) for s in json.loads(meta[METADATA_KEYS["strides"]])),
                score_thresh=self.min_score,
                topk_candidates=int(meta[METADATA_KEYS["topk_candidates"]]),
                nms_iou_thresh=float(meta[METADATA_KEYS["nms_iou_thresh"]]),
                detections_per_img=int(meta[METADATA_KEYS["detections_per_img"]]),
            )
        except (ValueError, TypeError) as exc:
            raise ModelError(f"model file {self.model_path} has invalid midog metadata: {exc}") from exc

    def run_raw(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the graph on ``(B, 3, H, W)`` float32 RGB 0-255; return ``(cls_logits, bbox_distances)``."""
        if self._bound_runner is not None:
            cls_logits, bbox_distances = self._bound_runner.run(images)
        else:
            cls_logits, bbox_distances = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        return cls_logits, bbox_distances

    def detect_boxes(self, tiles: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Detect in a batch; return ``(boxes, scores, labels)`` per tile in tile px.

        Args:
            tiles: ``(B, H, W, 3)`` uint8 RGB at ``self.mpp``. Sizes that are not
                multiples of 32 are padded with ``padding_rgb`` at the bottom and
                right; boxes are clamped to the padded size.
        """
        if tiles.ndim != 4 or tiles.shape[-1] != 3:
            raise ValueError(f"tiles must be (B, H, W, 3) RGB, got shape {tiles.shape}")
        batch, height, width, _ = tiles.shape
        if batch == 0:
            return []
        padded_h = -(-height // SIZE_DIVISOR) * SIZE_DIVISOR
        padded_w = -(-width // SIZE_DIVISOR) * SIZE_DIVISOR
        images = np.empty((batch, 3, padded_h, padded_w), dtype=np.float32)
        if (padded_h, padded_w) != (height, width):
            images[:] = np.asarray(self.padding_rgb, dtype=np.float32)[None, :, None, None]
        images[:, :, :height, :width] = tiles.transpose(0, 3, 1, 2)
        cls_logits, bbox_distances = self.run_raw(images)
        return [
            postprocess(cls_logits[i], bbox_distances[i], padded_h, padded_w, self.postprocess_config)
            for i in range(batch)
        ]

    def detect(self, tiles: np.ndarray) -> list[Detections]:
        """Detect in a batch of ``(B, H, W, 3)`` uint8 RGB tiles; centres in tile px."""
        results = []
        for boxes, scores, labels in self.detect_boxes(tiles):
            centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
            results.append(Detections(centres, scores, labels, self.class_names))
        return results


def load_detector(model_path: str | Path | None = None, device: str = "auto") -> OnnxDetector:
    """Load an exported model, or the shipped default model when ``model_path`` is None."""
    path = default_model_path() if model_path is None else Path(model_path)
    if model_path is None and not path.is_file():
        raise ModelError(f"the default model {path} is missing from the installed package; pass --model FILE")
    return OnnxDetector(path, device=device)
