"""Exceptions raised by midog for input the user can fix.

Every message names the file or value at fault and, where it helps, the
accepted range or the option that fixes it, so that the command line can
print it as one line and exit non-zero.
"""

__all__ = [
    "MidogError",
    "SlideOpenError",
    "SlideReadError",
    "SlideResolutionError",
    "ModelError",
    "AnnotationError",
    "OutputError",
    "ManifestError",
]


class MidogError(Exception):
    """Base class for errors caused by invalid input, files or settings."""


class SlideOpenError(MidogError):
    """A slide file is missing, is a directory, or no reader can open it."""


class SlideReadError(MidogError):
    """A slide opened but reading its pixels failed."""


class SlideResolutionError(MidogError):
    """A slide has no usable µm/px and none was given with ``--mpp``."""


class ModelError(MidogError):
    """A model file is missing, is not ONNX, or has unexpected inputs or outputs."""


class AnnotationError(MidogError):
    """An annotation file is missing, malformed, or of another format than declared."""


class OutputError(MidogError):
    """An output location is not writable, or an output failed validation."""


class ManifestError(MidogError):
    """A manifest CSV of slides is unreadable, lacks its ``path`` column, or has an invalid value."""
