"""The default training data plan: which real samples feed ``segmote train``, and how many of each.

Budgets keep the encoder pass feasible on a CPU (about 1-2 s per slice for
LiteMedSAM): large 2-D sets are subsampled evenly and 3-D cases give a few
axial slices each. The CT volume kept for testing automatic segmentation
(``ct_abdomen_dicom``) is never listed here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Optional

from ..errors import InputError
from .sources import SliceSample, iter_instance_folder, iter_labelled_volume, iter_pairs_folder, read_label_table

logger = logging.getLogger(__name__)

# Named structures that get learned prompt tokens for automatic segmentation,
# in label order (TotalSegmentator names).
AUTO_STRUCTURES = (
    "liver",
    "spleen",
    "kidney_left",
    "kidney_right",
    "stomach",
    "aorta",
    "pancreas",
    "inferior_vena_cava",
)

# pairs.tsv folder -> at most this many rows (None: all rows).
PAIRS_ROW_BUDGET: dict[str, Optional[int]] = {
    "abdomen_ct_curvas": None,
    "brain_mri_brats": None,
    "breast_us_busi": None,
    "cardiac_mri_acdc": None,
    "ct_lesion_deeplesion": None,
    "cxr_lungs": None,
    "dermoscopy_isic": None,
    "fundus_drive": 8,
    "polyp_kvasir": None,
    "thyroid_us_tg3k": 40,
}

# Axial slices taken from each 3-D case of a pairs.tsv folder.
SLICES_PER_VOLUME = {"brain_mri_brats": 8, "ct_lesion_deeplesion": 3}

# Folders that must never be used for training.
EXCLUDED_FOLDERS = ("ct_abdomen_dicom",)


def iter_default_samples(data_root: Path) -> Iterator[SliceSample]:
    """Yield every sample of the default plan from the project's data folder.

    Args:
        data_root: folder with ``pool/``, ``ct_abdomen_small/``, ``ct_slices_2d/`` and
            ``labels_totalsegmentator.json``.
    """
    if not (data_root / "pool").is_dir():
        raise InputError(f"{data_root} has no pool/ folder; pass the data folder with --data")

    # The multi-organ CT volume, with the automatic-segmentation structures.
    table = read_label_table(data_root / "labels_totalsegmentator.json")
    wanted = {value: name for value, name in table.items() if name in AUTO_STRUCTURES}
    small = data_root / "ct_abdomen_small"
    yield from iter_labelled_volume(small / "ct.nii.gz", small / "labels.nii.gz", wanted, "ct_abdomen_small")

    # 2-D CT slices with per-instance masks.
    yield from iter_instance_folder(data_root / "ct_slices_2d", "ct_slices_2d")

    # The multi-modality pool.
    for folder_name, budget in PAIRS_ROW_BUDGET.items():
        folder = data_root / "pool" / folder_name
        if not folder.is_dir():
            logger.warning("Training folder %s not found; skipped", folder)
            continue
        yield from iter_pairs_folder(folder, budget, SLICES_PER_VOLUME.get(folder_name, 6))
