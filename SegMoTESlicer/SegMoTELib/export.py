"""Export of segmentations: DICOM-SEG for DICOM-based volumes, NRRD or NIfTI otherwise.

The DICOM-SEG writer of :mod:`segmote.dicom` needs no torch, so export works in
server mode too. All writes go through a temporary file in the target folder,
so a failed export leaves no half-written file. This module imports neither
slicer, Qt nor torch.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from segmote.errors import InputError
from segmote.geometry import Grid

logger = logging.getLogger(__name__)

LABEL_MAP_FORMATS = (".seg.nrrd", ".nrrd", ".nii.gz", ".nii")

# A DICOM file position within this fraction of a voxel of a voxel centre lies on it.
INDEX_TOLERANCE_VOXELS = 0.01


def label_table(names: Sequence[str]) -> dict[int, str]:
    """Return the label table ``{1: names[0], 2: names[1], ...}``."""
    if len(set(names)) != len(names):
        raise InputError(f"segment names must be unique for export, got {list(names)}: rename the duplicates")
    return {value: name for value, name in enumerate(names, start=1)}


def safe_file_stem(name: str) -> str:
    """Return ``name`` reduced to letters, digits, ``-`` and ``_`` for use in a file name."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    return stem or "segmentation"


def export_label_map(
    labels_kji: np.ndarray,
    grid: Grid,
    path: Path,
    table: dict[int, str],
    colors: Optional[dict[int, tuple[int, int, int]]] = None,
) -> Path:
    """Write a label map ``(K, J, I)`` as NRRD, ``.seg.nrrd`` or NIfTI, with its ``.labels.json`` table beside it."""
    from segmote.engine.volume import write_label_map

    path = Path(path)
    if not path.name.lower().endswith(LABEL_MAP_FORMATS):
        raise InputError(f"unsupported export file {path.name}: use one of {', '.join(LABEL_MAP_FORMATS)}")
    return write_label_map(labels_kji, grid, path, table, colors)


def labels_in_file_order(labels_kji: np.ndarray, grid: Grid, positions_lps: Sequence[Sequence[float]]) -> np.ndarray:
    """Reorder the slices of a label map ``(K, J, I)`` to match a list of DICOM files.

    Slicer may stack a series' slices in another order than the file list it
    keeps. Each file's ImagePositionPatient (LPS mm, the centre of its first
    pixel) must fall on voxel ``(0, 0, k)`` of ``grid``. Slice n of the
    result is the slice of file n.

    Raises:
        InputError: a file position does not fall on the first voxel of a slice.
    """
    positions = np.asarray(positions_lps, dtype=np.float64).reshape(-1, 3)
    ijk = grid.lps_to_ijk(positions)
    slices = np.rint(ijk[:, 2]).astype(int)
    off_grid = np.abs(ijk - np.column_stack([np.zeros((len(ijk), 2)), slices])).max(axis=1) > INDEX_TOLERANCE_VOXELS
    outside = (slices < 0) | (slices >= labels_kji.shape[0])
    if np.any(off_grid | outside):
        bad = int(np.flatnonzero(off_grid | outside)[0])
        raise InputError(
            f"DICOM file {bad + 1} (position {np.round(positions[bad], 2).tolist()} mm) does not lie on a slice of the "
            "volume: export the segmentation of the volume loaded from this series"
        )
    return np.ascontiguousarray(labels_kji[slices])


def export_dicom_seg(
    labels_kji: np.ndarray,
    grid: Grid,
    table: dict[int, str],
    source_files: Sequence[Path],
    path: Path,
    algorithm_type: str = "SEMIAUTOMATIC",
) -> Path:
    """Write a DICOM-SEG that references the source series; return its path.

    Args:
        labels_kji: label map ``(K, J, I)`` on ``grid``, the grid of the volume
            loaded from the source series (slices in any order).
        grid: the volume's grid.
        table: label value to structure name.
        source_files: the source series' instance files.
        path: the ``.dcm`` file to write.
        algorithm_type: ``SEMIAUTOMATIC`` for prompted results, ``AUTOMATIC`` for auto-segmentation.

    Raises:
        InputError: no source files, or labels that do not fit the series.
    """
    import pydicom

    from segmote.dicom.seg_writer import write_seg_for_volume  # the backend's DICOM-SEG writer

    if not source_files:
        raise InputError("the volume has no DICOM source files: export it as NRRD or NIfTI instead")
    path = Path(path)
    if path.suffix.lower() != ".dcm":
        raise InputError(f"a DICOM-SEG file name must end in .dcm, got {path.name}")

    # Put label slices in the order of the files.
    files = [Path(source) for source in source_files]
    positions = []
    for file in files:
        header = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["ImagePositionPatient"])
        if "ImagePositionPatient" not in header:
            raise InputError(f"DICOM file {file} has no ImagePositionPatient, so it cannot be placed on the volume")
        positions.append([float(value) for value in header.ImagePositionPatient])
    ordered = labels_in_file_order(labels_kji, grid, positions)

    written = write_seg_for_volume(ordered, table, files, path, algorithm_type)
    logger.info("Wrote DICOM-SEG %s with %d segments", path, len(table))
    return Path(written)
