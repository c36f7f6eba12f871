"""onnxruntime session settings and IO binding for whole-slide throughput.

``session_options`` returns the settings a detector session should use:
full graph optimisation, intra-op threads equal to the physical cores on
CPU (onnxruntime's own choice for 0), and optionally no spin-waiting, which
leaves idle cores to the tile reader threads. ``execution_providers`` lists
the providers for a device, TensorRT first where requested and installed.
``IoBindingRunner`` runs a session through IO binding, so that on CUDA the
input is copied to the device once and the outputs land in host memory
without an extra copy; on CPU it gives the same results as ``session.run``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from midog.errors import ModelError

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = ["IoBindingRunner", "SessionDevice", "execution_providers", "session_options"]

logger = logging.getLogger(__name__)

SessionDevice = Literal["cpu", "cuda", "tensorrt"]


def session_options(intra_op_threads: int = 0, allow_spinning: bool = True) -> ort.SessionOptions:
    """Return session options for a detector.

    Args:
        intra_op_threads: threads per operator; 0 lets onnxruntime choose one
            per physical core.
        allow_spinning: let idle intra-op threads spin-wait for the next
            operator (onnxruntime's default). Spinning shortens each operator's
            start but takes CPU from reader threads on the same cores.

    Returns:
        Options with ``ORT_ENABLE_ALL`` graph optimisation and warnings silenced.
    """
    import onnxruntime as ort

    if intra_op_threads < 0:
        raise ValueError(f"intra_op_threads must be 0 (onnxruntime's choice) or more, got {intra_op_threads}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    return options


def execution_providers(device: SessionDevice) -> list[str]:
    """Return onnxruntime providers for a device, with CPU last as the fallback for unsupported nodes.

    Raises:
        ModelError: the device's provider is not in this onnxruntime build.
        ValueError: ``device`` is not one of "cpu", "cuda", "tensorrt".
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    required = {
        "cpu": [],
        "cuda": ["CUDAExecutionProvider"],
        "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
    }
    if device not in required:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'tensorrt', got {device!r}")
    missing = [name for name in required[device] if name not in available]
    if missing:
        raise ModelError(
            f"device {device} needs {missing} but onnxruntime offers only {available}; "
            "install onnxruntime-gpu (with TensorRT for 'tensorrt') or use the CPU"
        )
    return [*required[device], "CPUExecutionProvider"]


class IoBindingRunner:
    """Run a session through IO binding.

    Args:
        session: the session, on any provider.
        input_name: the graph's one input.
        output_names: the outputs to return, in this order.

    The input goes to the device of the session's first provider (CUDA
    memory for the CUDA and TensorRT providers), and the outputs are bound
    to host memory.
    """

    def __init__(self, session: ort.InferenceSession, input_name: str, output_names: Sequence[str]) -> None:
        self.session = session
        self.input_name = input_name
        self.output_names = tuple(output_names)
        provider = session.get_providers()[0]
        self.device_type = (
            "cuda" if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
        )

    def __repr__(self) -> str:
        return f"IoBindingRunner(device_type={self.device_type!r}, output_names={self.output_names!r})"

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        """Run on ``images`` (float32, C-contiguous) and return the outputs as host arrays."""
        import onnxruntime as ort

        images = np.ascontiguousarray(images, dtype=np.float32)
        binding = self.session.io_binding()
        if self.device_type == "cuda":
            device_input = ort.OrtValue.ortvalue_from_numpy(images, "cuda", 0)
            binding.bind_ortvalue_input(self.input_name, device_input)
        else:
            binding.bind_cpu_input(self.input_name, images)
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()
