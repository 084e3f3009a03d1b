"""SegMoTE backend: SAM-family segmentation of medical volumes, without Slicer.

Importing this package loads neither torch nor the model; the model runtime
lives in :mod:`segmote.model` and :mod:`segmote.engine`.
"""

__version__ = "0.1.0"
