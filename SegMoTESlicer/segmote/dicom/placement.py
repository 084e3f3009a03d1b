"""Slice order and volume geometry of a single-frame DICOM series, from its headers alone.

The geometry is what the DICOM attributes imply (LPS millimetres):

- the i axis runs along the row direction (first three ImageOrientationPatient
  values) with the column spacing (second PixelSpacing value);
- the j axis runs along the column direction (last three ImageOrientationPatient
  values) with the row spacing (first PixelSpacing value);
- the k axis is the slice normal ``row x column``; slices are sorted by
  ``ImagePositionPatient . normal`` and spaced by the median step between them;
- the origin is the ImagePositionPatient of the first sorted slice.

Series that this grid cannot describe exactly raise :class:`InputError`: mixed
orientations, sizes or pixel spacings, uneven slice steps (a missing slice),
two slices at one position, and slices sheared off the normal (gantry tilt).

This module imports no torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .scan import InstanceHeader

logger = logging.getLogger(__name__)

# Direction cosines of two slices that differ by less than this count as equal.
# 1e-4 is an angle of about 0.006 degrees, and files store them with 6 or more digits.
ORIENTATION_TOLERANCE = 1e-4

# Pixel spacings that differ by less than this fraction count as equal.
PIXEL_SPACING_RELATIVE_TOLERANCE = 1e-4

# A slice step that differs from the median step by more than this fraction
# marks a missing or extra slice.
SLICE_STEP_RELATIVE_TOLERANCE = 0.1

# A slice position may sit this fraction of the smaller pixel spacing off the
# line along the normal through the first slice. A larger offset is shear.
SHEAR_TOLERANCE_PIXELS = 0.1

# Slice spacing used for a single-slice series without SliceThickness (mm).
DEFAULT_SINGLE_SLICE_SPACING_MM = 1.0


@dataclass
class SeriesGeometry:
    """Placement of a series: its instance headers in slice order and the grid they imply.

    Attributes:
        headers: instance headers sorted along the slice normal (index = k).
        origin_lps: LPS position (mm) of voxel ``ijk = (0, 0, 0)``.
        spacing_ijk: voxel size (mm) along i, j, k.
        direction_lps: 3 x 3 matrix whose columns are the i, j, k unit vectors in LPS.
    """

    headers: list[InstanceHeader]
    origin_lps: tuple[float, float, float]
    spacing_ijk: tuple[float, float, float]
    direction_lps: np.ndarray


def place_slices(headers: list[InstanceHeader], series_name: str) -> SeriesGeometry:
    """Sort the instances of one series along the slice normal and derive their grid.

    Args:
        headers: the image instances of one series (at least one), any order.
        series_name: how messages name the series (UID and number).

    Raises:
        InputError: the series cannot be represented as one regular 3-D grid.
    """
    _check_same_image_size(headers, series_name)
    if any(h.position_lps is None or h.orientation_lps is None for h in headers):
        if len(headers) > 1:
            missing = next(h for h in headers if h.position_lps is None or h.orientation_lps is None)
            raise InputError(
                f"{missing.path} in series {series_name} has no ImagePositionPatient or ImageOrientationPatient, "
                "so its slices cannot be ordered; read a series that has them, or pass a single file instead"
            )
        return _single_image_without_position(headers[0])

    row_direction, column_direction = _check_same_orientation(headers, series_name)
    normal = np.cross(row_direction, column_direction)
    pixel_spacing = _check_same_pixel_spacing(headers, series_name)

    # Sort by position along the normal, never by file name or InstanceNumber.
    positions = np.array([h.position_lps for h in headers], dtype=np.float64)
    distances = positions @ normal
    order = np.argsort(distances, kind="stable")
    headers = [headers[index] for index in order]
    positions = positions[order]
    distances = distances[order]

    _check_no_shear(headers, positions, normal, min(pixel_spacing), series_name)
    slice_spacing = _check_even_steps(headers, distances, series_name)

    direction = np.column_stack([row_direction, column_direction, normal])
    spacing = (pixel_spacing[1], pixel_spacing[0], slice_spacing)
    origin = tuple(float(x) for x in positions[0])
    return SeriesGeometry(headers, origin, spacing, direction)


def _single_image_without_position(header: InstanceHeader) -> SeriesGeometry:
    """Place a lone image without patient position (projection X-ray, photo) on an identity grid."""
    spacing = header.pixel_spacing or (1.0, 1.0)
    logger.warning(
        "%s has no ImagePositionPatient/ImageOrientationPatient: using origin 0 and identity direction", header.path
    )
    return SeriesGeometry([header], (0.0, 0.0, 0.0), (spacing[1], spacing[0], DEFAULT_SINGLE_SLICE_SPACING_MM), np.eye(3))


def _check_same_image_size(headers: list[InstanceHeader], series_name: str) -> None:
    sizes = sorted({(h.rows, h.columns) for h in headers})
    if len(sizes) > 1:
        raise InputError(
            f"series {series_name} mixes image sizes {sizes} (rows, columns); it is not one volume: "
            "split it into series of equal size before reading"
        )
    multi_frame = [h for h in headers if h.frames > 1]
    if multi_frame:
        raise InputError(
            f"{multi_frame[0].path} in series {series_name} is a multi-frame image ({multi_frame[0].frames} frames); "
            "SegMoTE reads series of single-frame images: convert it to single-frame files (for example with "
            "dcmtk's dcmsplit or Slicer's DICOM export) first"
        )


def _check_same_orientation(headers: list[InstanceHeader], series_name: str) -> tuple[np.ndarray, np.ndarray]:
    reference = np.asarray(headers[0].orientation_lps, dtype=np.float64)
    for header in headers[1:]:
        if np.max(np.abs(np.asarray(header.orientation_lps) - reference)) > ORIENTATION_TOLERANCE:
            raise InputError(
                f"inconsistent orientation in series {series_name}: {headers[0].path.name} has "
                f"ImageOrientationPatient {list(headers[0].orientation_lps)} but {header.path.name} has "
                f"{list(header.orientation_lps)}; read one orientation at a time (split the series, or pick "
                "another with --series)"
            )
    row_direction, column_direction = reference[:3], reference[3:]
    row_norm, column_norm = np.linalg.norm(row_direction), np.linalg.norm(column_direction)
    if abs(row_norm - 1.0) > 1e-3 or abs(column_norm - 1.0) > 1e-3 or abs(row_direction @ column_direction) > 1e-3:
        raise InputError(
            f"invalid ImageOrientationPatient {list(reference)} in series {series_name}: the row and column "
            "directions must be orthogonal unit vectors; correct the files' headers"
        )
    return row_direction / row_norm, column_direction / column_norm


def _check_same_pixel_spacing(headers: list[InstanceHeader], series_name: str) -> tuple[float, float]:
    if headers[0].pixel_spacing is None:
        logger.warning("Series %s has no PixelSpacing: assuming 1 mm pixels", series_name)
    reference = np.asarray(headers[0].pixel_spacing or (1.0, 1.0), dtype=np.float64)
    if np.any(reference <= 0):
        raise InputError(f"invalid PixelSpacing {list(reference)} in series {series_name}: expected positive numbers")
    for header in headers[1:]:
        spacing = np.asarray(header.pixel_spacing or (1.0, 1.0), dtype=np.float64)
        if np.max(np.abs(spacing - reference) / reference) > PIXEL_SPACING_RELATIVE_TOLERANCE:
            raise InputError(
                f"inconsistent pixel spacing in series {series_name}: {headers[0].path.name} has PixelSpacing "
                f"{list(reference)} but {header.path.name} has {list(spacing)}; read one resolution at a time "
                "(split the series, or pick another with --series)"
            )
    return float(reference[0]), float(reference[1])


def _check_no_shear(
    headers: list[InstanceHeader], positions: np.ndarray, normal: np.ndarray, min_pixel_mm: float, series_name: str
) -> None:
    """Reject slices whose positions drift sideways from the normal (a gantry-tilted or sheared stack)."""
    offsets = positions - positions[0]
    sideways = offsets - np.outer(offsets @ normal, normal)
    drift = np.linalg.norm(sideways, axis=1)
    worst = int(np.argmax(drift))
    if drift[worst] <= SHEAR_TOLERANCE_PIXELS * min_pixel_mm:
        return
    along = abs(float(offsets[worst] @ normal))
    angle = float(np.degrees(np.arctan2(drift[worst], along))) if along > 0 else 90.0
    tilt = headers[0].gantry_tilt_degrees
    cause = f"gantry tilt {tilt:g} degrees" if tilt else "sheared slice positions"
    raise InputError(
        f"series {series_name} has {cause}: slice positions drift {drift[worst]:.2f} mm sideways "
        f"({angle:.1f} degrees off the slice normal) at {headers[worst].path.name}; gantry-tilted (sheared) "
        "series are not supported: resample the series onto a rectangular grid first (for example with "
        "Slicer's DICOM import, which corrects gantry tilt)"
    )


def _check_even_steps(headers: list[InstanceHeader], distances: np.ndarray, series_name: str) -> float:
    """Return the slice spacing, after checking that all steps between slices are equal."""
    if len(headers) == 1:
        return headers[0].slice_thickness or DEFAULT_SINGLE_SLICE_SPACING_MM
    steps = np.diff(distances)
    median_step = float(np.median(steps))
    if median_step <= 0 or np.min(steps) <= SLICE_STEP_RELATIVE_TOLERANCE * median_step:
        index = int(np.argmin(steps))
        raise InputError(
            f"series {series_name} has two slices at one position ({headers[index].path.name} and "
            f"{headers[index + 1].path.name}); it mixes several acquisitions or phases: split them "
            "into separate series before reading"
        )
    deviation = np.abs(steps - median_step)
    index = int(np.argmax(deviation))
    if deviation[index] > SLICE_STEP_RELATIVE_TOLERANCE * median_step:
        raise InputError(
            f"inconsistent slice spacing in series {series_name}: the step between {headers[index].path.name} "
            f"and {headers[index + 1].path.name} is {steps[index]:.3f} mm, the others {median_step:.3f} mm "
            "(a missing or extra slice?); read a complete series with even spacing"
        )
    return median_step
