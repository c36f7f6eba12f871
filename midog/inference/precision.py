"""Model variants by numeric precision, and the device defaults that pick one.

``midog.training.quantize`` writes the fp16 and int8 variants of an exported
fp32 model beside it, named ``<stem>.fp16.onnx`` and ``<stem>.int8.onnx``.
``midog detect --precision`` picks among them: ``fp32``, ``fp16`` or ``int8``
by name, or ``auto``, the variant that ``AUTO_PRECISION`` names for the device.
A variant is made the ``auto`` choice for a device only where the benchmark
(``tools/benchmark_wsi.py``, results in docs/benchmarks.md) found it faster
there and its recall on the held-out crops less than 1 percentage point
below fp32's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from midog.errors import ModelError
from midog.inference.resume import file_sha256

__all__ = [
    "AUTO_PRECISION",
    "PRECISIONS",
    "PRECISION_KEY",
    "SOURCE_SHA256_KEY",
    "Precision",
    "PrecisionChoice",
    "check_variant_source",
    "precision_of_path",
    "resolve_device",
    "resolve_model_path",
    "variant_path",
]

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "int8"]
PrecisionChoice = Literal["auto", "fp32", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")

# What ``--precision auto`` runs, per device. On 2 AMD EPYC cores int8 ran
# 1.5-2x faster than fp32 in onnxruntime alone, with test recall on 746
# held-out crops 0.13 points above fp32's (tools/benchmark_wsi.py, see
# docs/benchmarks.md). fp16 ran no faster than fp32 on that CPU.
# NOTE: no GPU was available for the measurements, so CUDA stays at fp32
# until fp16 is measured there.
AUTO_PRECISION: dict[str, Precision] = {"cpu": "int8", "cuda": "fp32"}


# Metadata keys of a variant written by ``midog.training.quantize``.
PRECISION_KEY = "midog.precision"
SOURCE_SHA256_KEY = "midog.source_sha256"


def check_variant_source(model_path: str | Path, metadata: Mapping[str, str]) -> None:
    """Raise ModelError when a variant was made from another model than the fp32 file beside it.

    A variant records the SHA-256 of the fp32 model it was made from. When
    that model is exported again and the variant is not, the variant would
    silently run the old weights.

    Args:
        model_path: the loaded file.
        metadata: its ONNX metadata.

    Raises:
        ModelError: the file is a variant, the fp32 model ``<stem>.onnx``
            exists beside it, and its SHA-256 differs from the recorded one.
    """
    model_path = Path(model_path)
    recorded = metadata.get(SOURCE_SHA256_KEY)
    precision = metadata.get(PRECISION_KEY, "fp32")
    stated = precision_of_path(model_path)
    if recorded is None or precision == "fp32" or stated is None:
        return
    source = model_path.with_name(model_path.name.replace(f".{stated}{model_path.suffix}", model_path.suffix))
    if not source.is_file():
        return
    if file_sha256(source) != recorded:
        raise ModelError(
            f"{precision} model {model_path} was made from another version of {source}; write it again with "
            f"'python -m midog.training.quantize {source} --precision {precision}', or pass --precision fp32"
        )


def variant_path(model_path: str | Path, precision: Precision) -> Path:
    """Return the file of a model's variant: the model itself for fp32, else ``<stem>.<precision>.onnx``."""
    model_path = Path(model_path)
    if precision == "fp32":
        return model_path
    return model_path.with_name(f"{model_path.stem}.{precision}{model_path.suffix}")


def precision_of_path(model_path: str | Path) -> Precision | None:
    """Return the precision a variant's file name states (``x.int8.onnx`` is int8), or None for a plain name."""
    suffixes = Path(model_path).suffixes
    if len(suffixes) >= 2 and suffixes[-2][1:] in PRECISIONS[1:]:
        return suffixes[-2][1:]  # type: ignore[return-value]
    return None


def resolve_device(device: str) -> Literal["cpu", "cuda"]:
    """Return the device that ``"auto"`` means here: CUDA when onnxruntime offers it, else CPU."""
    if device in ("cpu", "cuda"):
        return device  # type: ignore[return-value]
    if device != "auto":
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    import onnxruntime as ort

    return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"


def resolve_model_path(
    model_path: str | Path, precision: PrecisionChoice, device: str
) -> tuple[Path, Precision]:
    """Pick the model file to load for a precision choice.

    Args:
        model_path: the fp32 model, or a variant file named ``<stem>.<precision>.onnx``,
            which is then used as it is.
        precision: ``"fp32"``, ``"fp16"``, ``"int8"``, or ``"auto"`` for the
            device's choice in ``AUTO_PRECISION``; ``"auto"`` falls back to
            fp32 when that variant was never written.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``, as for ``OnnxDetector``.

    Returns:
        The file and its precision.

    Raises:
        ModelError: the requested variant does not exist, or ``model_path`` is
            a variant of another precision than the one requested.
    """
    model_path = Path(model_path)
    stated = precision_of_path(model_path)
    if stated is not None:
        if precision not in ("auto", stated):
            raise ModelError(
                f"model file {model_path} is the {stated} variant but --precision {precision} was requested; "
                "pass the fp32 model to choose a variant"
            )
        return model_path, stated

    if precision == "auto":
        wanted = AUTO_PRECISION[resolve_device(device)]
        path = variant_path(model_path, wanted)
        if not path.is_file():
            logger.info("Model variant %s not found, so the fp32 model %s is used", path, model_path)
            return model_path, "fp32"
        return path, wanted

    path = variant_path(model_path, precision)
    if not path.is_file() and precision != "fp32":
        raise ModelError(
            f"{precision} variant {path} of model {model_path} not found; write it with "
            f"'python -m midog.training.quantize {model_path} --precision {precision}'"
        )
    return path, precision
