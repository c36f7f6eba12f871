"""midog: real-time mitotic figure detection in H&E histopathology.

The package has two halves that share only file formats. ``midog.io``,
``midog.inference`` and ``midog.evaluation`` need numpy, onnxruntime and
OpenSlide; ``midog.training`` adds torch, mmengine and mmdet.
"""

__version__ = "0.1.0"
