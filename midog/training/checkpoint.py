"""Safe loading of mmengine checkpoints.

Since torch 2.6, ``torch.load`` unpickles only tensors and plain containers
by default, and mmengine 0.10 checkpoints also hold its ``HistoryBuffer``
logs, numpy scalars and arrays, and the statistics methods of
``HistoryBuffer``, which pickle as ``getattr(HistoryBuffer, "min")``. torch's
own allow-list cannot admit ``getattr`` without admitting it for every
object, which would let a crafted file call arbitrary methods. So checkpoints
are read by a restricted unpickler that resolves only the globals named in
``_allowed_globals`` and a ``getattr`` limited to those statistics methods;
anything else raises ``ModelError`` naming the global. ``weights_only`` is
never simply turned off.
"""

from __future__ import annotations

import logging
import pickle
import types
from pathlib import Path
from typing import Any, Callable

from midog.errors import ModelError

__all__ = ["load_checkpoint", "register_safe_loader", "UnsafeCheckpointError"]

logger = logging.getLogger(__name__)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint names a global outside the allow-list."""


def _safe_history_buffer_getattr() -> Callable[[Any, str], Any]:
    from mmengine.logging.history_buffer import HistoryBuffer

    allowed_names = {"min", "max", "mean", "current"}

    def safe_getattr(obj: Any, name: str) -> Any:
        if obj is HistoryBuffer and name in allowed_names:
            return getattr(obj, name)
        raise UnsafeCheckpointError(
            f"getattr({getattr(obj, '__name__', type(obj).__name__)}, {name!r}) is not in the allow-list"
        )

    return safe_getattr


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """Map ``(module, name)`` of each global mmengine 0.10 and mmdet 3.3 checkpoints use to its object."""
    import codecs
    import collections

    import numpy as np
    import torch
    from mmengine.logging.history_buffer import HistoryBuffer

    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): collections.defaultdict,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch", "device"): torch.device,
        ("mmengine.logging.history_buffer", "HistoryBuffer"): HistoryBuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # numpy pickles byte buffers of arrays through codecs.encode(str, "latin1").
        ("_codecs", "encode"): codecs.encode,
        ("__builtin__", "getattr"): _safe_history_buffer_getattr(),
        ("builtins", "getattr"): _safe_history_buffer_getattr(),
    }
    # numpy's array and scalar reconstructors moved from numpy.core to numpy._core in numpy 2.
    try:
        from numpy._core import multiarray as core_multiarray
    except ImportError:  # numpy 1
        from numpy.core import multiarray as core_multiarray

    for module_name in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module_name, "_reconstruct")] = core_multiarray._reconstruct
        allowed[(module_name, "scalar")] = core_multiarray.scalar
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in dir(dtypes):
            if name.endswith("DType"):
                allowed[("numpy.dtypes", name)] = getattr(dtypes, name)
    return allowed


def _restricted_pickle_module() -> types.ModuleType:
    allowed = _allowed_globals()

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            try:
                return allowed[(module, name)]
            except KeyError:
                raise UnsafeCheckpointError(f"global '{module}.{name}' is not in the allow-list") from None

    module = types.ModuleType("midog_restricted_pickle")
    module.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    module.load = lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load()  # type: ignore[attr-defined]
    module.__dict__["UnpicklingError"] = pickle.UnpicklingError
    return module


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """Load an mmengine checkpoint through the restricted unpickler.

    Raises:
        ModelError: the file is missing, is not a torch checkpoint, or holds a
            global outside the allow-list (the message names it; such a file
            was not written by mmengine 0.10 / midog, or holds untrusted code).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} not found")
    try:
        checkpoint = torch.load(
            str(path), map_location=map_location, pickle_module=_restricted_pickle_module(), weights_only=False
        )
    except UnsafeCheckpointError as exc:
        raise ModelError(
            f"checkpoint {path} was rejected: {exc}; load only checkpoints written by mmengine/midog"
        ) from exc
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"checkpoint {path} is not a readable torch checkpoint: {reason}") from exc
    if not isinstance(checkpoint, dict):
        raise ModelError(f"checkpoint {path} holds a {type(checkpoint).__name__}; expected a dict")
    return checkpoint


def register_safe_loader() -> None:
    """Make mmengine's own checkpoint loading (``load_from``, ``resume``) use ``load_checkpoint``."""
    from mmengine.runner.checkpoint import CheckpointLoader

    def load_from_local(filename: str, map_location: str | None = None) -> dict[str, Any]:
        return load_checkpoint(Path(filename).expanduser(), map_location or "cpu")

    # The empty prefix is mmengine's scheme for local paths.
    CheckpointLoader.register_scheme(prefixes="", force=True)(load_from_local)
