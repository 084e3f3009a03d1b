"""Overlap metrics between label maps: Dice and normalised surface Dice, compared in physical space.

This module imports no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

# Tolerance (mm) of the normalised surface Dice.
SURFACE_TOLERANCE_MM = 2.0


@dataclass(frozen=True)
class StructureScore:
    """Scores of one structure; ``dice`` and ``surface_dice`` are None when both masks are empty."""

    name: str
    dice: Optional[float]
    surface_dice: Optional[float]
    predicted_voxels: int
    reference_voxels: int


def dice(prediction: np.ndarray, reference: np.ndarray) -> Optional[float]:
    """Dice coefficient of two bool masks of one shape; None when both are empty."""
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return None
    return 2.0 * int(np.logical_and(prediction, reference).sum()) / total


def _surface_distances(mask: sitk.Image, other: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from the surface voxels of ``mask`` to the surface of ``other``."""
    surface = sitk.LabelContour(mask, fullyConnected=True)
    other_surface = sitk.LabelContour(other, fullyConnected=True)
    distance = sitk.Abs(sitk.SignedMaurerDistanceMap(other_surface, squaredDistance=False, useImageSpacing=True))
    surface_array = sitk.GetArrayViewFromImage(surface).astype(bool)
    return sitk.GetArrayFromImage(distance)[surface_array], surface_array


def surface_dice(prediction: sitk.Image, reference: sitk.Image, tolerance_mm: float = SURFACE_TOLERANCE_MM) -> Optional[float]:
    """Normalised surface Dice of two binary images on one grid; None when both are empty, 0 when one is."""
    predicted_any = sitk.GetArrayViewFromImage(prediction).any()
    reference_any = sitk.GetArrayViewFromImage(reference).any()
    if not predicted_any and not reference_any:
        return None
    if not predicted_any or not reference_any:
        return 0.0
    to_reference, _ = _surface_distances(prediction, reference)
    to_prediction, _ = _surface_distances(reference, prediction)
    close = int((to_reference <= tolerance_mm).sum()) + int((to_prediction <= tolerance_mm).sum())
    return close / (to_reference.size + to_prediction.size)


def read_label_table(path: Path) -> dict[int, str]:
    """Read a label table JSON ``{"1": "liver", ...}``."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        return {int(value): str(name) for value, name in raw.items()}
    except FileNotFoundError:
        raise InputError(f"label table not found: {path}") from None
    except (json.JSONDecodeError, ValueError, AttributeError) as error:
        raise InputError(f"invalid label table {path} ({error}): expected JSON like {{\"1\": \"liver\"}}") from None


def resample_like(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Resample a label image onto the reference grid (nearest neighbour, physical space)."""
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
    )


def compare_label_maps(
    prediction: sitk.Image,
    reference: sitk.Image,
    prediction_table: dict[int, str],
    reference_table: dict[int, str],
) -> list[StructureScore]:
    """Score every structure named in both tables; the prediction is resampled onto the reference grid if needed."""
    if not _same_grid(prediction, reference):
        prediction = resample_like(prediction, reference)
    predicted = sitk.GetArrayFromImage(prediction)
    referenced = sitk.GetArrayFromImage(reference)
    reference_values = {name: value for value, name in reference_table.items()}
    scores = []
    for value, name in sorted(prediction_table.items()):
        if name not in reference_values:
            continue
        predicted_mask = predicted == value
        reference_mask = referenced == reference_values[name]
        predicted_image = sitk.GetImageFromArray(predicted_mask.astype(np.uint8))
        predicted_image.CopyInformation(reference)
        reference_image = sitk.GetImageFromArray(reference_mask.astype(np.uint8))
        reference_image.CopyInformation(reference)
        scores.append(
            StructureScore(
                name,
                dice(predicted_mask, reference_mask),
                surface_dice(predicted_image, reference_image),
                int(predicted_mask.sum()),
                int(reference_mask.sum()),
            )
        )
    return scores
