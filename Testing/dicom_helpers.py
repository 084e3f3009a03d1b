"""Helpers for the DICOM tests: copies of the real CT series with edited headers, and its labels on the series grid."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid


def series_folder(shared_data: Path) -> Path:
    """Return the folder of the real 20-slice CT series (JPEG 2000 lossless pixels)."""
    return shared_data / "ct_abdomen_dicom" / "series"


def copy_series(
    source: Path,
    target: Path,
    edit: Optional[Callable[[int, pydicom.Dataset], Optional[pydicom.Dataset]]] = None,
    rename: Optional[Callable[[int, Path], str]] = None,
) -> list[Path]:
    """Copy the series files into ``target``, optionally editing each header and renaming each file.

    ``edit(index, dataset)`` receives the files in sorted-name order and may change
    the dataset in place; returning False-like ``None`` keeps it. Pixel data stays
    encapsulated as it is (no decoding). Returns the written paths.
    """
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for index, path in enumerate(sorted(source.iterdir())):
        name = rename(index, path) if rename else path.name
        destination = target / name
        if edit is None:
            shutil.copyfile(path, destination)
        else:
            dataset = pydicom.dcmread(path)
            edit(index, dataset)
            dataset.save_as(destination, enforce_file_format=True)
        written.append(destination)
    return written


def new_series_uids(series_number: int) -> Callable[[int, pydicom.Dataset], None]:
    """Return an edit that moves every file into one new series (new Series and SOP Instance UIDs)."""
    series_uid = generate_uid()

    def edit(index: int, dataset: pydicom.Dataset) -> None:
        dataset.SeriesInstanceUID = series_uid
        dataset.SeriesNumber = series_number
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID

    return edit


def labels_on_series_grid(shared_data: Path, reference: sitk.Image) -> np.ndarray:
    """Resample the CT labels (stored with flipped rows) onto ``reference``'s grid in physical space.

    Returns a uint8 array ``(K, J, I)`` on the series grid (nearest-neighbour).
    """
    labels = sitk.ReadImage(str(shared_data / "ct_abdomen_dicom" / "labels.nii.gz"))
    resampled = sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    return sitk.GetArrayFromImage(resampled).astype(np.uint8)
