"""Voxel grids, patient coordinates and slices in patient space.

Frames used throughout the project:

- ``IJK``: 0-based voxel index in ITK/Slicer order, i = column (fastest in
  memory), j = row, k = slice. A numpy volume array is indexed ``[k, j, i]``.
- ``LPS``: ITK's patient space in millimetres (x to the patient's left, y to
  posterior, z to superior).
- ``RAS``: Slicer's patient space, ``RAS = (-L, -P, S)``.

A :class:`Grid` maps IJK to LPS with ``lps = origin + direction @ (spacing * ijk)``,
where the columns of ``direction`` are the unit vectors of the i, j and k axes.

A :class:`SliceGeometry` picks one slice of a volume for a patient plane
(axial, coronal, sagittal) and fixes the in-plane orientation of the model
input, whatever the volume's axis order and direction matrix:

- axial: columns run to the patient's left (+L), rows to posterior (+P);
- coronal: columns run to +L, rows from superior to inferior (-S);
- sagittal: columns run to posterior (+P), rows from superior to inferior (-S).

This module imports neither torch nor SimpleITK, so that the Slicer module and
the HTTP client can use it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import InputError

VIEWS = ("axial", "coronal", "sagittal")
COORDINATE_SYSTEMS = ("RAS", "LPS", "IJK")

# Patient axis (index into LPS) that each view's slices are normal to.
VIEW_NORMAL_LPS_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}

# In-plane display directions in LPS: (column direction, row direction).
VIEW_IN_PLANE_LPS = {
    "axial": (np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])),
    "coronal": (np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])),
    "sagittal": (np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])),
}

# A volume axis more than this many degrees away from the patient axis of its
# view is reported as oblique (the view still snaps to it).
OBLIQUE_WARNING_DEGREES = 10.0


class GeometryError(InputError):
    """Invalid geometry, coordinate system, view or prompt position."""


def ras_to_lps(points_ras: np.ndarray) -> np.ndarray:
    """Convert points ``(..., 3)`` from RAS to LPS millimetres."""
    points = np.asarray(points_ras, dtype=np.float64)
    return points * np.array([-1.0, -1.0, 1.0])


lps_to_ras = ras_to_lps  # The same sign flip converts in both directions.


@dataclass(frozen=True)
class Grid:
    """A voxel grid in patient space.

    Attributes:
        shape_kji: array shape in numpy order ``(K, J, I)``.
        origin_lps: LPS position (mm) of voxel ``ijk = (0, 0, 0)``.
        spacing_ijk: voxel size (mm) along i, j, k.
        direction_lps: 3 x 3 matrix whose columns are the i, j, k unit vectors in LPS.
    """

    shape_kji: tuple[int, int, int]
    origin_lps: tuple[float, float, float]
    spacing_ijk: tuple[float, float, float]
    direction_lps: tuple[tuple[float, float, float], ...]

    @staticmethod
    def create(
        shape_kji: Sequence[int],
        origin_lps: Sequence[float],
        spacing_ijk: Sequence[float],
        direction_lps: Sequence[float] | np.ndarray,
    ) -> "Grid":
        """Build a grid, checking shapes and values.

        ``direction_lps`` is a 3 x 3 matrix or ITK's flat row-major 9-tuple.
        """
        shape = tuple(int(n) for n in shape_kji)
        if len(shape) != 3 or min(shape) < 1:
            raise GeometryError(f"invalid grid shape {shape}: expected three positive sizes (K, J, I)")
        origin = tuple(float(x) for x in origin_lps)
        spacing = tuple(float(x) for x in spacing_ijk)
        if len(origin) != 3 or not np.all(np.isfinite(origin)):
            raise GeometryError(f"invalid origin {origin}: expected three finite numbers (mm)")
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise GeometryError(f"invalid spacing {spacing}: expected three positive numbers (mm)")
        matrix = np.asarray(direction_lps, dtype=np.float64).reshape(3, 3)
        if not np.all(np.isfinite(matrix)) or abs(abs(np.linalg.det(matrix)) - 1.0) > 1e-3:
            raise GeometryError(
                f"invalid direction matrix {matrix.tolist()}: expected an orthonormal 3 x 3 matrix"
            )
        direction = tuple(tuple(float(v) for v in row) for row in matrix)
        return Grid(shape, origin, spacing, direction)

    @property
    def direction(self) -> np.ndarray:
        """Direction matrix, 3 x 3, columns = i, j, k unit vectors in LPS."""
        return np.array(self.direction_lps, dtype=np.float64)

    @property
    def size_ijk(self) -> tuple[int, int, int]:
        """Grid size in ITK order (I, J, K)."""
        k, j, i = self.shape_kji
        return (i, j, k)

    def ijk_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """Map continuous IJK indices ``(..., 3)`` to LPS millimetres."""
        ijk = np.asarray(ijk, dtype=np.float64)
        scaled = ijk * np.asarray(self.spacing_ijk)
        return scaled @ self.direction.T + np.asarray(self.origin_lps)

    def lps_to_ijk(self, lps: np.ndarray) -> np.ndarray:
        """Map LPS millimetres ``(..., 3)`` to continuous IJK indices."""
        lps = np.asarray(lps, dtype=np.float64)
        offset = lps - np.asarray(self.origin_lps)
        return (offset @ self.direction) / np.asarray(self.spacing_ijk)

    def to_ijk(self, points: np.ndarray, coordinate_system: str) -> np.ndarray:
        """Map points ``(..., 3)`` given in ``RAS``, ``LPS`` or ``IJK`` to continuous IJK."""
        system = coordinate_system.upper()
        if system == "IJK":
            return np.asarray(points, dtype=np.float64)
        if system == "LPS":
            return self.lps_to_ijk(points)
        if system == "RAS":
            return self.lps_to_ijk(ras_to_lps(points))
        raise GeometryError(
            f"unknown coordinate system {coordinate_system!r}: use one of {', '.join(COORDINATE_SYSTEMS)}"
        )

    def view_axes(self) -> dict[str, int]:
        """Return, for each view, the ITK axis (0 = i, 1 = j, 2 = k) normal to its slices.

        Each view gets the volume axis closest to its patient axis; the three
        views always get three different axes, also for oblique volumes.
        """
        alignment = np.abs(self.direction)  # [lps_axis, ijk_axis]
        best_score = -1.0
        best: tuple[int, int, int] = (0, 1, 2)
        for permutation in itertools.permutations(range(3)):
            # permutation[lps_axis] = ijk axis assigned to that patient axis
            score = sum(alignment[lps_axis, permutation[lps_axis]] for lps_axis in range(3))
            if score > best_score + 1e-9:
                best_score, best = score, permutation
        return {view: best[lps_axis] for view, lps_axis in VIEW_NORMAL_LPS_AXIS.items()}

    def obliquity_degrees(self, view: str) -> float:
        """Return the angle (degrees) between the view's patient axis and its volume axis."""
        axis_ijk = self.view_axes()[check_view(view)]
        patient_axis = VIEW_NORMAL_LPS_AXIS[view]
        cosine = min(1.0, abs(self.direction[patient_axis, axis_ijk]))
        return float(np.degrees(np.arccos(cosine)))


def check_view(view: str) -> str:
    """Return ``view`` in lower case, or raise :class:`GeometryError` naming the valid views."""
    name = str(view).lower()
    if name not in VIEWS:
        raise GeometryError(f"unknown view {view!r}: use one of {', '.join(VIEWS)}")
    return name


@dataclass(frozen=True)
class SliceGeometry:
    """One slice of a volume, in the in-plane orientation of the model input.

    The 2-D slice ``S`` with shape ``(R, C)`` relates to the volume array ``V``
    (numpy order ``(K, J, I)``) by ``S[r, c] = V[...]`` where the normal axis is
    fixed at ``index``, numpy axis ``row_axis`` runs along ``r`` (reversed when
    ``row_flip``) and numpy axis ``col_axis`` along ``c`` (reversed when ``col_flip``).

    Attributes:
        view: ``axial``, ``coronal`` or ``sagittal``.
        normal_axis: numpy axis (0 = k, 1 = j, 2 = i) normal to the slice.
        index: position of the slice along ``normal_axis``.
        row_axis, col_axis: numpy axes shown along rows and columns.
        row_flip, col_flip: whether those axes run backwards in the slice.
        shape_rc: slice shape ``(R, C)``.
        spacing_rc: pixel size (mm) along rows and columns.
    """

    view: str
    normal_axis: int
    index: int
    row_axis: int
    row_flip: bool
    col_axis: int
    col_flip: bool
    shape_rc: tuple[int, int]
    spacing_rc: tuple[float, float]

    @staticmethod
    def for_view(grid: Grid, view: str, index: int) -> "SliceGeometry":
        """Build the slice of ``grid`` at ``index`` along the volume axis of ``view``."""
        view = check_view(view)
        direction = grid.direction
        normal_ijk = grid.view_axes()[view]
        in_plane_ijk = [axis for axis in range(3) if axis != normal_ijk]
        col_lps, row_lps = VIEW_IN_PLANE_LPS[view]

        # Assign the in-plane volume axes to columns and rows by alignment.
        col_scores = [abs(direction[:, axis] @ col_lps) for axis in in_plane_ijk]
        row_scores = [abs(direction[:, axis] @ row_lps) for axis in in_plane_ijk]
        if col_scores[0] + row_scores[1] >= col_scores[1] + row_scores[0]:
            col_ijk, row_ijk = in_plane_ijk
        else:
            row_ijk, col_ijk = in_plane_ijk
        col_flip = bool(direction[:, col_ijk] @ col_lps < 0)
        row_flip = bool(direction[:, row_ijk] @ row_lps < 0)

        size_ijk = grid.size_ijk
        count = size_ijk[normal_ijk]
        if not 0 <= index < count:
            raise GeometryError(
                f"{view} slice index {index} is outside the volume (valid: 0 to {count - 1})"
            )
        return SliceGeometry(
            view=view,
            normal_axis=2 - normal_ijk,
            index=int(index),
            row_axis=2 - row_ijk,
            row_flip=row_flip,
            col_axis=2 - col_ijk,
            col_flip=col_flip,
            shape_rc=(size_ijk[row_ijk], size_ijk[col_ijk]),
            spacing_rc=(grid.spacing_ijk[row_ijk], grid.spacing_ijk[col_ijk]),
        )

    def extract(self, volume: np.ndarray) -> np.ndarray:
        """Return the slice ``(R, C, ...)`` of ``volume`` ``(K, J, I, ...)``; trailing channel axes stay."""
        plane = np.take(volume, self.index, axis=self.normal_axis)
        # Remaining axes keep their order; find where row and column ended up.
        remaining = [axis for axis in range(3) if axis != self.normal_axis]
        row_position = remaining.index(self.row_axis)
        col_position = remaining.index(self.col_axis)
        plane = np.moveaxis(plane, (row_position, col_position), (0, 1))
        if self.row_flip:
            plane = plane[::-1]
        if self.col_flip:
            plane = plane[:, ::-1]
        return np.ascontiguousarray(plane)

    def volume_index(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, ...]:
        """Map integer slice pixels to a numpy index tuple ``(k, j, i)`` into the volume."""
        rows = np.asarray(rows)
        cols = np.asarray(cols)
        R, C = self.shape_rc
        axis_values = {
            self.normal_axis: np.full(rows.shape, self.index),
            self.row_axis: (R - 1 - rows) if self.row_flip else rows,
            self.col_axis: (C - 1 - cols) if self.col_flip else cols,
        }
        return tuple(axis_values[axis] for axis in range(3))

    def insert(self, volume: np.ndarray, plane: np.ndarray) -> None:
        """Write a slice ``(R, C)`` into ``volume`` ``(K, J, I)`` in place."""
        if plane.shape[:2] != self.shape_rc:
            raise GeometryError(f"slice shape {plane.shape[:2]} does not match {self.shape_rc}")
        rows, cols = np.indices(self.shape_rc)
        volume[self.volume_index(rows, cols)] = plane

    def ijk_to_rc(self, ijk: np.ndarray) -> np.ndarray:
        """Map continuous IJK points ``(N, 3)`` to continuous slice coordinates ``(N, 2)`` as (row, col)."""
        ijk = np.asarray(ijk, dtype=np.float64).reshape(-1, 3)
        R, C = self.shape_rc
        row = ijk[:, 2 - self.row_axis]
        col = ijk[:, 2 - self.col_axis]
        if self.row_flip:
            row = (R - 1) - row
        if self.col_flip:
            col = (C - 1) - col
        return np.stack([row, col], axis=1)

    def normal_position(self, ijk: np.ndarray) -> np.ndarray:
        """Return the continuous position of IJK points ``(N, 3)`` along the normal axis."""
        return np.asarray(ijk, dtype=np.float64).reshape(-1, 3)[:, 2 - self.normal_axis]
