"""Prompts made from reference labels, as a user would draw them, for the engine tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from segmote.engine.metrics import dice, resample_like
from segmote.engine.volume import Volume, read_volume, to_sitk
from segmote.geometry import lps_to_ras

# TotalSegmentator "total" label values.
TOTAL_LABELS = {
    "spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5, "stomach": 6,
    "aorta": 52, "vertebrae_L1": 31, "vertebrae_T12": 32,
}


def labels_on_grid(reference_path: Path, volume: Volume) -> np.ndarray:
    """Resample a reference label map onto the volume's grid in physical space; returns ``(K, J, I)``."""
    reference = sitk.ReadImage(str(reference_path))
    target = to_sitk(np.zeros(volume.grid.shape_kji, np.uint8), volume.grid)
    return sitk.GetArrayFromImage(resample_like(reference, target))


def largest_axial_slice(mask: np.ndarray) -> int:
    """Array index k (numpy axis 0) where the mask has the most voxels."""
    return int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))


def box_prompt_ijk(mask: np.ndarray, k: int, name: str, propagate: bool = False) -> dict:
    """Return a prompts dictionary with the bounding box of ``mask[k]`` in IJK."""
    rows, cols = np.nonzero(mask[k])
    box = [[int(cols.min()), int(rows.min()), k], [int(cols.max()), int(rows.max()), k]]
    return {"coordinate_system": "IJK", "segments": [{"name": name, "box": box, "propagate": propagate}]}


def box_prompt_ras(mask: np.ndarray, k: int, name: str, volume: Volume) -> dict:
    """Return the box of :func:`box_prompt_ijk` as RAS millimetres, without propagation."""
    rows, cols = np.nonzero(mask[k])
    corners = np.array([[cols.min(), rows.min(), k], [cols.max(), rows.max(), k]], dtype=float)
    ras = lps_to_ras(volume.grid.ijk_to_lps(corners))
    return {"coordinate_system": "RAS", "segments": [{"name": name, "box": ras.tolist()}]}


def slice_dice(prediction: np.ndarray, reference: np.ndarray, k: int) -> float:
    """Dice of two ``(K, J, I)`` masks on array slice k."""
    value = dice(prediction[k], reference[k])
    return 0.0 if value is None else value


def load_small_ct(shared_data: Path) -> tuple[Volume, np.ndarray]:
    folder = shared_data / "ct_abdomen_small"
    volume = read_volume(folder / "ct.nii.gz")
    return volume, sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels.nii.gz")))


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path
