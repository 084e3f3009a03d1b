"""Finding DICOM image files in a folder and reading the header fields that place them.

Only the headers are read here (pixel data is deferred, not decoded). Files that
are not DICOM (no ``DICM`` marker at byte 128) are ignored; DICOM objects without
an image (structured reports, DICOMDIR, presentation states) are ignored too.

This module imports no torch.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pydicom
from pydicom.errors import InvalidDicomError

logger = logging.getLogger(__name__)

# Bytes 128-131 of a DICOM Part 10 file (after the 128-byte preamble).
DICOM_MARKER = b"DICM"
DICOM_MARKER_OFFSET = 128

# Header values larger than this are left on disk while scanning (pixel data, overlays).
DEFER_VALUES_LARGER_THAN_BYTES = 4096


@dataclass
class InstanceHeader:
    """The header fields of one image instance that grouping and slice placement need.

    Attributes:
        path: the instance file.
        series_uid: SeriesInstanceUID.
        series_number: SeriesNumber, or None when absent.
        description: SeriesDescription ("" when absent).
        modality: Modality ("" when absent).
        rows, columns: image size in pixels (J, I).
        frames: NumberOfFrames (1 for single-frame images).
        position_lps: ImagePositionPatient (mm, LPS), or None when absent.
        orientation_lps: ImageOrientationPatient, the row and column direction
            cosines in LPS (6 numbers), or None when absent.
        pixel_spacing: PixelSpacing as (row spacing, column spacing) in mm, i.e.
            the distance between rows (along j) first, or None when absent.
        slice_thickness: SliceThickness in mm, or None.
        gantry_tilt_degrees: GantryDetectorTilt, or None.
        has_pixel_data: whether the file contains a pixel data element.
    """

    path: Path
    series_uid: str
    series_number: Optional[int]
    description: str
    modality: str
    rows: int
    columns: int
    frames: int
    position_lps: Optional[tuple[float, float, float]]
    orientation_lps: Optional[tuple[float, ...]]
    pixel_spacing: Optional[tuple[float, float]]
    slice_thickness: Optional[float]
    gantry_tilt_degrees: Optional[float]
    has_pixel_data: bool


@dataclass
class ScanResult:
    """Image headers found under a folder, and the DICOM files that could not be parsed."""

    headers: list[InstanceHeader]
    corrupt: dict[Path, str]  # file -> reason


def has_dicom_marker(path: Path) -> bool:
    """Return whether ``path`` starts like a DICOM Part 10 file (preamble then ``DICM``)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(DICOM_MARKER_OFFSET)
            return handle.read(len(DICOM_MARKER)) == DICOM_MARKER
    except OSError:
        return False


def scan_folder(folder: Path) -> ScanResult:
    """Read the headers of every DICOM image file under ``folder``, recursively.

    Files are visited in sorted path order so that results are reproducible. The
    order does not imply slice order.
    """
    headers: list[InstanceHeader] = []
    corrupt: dict[Path, str] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if not has_dicom_marker(path):
            logger.debug("Ignoring %s: not a DICOM file", path)
            continue
        try:
            header = read_header(path)
        except (InvalidDicomError, ValueError, TypeError, AttributeError, KeyError, OSError, EOFError) as error:
            corrupt[path] = f"{type(error).__name__}: {error}".splitlines()[0][:200]
            continue
        if header is None:
            logger.debug("Ignoring %s: DICOM object without an image", path)
            continue
        headers.append(header)
    return ScanResult(headers, corrupt)


def read_header(path: Path) -> Optional[InstanceHeader]:
    """Read one file's placement fields, or return None for a DICOM object that is not an image.

    Raises:
        InvalidDicomError, ValueError, TypeError, ...: the header cannot be parsed
            (a corrupt or truncated file).
    """
    # pydicom only warns when a file ends early and returns what it parsed: a truncated file is corrupt.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = pydicom.dcmread(path, defer_size=DEFER_VALUES_LARGER_THAN_BYTES)
    truncated = [w for w in caught if "end of file" in str(w.message).lower()]
    if truncated:
        raise EOFError(f"file ends early: {truncated[0].message}")
    if "TransferSyntaxUID" not in dataset.file_meta:
        raise ValueError("no file meta information with a TransferSyntaxUID")
    if "SOPClassUID" not in dataset:
        raise ValueError("no SOPClassUID")
    has_pixel_data = any(
        keyword in dataset for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    )
    if "Rows" not in dataset and not has_pixel_data:
        return None
    if "SeriesInstanceUID" not in dataset:
        raise ValueError("no SeriesInstanceUID")
    return InstanceHeader(
        path=path,
        series_uid=str(dataset.SeriesInstanceUID),
        series_number=_optional_int(dataset.get("SeriesNumber")),
        description=str(dataset.get("SeriesDescription", "") or ""),
        modality=str(dataset.get("Modality", "") or ""),
        rows=int(dataset.get("Rows", 0) or 0),
        columns=int(dataset.get("Columns", 0) or 0),
        frames=int(dataset.get("NumberOfFrames", 1) or 1),
        position_lps=_optional_floats(dataset.get("ImagePositionPatient"), 3),
        orientation_lps=_optional_floats(dataset.get("ImageOrientationPatient"), 6),
        pixel_spacing=_optional_floats(dataset.get("PixelSpacing"), 2),
        slice_thickness=_optional_float(dataset.get("SliceThickness")),
        gantry_tilt_degrees=_optional_float(dataset.get("GantryDetectorTilt")),
        has_pixel_data=has_pixel_data,
    )


def _optional_int(value: object) -> Optional[int]:
    if value is None or value == "":
        return None
    return int(value)


def _optional_float(value: object) -> Optional[float]:
    if value is None or value == "":
        return None
    return float(value)


def _optional_floats(value: object, count: int) -> Optional[tuple]:
    if value is None or value == "":
        return None
    numbers = tuple(float(v) for v in value)
    if len(numbers) != count:
        raise ValueError(f"expected {count} numbers, found {len(numbers)}")
    return numbers
