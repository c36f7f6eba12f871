"""Write fp16 and int8 variants of an exported fp32 model.

Both variants keep the fp32 model's interface, ``image`` float32 in and
``cls_logits``, ``bbox_distances`` float32 out, and its ``midog.*`` metadata,
so ``OnnxDetector`` loads them unchanged. Two keys are added:
``midog.precision`` (``fp16`` or ``int8``) and ``midog.source_sha256``, the
SHA-256 of the fp32 file they were made from.

- fp16: weights and compute in float16, with casts at the input and outputs
  (``onnxruntime.transformers.float16``, the converter of
  onnxconverter-common, shipped with onnxruntime).
- int8: static QDQ quantization with ``onnxruntime.quantization``: uint8
  activations, int8 weights per output channel, ranges calibrated (min/max)
  on canvases of training tissue with training crops of mitotic figures, so
  that no held-out crop or tissue is seen. The convolutions that produce the
  head outputs stay in float, because score and box precision matter most
  there and they are a small share of the compute.

The files go beside the fp32 model as ``<stem>.fp16.onnx`` and
``<stem>.int8.onnx`` (``midog.inference.precision.variant_path``), where
``midog detect --precision`` finds them. Run
``python -m midog.training.quantize MODEL`` to write both.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from midog.errors import ModelError
from midog.inference.onnx_detector import INPUT_NAME
from midog.inference.precision import (
    PRECISION_KEY,
    PRECISIONS,
    SOURCE_SHA256_KEY,
    Precision,
    precision_of_path,
    variant_path,
)
from midog.inference.resume import file_sha256

__all__ = [
    "PRECISION_KEY",
    "SOURCE_SHA256_KEY",
    "VariantComparison",
    "calibration_images",
    "compare_variant",
    "head_output_convs",
    "write_fp16_model",
    "write_int8_model",
    "main",
]

logger = logging.getLogger(__name__)


# Calibration canvases: enough to cover the stain range of the training tissue.
DEFAULT_CALIBRATION_IMAGES = 32
CALIBRATION_SIZE_PX = 320  # the training canvas size, at 0.25 µm/px

# Ops that pass a head output through unchanged apart from layout or a
# per-level scale. A Conv reached from a graph output through these alone
# produces that output.
_PASS_THROUGH_OPS = {
    "Transpose",
    "Reshape",
    "Concat",
    "Flatten",
    "Mul",
    "Exp",
    "Identity",
    "Cast",
    "Squeeze",
    "Unsqueeze",
}


@dataclass(frozen=True)
class VariantComparison:
    """Largest differences of a variant's raw outputs from the fp32 model's on the same images.

    Attributes:
        num_images: images compared.
        max_abs_diff_scores: sigmoid scores, 0-1.
        max_abs_diff_logits: class logits.
        max_abs_diff_distances_px: box distances in input px, at points
            whose fp32 score is at least ``score_floor``.
        score_floor: see ``max_abs_diff_distances_px``.
    """

    num_images: int
    max_abs_diff_scores: float
    max_abs_diff_logits: float
    max_abs_diff_distances_px: float
    score_floor: float


def _load_fp32(fp32_path: str | Path):
    import onnx

    fp32_path = Path(fp32_path)
    if not fp32_path.is_file():
        raise ModelError(f"model file {fp32_path} not found")
    try:
        model = onnx.load(str(fp32_path))
    except Exception as exc:  # onnx raises DecodeError and others for a file that is not ONNX
        raise ModelError(f"model file {fp32_path} is not a valid ONNX model: {exc}") from exc
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    if metadata.get(PRECISION_KEY, "fp32") != "fp32" or precision_of_path(fp32_path) is not None:
        raise ModelError(
            f"model file {fp32_path} is already a {metadata.get(PRECISION_KEY)} variant; pass the fp32 model"
        )
    return model, metadata


def _set_metadata(model, metadata: dict[str, str], precision: Precision, source_sha256: str) -> None:
    """Replace the model's metadata by ``metadata`` plus the precision and source hash."""
    del model.metadata_props[:]
    for key, value in {**metadata, PRECISION_KEY: precision, SOURCE_SHA256_KEY: source_sha256}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _save_atomically(model, output_path: Path) -> None:
    import onnx

    output_path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary_name = tempfile.mkstemp(suffix=".onnx.part", dir=output_path.parent)
    os.close(handle)
    try:
        onnx.save(model, temporary_name)
        os.chmod(temporary_name, 0o644)  # mkstemp creates 0600; a model is meant to be shared
        os.replace(temporary_name, output_path)
    except BaseException:
        Path(temporary_name).unlink(missing_ok=True)
        raise


def write_fp16_model(fp32_path: str | Path, output_path: str | Path | None = None) -> Path:
    """Write the fp16 variant of an fp32 model.

    Args:
        fp32_path: the model written by ``midog export``.
        output_path: the file to write; ``<stem>.fp16.onnx`` beside the model when None.

    Returns:
        The file written (atomically).

    Raises:
        ModelError: the model is missing, is not ONNX, or is already a variant.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp32_path = Path(fp32_path)
    output_path = variant_path(fp32_path, "fp16") if output_path is None else Path(output_path)
    model, metadata = _load_fp32(fp32_path)
    converted = convert_float_to_float16(model, keep_io_types=True)
    _set_metadata(converted, metadata, "fp16", file_sha256(fp32_path))
    _save_atomically(converted, output_path)
    logger.info("wrote %s (%.1f MB), fp16 of %s", output_path, output_path.stat().st_size / 1e6, fp32_path)
    return output_path


def head_output_convs(model) -> list[str]:
    """Return the names of the Conv nodes whose outputs reach a graph output through layout ops only.

    Args:
        model: an ``onnx.ModelProto`` whose nodes have names (``_name_nodes``).
    """
    producer = {output: node for node in model.graph.node for output in node.output}
    convs: list[str] = []
    seen: set[int] = set()
    stack = [output.name for output in model.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type == "Conv":
            convs.append(node.name)
        elif node.op_type in _PASS_THROUGH_OPS:
            stack.extend(node.input)
    return sorted(convs)


def _name_nodes(model) -> None:
    """Give unnamed nodes the name ``<op_type>_<index>``, so that they can be excluded by name."""
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"


def calibration_images(
    data_dir: str | Path,
    num_images: int = DEFAULT_CALIBRATION_IMAGES,
    size_px: int = CALIBRATION_SIZE_PX,
    seed: int = 0,
) -> np.ndarray:
    """Make calibration canvases: training tissue with one training crop of a mitotic figure pasted on each.

    Args:
        data_dir: the real data folder (``mf_crops``, ``slides``, ``tiles``).
        num_images: canvases to make.
        size_px: canvas width and height at 0.25 µm/px, at least the crop size.
        seed: seed of the crops, backgrounds and positions.

    Returns:
        ``(num_images, size_px, size_px, 3)`` uint8 RGB.
    """
    from midog.training.crops import CROP_SIZE_PX, list_crops, load_rgb, load_tissue_sources, split_crops

    if num_images < 1 or size_px < CROP_SIZE_PX:
        raise ValueError(
            f"need at least 1 canvas of at least {CROP_SIZE_PX} px, got {num_images} of {size_px} px"
        )
    data_dir = Path(data_dir)
    rng = np.random.default_rng(seed)
    train_crops = split_crops(list_crops(data_dir / "mf_crops"))["train"]
    tissue = load_tissue_sources(data_dir, "train")
    canvases = np.empty((num_images, size_px, size_px, 3), dtype=np.uint8)
    for i, crop_index in enumerate(rng.choice(len(train_crops), size=num_images, replace=False)):
        canvases[i] = tissue[int(rng.integers(len(tissue)))].sample_window(size_px, rng)
        x, y = (int(v) for v in rng.integers(0, size_px - CROP_SIZE_PX + 1, size=2))
        canvases[i, y : y + CROP_SIZE_PX, x : x + CROP_SIZE_PX] = load_rgb(train_crops[crop_index].path)
    return canvases


def _as_model_input(images: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 RGB to ``(N, 3, H, W)`` float32 0-255, the graph's input."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] % 32 or images.shape[2] % 32:
        raise ValueError(f"images must be (N, H, W, 3) with H and W multiples of 32, got {images.shape}")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)


def write_int8_model(
    fp32_path: str | Path,
    calibration: np.ndarray,
    output_path: str | Path | None = None,
    *,
    per_channel: bool = True,
    keep_head_outputs_float: bool = True,
    op_types: Sequence[str] = ("Conv",),
) -> Path:
    """Write the int8 (QDQ) variant of an fp32 model, calibrated on ``calibration``.

    Args:
        fp32_path: the model written by ``midog export``.
        calibration: ``(N, H, W, 3)`` uint8 RGB at the model's µm/px, H and W
            multiples of 32; see ``calibration_images``.
        output_path: the file to write; ``<stem>.int8.onnx`` beside the model when None.
        per_channel: one weight scale per output channel rather than per tensor.
        keep_head_outputs_float: leave the Conv nodes that produce the head
            outputs in float (``head_output_convs``).
        op_types: operator types to quantize.

    Returns:
        The file written (atomically).

    Raises:
        ModelError: the model is missing, is not ONNX, or is already a variant.
        ValueError: ``calibration`` has the wrong shape.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path = Path(fp32_path)
    output_path = variant_path(fp32_path, "int8") if output_path is None else Path(output_path)
    _, metadata = _load_fp32(fp32_path)
    inputs = _as_model_input(calibration)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.index = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.index >= len(inputs):
                return None
            self.index += 1
            return {INPUT_NAME: inputs[self.index - 1 : self.index]}

        def rewind(self) -> None:
            self.index = 0

    with tempfile.TemporaryDirectory(prefix="midog-quantize-") as folder:
        prepared = Path(folder) / "prepared.onnx"
        quantized = Path(folder) / "quantized.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        prepared_model = onnx.load(str(prepared))
        _name_nodes(prepared_model)
        onnx.save(prepared_model, str(prepared))
        excluded = head_output_convs(prepared_model) if keep_head_outputs_float else []
        # The calibrator writes its augmented model to the working folder.
        cwd = Path.cwd()
        os.chdir(folder)
        try:
            quantize_static(
                str(prepared),
                str(quantized),
                Reader(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                # The min/max calibrator keeps only each tensor's min and max per
                # image, so its memory does not grow with the activations.
                calibrate_method=CalibrationMethod.MinMax,
            )
        finally:
            os.chdir(cwd)
        result = onnx.load(str(quantized))
    _set_metadata(result, metadata, "int8", file_sha256(fp32_path))
    _save_atomically(result, output_path)
    logger.info(
        "wrote %s (%.1f MB), int8 of %s calibrated on %d images; %d head convs kept in float",
        output_path,
        output_path.stat().st_size / 1e6,
        fp32_path,
        len(inputs),
        len(excluded),
    )
    return output_path


def compare_variant(
    fp32_path: str | Path, variant: str | Path, images: np.ndarray, score_floor: float = 0.05
) -> VariantComparison:
    """Run the fp32 model and a variant on the same images and report the largest output differences.

    Args:
        fp32_path: the fp32 model.
        variant: the fp16 or int8 file.
        images: ``(N, H, W, 3)`` uint8 RGB, H and W multiples of 32.
        score_floor: distances are compared at points whose fp32 score is at
            least this, the detector's lowest candidate score by default.
    """
    from midog.inference.onnx_detector import OnnxDetector

    inputs = _as_model_input(images)
    reference = OnnxDetector(fp32_path, device="cpu")
    other = OnnxDetector(variant, device="cpu")
    max_scores = max_logits = max_distances = 0.0
    for start in range(len(inputs)):
        batch = inputs[start : start + 1]
        ref_logits, ref_distances = reference.run_raw(batch)
        logits, distances = other.run_raw(batch)
        ref_scores = 1.0 / (1.0 + np.exp(-ref_logits))
        scores = 1.0 / (1.0 + np.exp(-logits))
        max_scores = max(max_scores, float(np.abs(scores - ref_scores).max()))
        max_logits = max(max_logits, float(np.abs(logits - ref_logits).max()))
        candidates = ref_scores.max(axis=-1) >= score_floor
        if candidates.any():
            max_distances = max(max_distances, float(np.abs(distances - ref_distances)[candidates].max()))
    return VariantComparison(len(inputs), max_scores, max_logits, max_distances, score_floor)


def main(argv: list[str] | None = None) -> int:
    """Write the variants named on the command line; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m midog.training.quantize",
        description="Write fp16 and int8 variants of an fp32 model written by 'midog export', beside it as "
        "<stem>.fp16.onnx and <stem>.int8.onnx, where 'midog detect --precision' finds them.",
        epilog="example:\n  python -m midog.training.quantize midog/models/rtmdet_s_mf_crops.onnx "
        "--data-root ../shared/data",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", type=Path, help="the fp32 ONNX model")
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=PRECISIONS[1:],
        default=list(PRECISIONS[1:]),
        help="variants to write (default: fp16 int8)",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path("../shared/data"),
        help="real data folder for int8 calibration: mf_crops, slides, tiles (default: ../shared/data)",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        metavar="N",
        help=f"calibration canvases of {CALIBRATION_SIZE_PX} px for int8 (default: {DEFAULT_CALIBRATION_IMAGES})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    compare_on = calibration_images(args.data_root, 8, seed=1)
    for precision in args.precision:
        if precision == "fp16":
            path = write_fp16_model(args.model)
        else:
            calibration = calibration_images(args.data_root, args.calibration_images)
            path = write_int8_model(args.model, calibration)
        comparison = compare_variant(args.model, path, compare_on)
        print(
            f"{path}: max |diff| vs fp32 on {comparison.num_images} training canvases: "
            f"scores {comparison.max_abs_diff_scores:.4f}, logits {comparison.max_abs_diff_logits:.4f}, "
            f"distances {comparison.max_abs_diff_distances_px:.3f} px"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
