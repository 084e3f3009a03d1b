"""Reading a DICOM series folder into one 3-D SimpleITK image with the geometry its headers imply.

A folder is searched recursively. Its image files are grouped by
SeriesInstanceUID; a series is picked by UID or SeriesNumber when there are
several. Slices are ordered by their position along the slice normal, and the
image's origin, spacing and direction come from ImagePositionPatient,
ImageOrientationPatient and PixelSpacing (see :mod:`segmote.dicom.placement`).
Pixels are decoded file by file with SimpleITK (GDCM), which also decodes
JPEG 2000 and JPEG-LS and applies RescaleSlope/RescaleIntercept.

This module imports no torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .placement import SeriesGeometry, place_slices
from .scan import InstanceHeader, ScanResult, scan_folder

logger = logging.getLogger(__name__)

# Corrupt files logged one by one before the rest are only counted.
MAX_LOGGED_CORRUPT_FILES = 5


@dataclass
class DicomSeriesInfo:
    """One series found in a folder, as listed to the user."""

    series_uid: str
    series_number: Optional[int]
    description: str
    modality: str
    count: int  # number of image instance files

    def summary(self) -> str:
        """Return a one-line description: UID, number, description, modality and file count."""
        number = "none" if self.series_number is None else str(self.series_number)
        return f"{self.series_uid} (number {number}, {self.description!r}, {self.modality or 'no modality'}, {self.count} files)"


@dataclass
class DicomSeries:
    """A series read as one volume.

    Attributes:
        image: 3-D SimpleITK image, size (I, J, K), geometry in LPS from the headers.
        files: the instance files in slice order; ``files[k]`` is slice k of ``image``.
        modality: the series' Modality, or None when absent.
        series_uid: SeriesInstanceUID.
    """

    image: sitk.Image
    files: list[Path]
    modality: Optional[str]
    series_uid: str


def list_series(folder: Path) -> list[DicomSeriesInfo]:
    """List the image series under ``folder`` (recursively), ordered by SeriesNumber then UID.

    Raises:
        InputError: ``folder`` is not a folder.
    """
    scan = _scan(Path(folder), strict=False)
    return _series_infos(scan.headers)


def read_series(folder: Path, series: Optional[str] = None, strict: bool = False) -> DicomSeries:
    """Read one series of single-frame DICOM images under ``folder`` as a 3-D image.

    Args:
        folder: a folder searched recursively for DICOM files; other files are ignored.
        series: SeriesInstanceUID or SeriesNumber; required when the folder contains several series.
        strict: raise on a corrupt DICOM file instead of skipping it with a warning.

    Raises:
        InputError: no DICOM images; several series and ``series`` not given;
            unknown series; missing pixel data; mixed sizes, orientations or pixel
            spacings; uneven slice steps; gantry tilt; a corrupt file when ``strict``.
    """
    folder = Path(folder)
    scan = _scan(folder, strict)
    headers = _select_series(folder, scan, series)
    name = _series_name(headers)

    no_pixels = [h.path for h in headers if not h.has_pixel_data]
    if no_pixels:
        raise InputError(
            f"{no_pixels[0]} (and {len(no_pixels) - 1} more) in series {name} has no pixel data; "
            "export the series again with its images"
            if len(no_pixels) > 1
            else f"{no_pixels[0]} in series {name} has no pixel data; export the series again with its images"
        )

    # Decode slice by slice; a file that fails to decode is corrupt and the placement is redone without it.
    geometry = place_slices(headers, name)
    slices, failed = _decode_slices(geometry.headers, strict)
    if failed:
        kept = [h for h in geometry.headers if h.path not in failed]
        if not kept:
            raise InputError(f"no image in series {name} could be decoded: {_first(failed)}; check the files")
        geometry = place_slices(kept, name)
        slices = [slices[h.path] for h in geometry.headers]
    else:
        slices = [slices[h.path] for h in geometry.headers]

    image = _stack(slices, geometry)
    modality = headers[0].modality or None
    logger.info("Read series %s: %d slices of %d x %d", name, len(geometry.headers), headers[0].columns, headers[0].rows)
    return DicomSeries(image=image, files=[h.path for h in geometry.headers], modality=modality, series_uid=headers[0].series_uid)


def _scan(folder: Path, strict: bool) -> ScanResult:
    if not folder.is_dir():
        raise InputError(f"DICOM folder not found: {folder}; pass an existing folder of DICOM files")
    scan = scan_folder(folder)
    if scan.corrupt:
        if strict:
            path, reason = next(iter(scan.corrupt.items()))
            raise InputError(
                f"corrupt DICOM file {path} ({reason}; {len(scan.corrupt)} corrupt in all); remove it, "
                "or read without strict mode to skip corrupt files"
            )
        _warn_skipped(scan.corrupt)
    return scan


def _warn_skipped(corrupt: dict[Path, str]) -> None:
    for path, reason in list(corrupt.items())[:MAX_LOGGED_CORRUPT_FILES]:
        logger.warning("Skipping corrupt DICOM file %s: %s", path, reason)
    if len(corrupt) > MAX_LOGGED_CORRUPT_FILES:
        logger.warning("Skipping %d more corrupt DICOM files", len(corrupt) - MAX_LOGGED_CORRUPT_FILES)


def _group(headers: list[InstanceHeader]) -> dict[str, list[InstanceHeader]]:
    groups: dict[str, list[InstanceHeader]] = {}
    for header in headers:
        groups.setdefault(header.series_uid, []).append(header)
    return groups


def _series_infos(headers: list[InstanceHeader]) -> list[DicomSeriesInfo]:
    infos = [
        DicomSeriesInfo(uid, group[0].series_number, group[0].description, group[0].modality, len(group))
        for uid, group in _group(headers).items()
    ]
    return sorted(infos, key=lambda info: (info.series_number is None, info.series_number or 0, info.series_uid))


def _select_series(folder: Path, scan: ScanResult, series: Optional[str]) -> list[InstanceHeader]:
    """Return the headers of the requested series, or of the only one."""
    groups = _group(scan.headers)
    if not groups:
        corrupt = f" ({len(scan.corrupt)} corrupt DICOM files were skipped)" if scan.corrupt else ""
        raise InputError(f"no DICOM images found in {folder}{corrupt}; pass a folder that contains a DICOM image series")
    infos = _series_infos(scan.headers)
    listing = "; ".join(info.summary() for info in infos)

    if series is None:
        if len(groups) == 1:
            return next(iter(groups.values()))
        raise InputError(f"{folder} contains {len(groups)} series: {listing}; pass --series UID|NUMBER to pick one")

    requested = str(series).strip()
    if requested in groups:
        return groups[requested]
    matches = [info for info in infos if info.series_number is not None and requested.lstrip("+").isdigit() and info.series_number == int(requested)]
    if len(matches) == 1:
        return groups[matches[0].series_uid]
    if len(matches) > 1:
        raise InputError(
            f"series number {requested} is shared by {len(matches)} series in {folder}: "
            f"{'; '.join(m.summary() for m in matches)}; pass --series with the UID instead"
        )
    raise InputError(f"series {requested!r} not found in {folder}; it contains: {listing}; pass --series UID|NUMBER of one of them")


def _series_name(headers: list[InstanceHeader]) -> str:
    number = headers[0].series_number
    return f"{headers[0].series_uid}" + ("" if number is None else f" (number {number})")


def _decode_slices(headers: list[InstanceHeader], strict: bool) -> tuple[dict[Path, np.ndarray], dict[Path, str]]:
    """Decode each file's pixels, shape ``(J, I)`` or ``(J, I, C)``; return the slices and the failures."""
    slices: dict[Path, np.ndarray] = {}
    failed: dict[Path, str] = {}
    for header in headers:
        try:
            array = sitk.GetArrayFromImage(sitk.ReadImage(str(header.path)))
        except RuntimeError as error:
            failed[header.path] = _first_line(error)
            continue
        if array.ndim >= 3 and array.shape[0] == 1:
            array = array[0]
        if array.shape[:2] != (header.rows, header.columns):
            failed[header.path] = f"decoded shape {array.shape} does not match Rows x Columns {header.rows} x {header.columns}"
            continue
        slices[header.path] = array

    if failed and strict:
        raise InputError(
            f"cannot decode the pixels of {_first(failed)} ({len(failed)} files in all); remove the corrupt "
            "files, or read without strict mode to skip them"
        )
    _warn_skipped(failed)
    return slices, failed


def _stack(slices: list[np.ndarray], geometry: SeriesGeometry) -> sitk.Image:
    """Stack slices ``(J, I[, C])`` into a 3-D image on the series grid."""
    dtype = np.result_type(*[s.dtype for s in slices])
    volume = np.stack([s.astype(dtype, copy=False) for s in slices])  # (K, J, I) or (K, J, I, C)
    image = sitk.GetImageFromArray(volume, isVector=volume.ndim == 4)
    image.SetOrigin(geometry.origin_lps)
    image.SetSpacing(geometry.spacing_ijk)
    image.SetDirection(tuple(float(v) for v in geometry.direction_lps.flatten()))
    return image


def _first(failed: dict[Path, str]) -> str:
    path, reason = next(iter(failed.items()))
    return f"{path}: {reason}"


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(error).__name__
