"""Write the demo's prompts file: one box per organ, as a user would draw it, from the reference labels.

For each structure the box is the bounding rectangle (plus a 2-voxel margin)
of the reference mask on its largest axial slice, written in RAS millimetres
with propagation switched on. Usage:

    python benchmarks/make_demo_prompts.py Resources/SampleData/ct_abdomen_dicom
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from segmote.engine.metrics import resample_like
from segmote.engine.volume import read_volume, to_sitk
from segmote.geometry import lps_to_ras

# TotalSegmentator "total" label values of the demo structures.
DEMO_STRUCTURES = {"liver": 5, "spleen": 1, "stomach": 6, "aorta": 52, "vertebrae_T12": 32}
MARGIN_VOXELS = 2


def main(folder: Path) -> None:
    volume = read_volume(folder / "series")
    reference = sitk.ReadImage(str(folder / "labels.nii.gz"))
    grid_image = to_sitk(np.zeros(volume.grid.shape_kji, np.uint8), volume.grid)
    labels = sitk.GetArrayFromImage(resample_like(reference, grid_image))
    segments = []
    for name, value in DEMO_STRUCTURES.items():
        mask = labels == value
        k = int(np.argmax(mask.sum(axis=(1, 2))))
        rows, cols = np.nonzero(mask[k])
        J, I = mask.shape[1:]
        corner_a = [max(cols.min() - MARGIN_VOXELS, 0), max(rows.min() - MARGIN_VOXELS, 0), k]
        corner_b = [min(cols.max() + MARGIN_VOXELS, I - 1), min(rows.max() + MARGIN_VOXELS, J - 1), k]
        box_ras = lps_to_ras(volume.grid.ijk_to_lps(np.array([corner_a, corner_b], dtype=float)))
        segments.append({
            "name": name,
            "view": "axial",
            "box": np.round(box_ras, 2).tolist(),
            "propagate": True,
        })
    prompts = {"coordinate_system": "RAS", "segments": segments}
    (folder / "prompts.json").write_text(json.dumps(prompts, indent=2) + "\n")
    table = {str(value): name for name, value in DEMO_STRUCTURES.items()}
    (folder / "labels.nii.gz.labels.json").write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
