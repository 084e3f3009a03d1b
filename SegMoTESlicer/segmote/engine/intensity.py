"""Intensity scaling from voxel values to the model's [0, 1] range, fixed once per volume.

- CT in Hounsfield units (DICOM modality CT, ``modality="ct"``, or an integer
  volume whose minimum is at or below -900, the air of a CT): a window preset.
- 8-bit images (PNG/JPEG, already windowed by their publisher) and RGB: divided by 255.
- Any other scalar data (MR, ultrasound, ...): the 0.5 and 99.5 percentiles of
  the whole volume map to 0 and 1.

The scaling is computed once per volume, so neighbouring slices match, and
applied slice by slice, so that a large CT is never held as float32 at once.
This module imports no torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import InputError
from .volume import Volume

logger = logging.getLogger(__name__)

# Window presets as (level, width) in HU; the usual radiology values.
CT_WINDOWS = {
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
DEFAULT_CT_WINDOW = "soft_tissue"

# An integer volume whose minimum is at or below this is taken as CT in HU.
CT_AIR_THRESHOLD_HU = -900

# Percentiles computed on at most this many voxels (a regular subsample),
# which keeps the scan of a 512 x 512 x 300 CT below a second.
PERCENTILE_SAMPLE_VOXELS = 2_000_000


@dataclass(frozen=True)
class IntensityScaling:
    """Linear map of voxel values to [0, 1]: ``clip((v - low) / (high - low), 0, 1)``.

    Attributes:
        low, high: values mapped to 0 and 1.
        description: how they were chosen (for logs and benchmarks).
    """

    low: float
    high: float
    description: str

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Scale an array of any shape to float32 in [0, 1]."""
        span = max(self.high - self.low, 1e-6)
        scaled = (values.astype(np.float32) - np.float32(self.low)) / np.float32(span)
        return np.clip(scaled, 0.0, 1.0, out=scaled)


def is_ct(volume: Volume, modality: Optional[str] = None) -> bool:
    """Decide whether the volume's values are Hounsfield units."""
    name = (modality or volume.modality or "").upper()
    if name:
        return name == "CT"
    if volume.is_8bit or volume.is_rgb or not np.issubdtype(volume.array.dtype, np.integer):
        return False
    return int(volume.array.min()) <= CT_AIR_THRESHOLD_HU


def intensity_scaling(volume: Volume, window: Optional[str] = None, modality: Optional[str] = None) -> IntensityScaling:
    """Choose the scaling for a volume.

    Args:
        volume: the image.
        window: a key of :data:`CT_WINDOWS`; only valid for CT.
        modality: overrides the volume's modality (``"ct"`` forces HU windows).

    Raises:
        InputError: unknown window, or a window given for data that is not CT.
    """
    if window is not None and window not in CT_WINDOWS:
        raise InputError(f"unknown window {window!r}: use one of {', '.join(CT_WINDOWS)}")
    if volume.is_8bit or volume.is_rgb:
        if window is not None:
            raise InputError(
                f"--window {window} applies to CT in HU, but this image is 8-bit and already windowed; drop --window"
            )
        return IntensityScaling(0.0, 255.0, "8-bit, used as it is")
    if is_ct(volume, modality):
        name = window or DEFAULT_CT_WINDOW
        level, width = CT_WINDOWS[name]
        return IntensityScaling(level - width / 2, level + width / 2, f"CT window {name} (L {level:g}, W {width:g})")
    if window is not None:
        raise InputError(
            f"--window {window} applies to CT in HU, but this volume is not CT (modality {volume.modality or 'unknown'}); "
            "drop --window, or pass --modality ct if it is CT"
        )

    values = volume.array.reshape(-1)
    step = max(1, values.size // PERCENTILE_SAMPLE_VOXELS)
    low, high = np.percentile(values[::step], [0.5, 99.5])
    if high <= low:
        high = low + 1.0
        logger.warning("The volume is nearly constant (0.5 and 99.5 percentiles both %.3g)", low)
    return IntensityScaling(float(low), float(high), "0.5-99.5 percentile scaling")
