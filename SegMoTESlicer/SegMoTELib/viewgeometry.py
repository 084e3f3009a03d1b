"""Mapping of Slicer slice views to volume slices, and of clicks to voxels.

Slicer describes a volume by its 4 x 4 ``IJKToRAS`` matrix and a slice view by
its ``SliceToRAS`` matrix. The first three columns of ``SliceToRAS`` are the
view's x, y and normal directions in RAS, and the last column is a point on
the slice plane.
The Red, Yellow and Green views can each show any orientation, so the patient
view name sent to the backend comes from the slice normal, not from the view's
colour.

This module builds on :class:`segmote.geometry.Grid` and imports neither slicer,
Qt nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from segmote.errors import InputError
from segmote.geometry import Grid, lps_to_ras, ras_to_lps

# A slice view whose normal is more than this angle away from a volume axis is
# oblique to the volume. At 0.5 degrees a point 100 mm from the slice centre
# lies 0.87 mm off the plane, less than half of a typical 2 mm CT slice, so the
# whole visible plane still maps to one voxel slice.
SLICE_ALIGNMENT_TOLERANCE_DEGREES = 0.5

# RAS <-> LPS for direction vectors and matrices (flip x and y).
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])


class ObliqueViewError(InputError):
    """The slice view is not aligned with any axis of the volume."""


@dataclass(frozen=True)
class ViewPlane:
    """One voxel slice of a volume as shown in a slice view.

    Attributes:
        view: patient view name sent to the backend (``axial``, ``coronal`` or
            ``sagittal``): the view whose volume axis is normal to this slice.
        axis_ijk: ITK axis normal to the slice (0 = i, 1 = j, 2 = k).
        slice_index: voxel index of the slice along ``axis_ijk``.
        angle_degrees: angle between the slice normal and that volume axis.
    """

    view: str
    axis_ijk: int
    slice_index: int
    angle_degrees: float

    @property
    def numpy_axis(self) -> int:
        """Axis of a numpy ``(K, J, I)`` array normal to the slice."""
        return 2 - self.axis_ijk


def grid_from_ijk_to_ras(ijk_to_ras: np.ndarray | Sequence[Sequence[float]], shape_kji: Sequence[int]) -> Grid:
    """Build the LPS :class:`Grid` of a Slicer volume from its 4 x 4 IJKToRAS matrix.

    Args:
        ijk_to_ras: 4 x 4 matrix mapping homogeneous IJK indices to RAS millimetres.
        shape_kji: numpy array shape ``(K, J, I)`` of the volume.

    Raises:
        InputError: the matrix is not 4 x 4 or its axes are not orthogonal.
    """
    matrix = np.asarray(ijk_to_ras, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise InputError(f"invalid IJKToRAS matrix of shape {matrix.shape}: expected 4 x 4")
    axes_ras = matrix[:3, :3]
    spacing = np.linalg.norm(axes_ras, axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"invalid IJKToRAS matrix {matrix.tolist()}: an axis has zero length")
    direction_lps = RAS_FROM_LPS @ (axes_ras / spacing)
    origin_lps = ras_to_lps(matrix[:3, 3])
    return Grid.create(shape_kji, origin_lps, spacing, direction_lps)


def ijk_to_ras_matrix(grid: Grid) -> np.ndarray:
    """Return the 4 x 4 IJKToRAS matrix of ``grid``, as Slicer's volume nodes store it."""
    matrix = np.eye(4)
    matrix[:3, :3] = RAS_FROM_LPS @ grid.direction * np.asarray(grid.spacing_ijk)
    matrix[:3, 3] = lps_to_ras(np.asarray(grid.origin_lps))
    return matrix


def ras_to_ijk(grid: Grid, points_ras: np.ndarray) -> np.ndarray:
    """Map RAS points ``(..., 3)`` (mm) to continuous IJK indices ``(..., 3)``."""
    return grid.to_ijk(np.asarray(points_ras, dtype=np.float64), "RAS")


def ijk_to_ras(grid: Grid, points_ijk: np.ndarray) -> np.ndarray:
    """Map continuous IJK indices ``(..., 3)`` to RAS points ``(..., 3)`` (mm)."""
    return lps_to_ras(grid.ijk_to_lps(np.asarray(points_ijk, dtype=np.float64)))


def view_plane(slice_to_ras: np.ndarray | Sequence[Sequence[float]], grid: Grid) -> ViewPlane:
    """Return the volume slice that a slice view shows.

    Args:
        slice_to_ras: the view's 4 x 4 SliceToRAS matrix (column 2 is the slice
            normal in RAS, column 3 a point of the slice plane in RAS mm).
        grid: the volume's grid.

    Raises:
        ObliqueViewError: the view is rotated against every volume axis by more
            than :data:`SLICE_ALIGNMENT_TOLERANCE_DEGREES`.
        InputError: the slice plane lies outside the volume.
    """
    matrix = np.asarray(slice_to_ras, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise InputError(f"invalid SliceToRAS matrix of shape {matrix.shape}: expected 4 x 4")

    # Find the volume axis most parallel to the slice normal.
    normal_lps = ras_to_lps(matrix[:3, 2])
    normal_lps = normal_lps / np.linalg.norm(normal_lps)
    cosines = np.abs(grid.direction.T @ normal_lps)
    axis_ijk = int(np.argmax(cosines))
    angle = float(np.degrees(np.arccos(min(1.0, cosines[axis_ijk]))))
    if angle > SLICE_ALIGNMENT_TOLERANCE_DEGREES:
        raise ObliqueViewError(
            f"the slice view is rotated {angle:.1f} degrees against the volume's axes: align the view with "
            "the volume (slice view menu: 'Rotate to volume plane') and place the prompt again"
        )

    # Snap the plane's position to the nearest voxel slice.
    position = ras_to_ijk(grid, matrix[:3, 3])[axis_ijk]
    index = int(np.floor(position + 0.5))
    count = grid.size_ijk[axis_ijk]
    if not 0 <= index < count:
        raise InputError(
            f"the slice view shows a plane outside the volume (slice {index}, valid 0 to {count - 1}): "
            "move the slice into the volume"
        )

    view = {axis: name for name, axis in grid.view_axes().items()}[axis_ijk]
    return ViewPlane(view=view, axis_ijk=axis_ijk, slice_index=index, angle_degrees=angle)


def voxel_of_point(grid: Grid, point_ras: Sequence[float]) -> tuple[int, int, int]:
    """Return the IJK index of the voxel that contains a RAS point.

    Raises:
        InputError: the point lies outside the volume.
    """
    ijk = np.floor(ras_to_ijk(grid, np.asarray(point_ras, dtype=np.float64)) + 0.5).astype(int)
    size = np.asarray(grid.size_ijk)
    if np.any(ijk < 0) or np.any(ijk >= size):
        raise InputError(
            f"the point at RAS {tuple(round(float(v), 1) for v in point_ras)} mm lies outside the volume: "
            "place it on the image"
        )
    return (int(ijk[0]), int(ijk[1]), int(ijk[2]))


def snap_to_plane(grid: Grid, plane: ViewPlane, points_ras: np.ndarray) -> np.ndarray:
    """Move RAS points ``(N, 3)`` onto the centre of the plane's voxel slice, keeping their in-plane position."""
    ijk = ras_to_ijk(grid, np.asarray(points_ras, dtype=np.float64).reshape(-1, 3))
    ijk[:, plane.axis_ijk] = plane.slice_index
    return ijk_to_ras(grid, ijk)


def views_containing_point(
    slice_to_ras_by_view: dict[str, np.ndarray], point_ras: Sequence[float], tolerance_mm: float
) -> list[str]:
    """Return the names of the slice views whose plane passes within ``tolerance_mm`` of a RAS point.

    Used to find the view a markup was placed in when Slicer did not record it.
    """
    point = np.asarray(point_ras, dtype=np.float64)
    names = []
    for name, slice_to_ras in slice_to_ras_by_view.items():
        matrix = np.asarray(slice_to_ras, dtype=np.float64)
        normal = matrix[:3, 2] / np.linalg.norm(matrix[:3, 2])
        if abs(float(normal @ (point - matrix[:3, 3]))) <= tolerance_mm:
            names.append(name)
    return names
