"""Placing a label map file onto a DICOM series grid without changing any voxel.

A label map may store the same voxels as the series in another axis order or
direction (for example rows flipped, as some NIfTI writers do). Such a map is
moved onto the series grid exactly, by nearest-neighbour resampling at voxel
centres that coincide. A map whose voxel centres do not coincide with the
series' is rejected: interpolating labels would change them.

This module imports no torch.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

# Voxel centres closer than this fraction of a voxel count as the same point.
INDEX_TOLERANCE_VOXELS = 1e-3


def labels_on_series_grid(label_image: sitk.Image, series_image: sitk.Image, label_name: str) -> np.ndarray:
    """Return the label voxels on ``series_image``'s grid as an array ``(K, J, I)``.

    Raises:
        InputError: the label map is not 3-D with integer voxels, or its voxel
            centres do not coincide with the series' (another grid or extent).
    """
    if label_image.GetDimension() != 3 or label_image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{label_name} is not a 3-D single-channel label map; pass a label map on the series grid")
    array_type = sitk.GetArrayViewFromImage(label_image).dtype
    if not np.issubdtype(array_type, np.integer):
        raise InputError(f"{label_name} has {array_type} voxels; a label map needs integer label values")

    # Affine map from series IJK to label IJK: label_index = matrix @ series_index + offset.
    series_direction = np.array(series_image.GetDirection()).reshape(3, 3)
    label_direction = np.array(label_image.GetDirection()).reshape(3, 3)
    matrix = np.diag(1 / np.array(label_image.GetSpacing())) @ label_direction.T @ series_direction @ np.diag(series_image.GetSpacing())
    offset = np.array(label_image.TransformPhysicalPointToContinuousIndex(series_image.GetOrigin()))

    is_permutation = np.allclose(np.abs(matrix), np.round(np.abs(matrix)), atol=INDEX_TOLERANCE_VOXELS) and np.allclose(
        np.abs(np.round(matrix)).sum(axis=0), 1
    )
    corners = np.array([[i, j, k] for i in (0, series_image.GetSize()[0] - 1) for j in (0, series_image.GetSize()[1] - 1) for k in (0, series_image.GetSize()[2] - 1)])
    corner_indices = corners @ matrix.T + offset
    inside = np.all(corner_indices > -INDEX_TOLERANCE_VOXELS) and np.all(
        corner_indices < np.array(label_image.GetSize()) - 1 + INDEX_TOLERANCE_VOXELS
    )
    on_centres = np.allclose(offset, np.round(offset), atol=INDEX_TOLERANCE_VOXELS)
    if not (is_permutation and inside and on_centres and label_image.GetNumberOfPixels() == series_image.GetNumberOfPixels()):
        raise InputError(
            f"the grid of {label_name} (size {label_image.GetSize()}, spacing {np.round(label_image.GetSpacing(), 4).tolist()}, "
            f"origin {np.round(label_image.GetOrigin(), 3).tolist()}) does not match the DICOM series (size "
            f"{series_image.GetSize()}, spacing {np.round(series_image.GetSpacing(), 4).tolist()}, origin "
            f"{np.round(series_image.GetOrigin(), 3).tolist()}); pass the label map computed on this series"
        )

    resampled = sitk.Resample(label_image, series_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label_image.GetPixelID())
    return sitk.GetArrayFromImage(resampled)
