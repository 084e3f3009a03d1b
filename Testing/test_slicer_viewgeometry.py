"""Slice views to volume slices and clicks to voxels, on the real DICOM CT and re-oriented copies of it.

Each copy is made with SimpleITK (axes permuted or flipped, direction matrix
and origin updated so every voxel keeps its physical position). A click given
as a RAS position in a view with Slicer's SliceToRAS presets must land on the
voxel that SimpleITK finds for the same physical point, in every copy.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from segmote.engine.volume import grid_of, read_volume, to_sitk
from segmote.errors import InputError
from segmote.geometry import Grid, lps_to_ras, ras_to_lps
from SegMoTELib.viewgeometry import (
    ObliqueViewError,
    grid_from_ijk_to_ras,
    ijk_to_ras_matrix,
    snap_to_plane,
    view_plane,
    voxel_of_point,
)

# Slicer's slice orientation presets (vtkMRMLSliceNode, patient right on screen left):
# columns are the view's x, y and normal directions in RAS.
SLICE_ROTATIONS_RAS = {
    "axial": np.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
    "sagittal": np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
    "coronal": np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]),
}

# Slicer's default layout shows these planes; each view can show any of them.
VIEW_ORIENTATIONS = [
    ("Red", "axial"),
    ("Yellow", "sagittal"),
    ("Green", "coronal"),
    ("Red", "sagittal"),
    ("Yellow", "coronal"),
    ("Green", "axial"),
]

# (permutation of ITK axes, flips) for the re-oriented copies.
REORIENTATIONS = {
    "original": ((0, 1, 2), (False, False, False)),
    "permuted": ((2, 0, 1), (False, False, False)),
    "flipped": ((0, 1, 2), (True, False, True)),
    "permuted_flipped": ((1, 2, 0), (False, True, True)),
}

# Voxel (i, j, k) of the original crop used as the click target, and its neighbour.
TARGET_IJK = (37, 61, 7)


@pytest.fixture(scope="module")
def ct_crop(shared_data) -> sitk.Image:
    """A 120 x 100 x 20 crop of the real DICOM CT (abdomen, 0.98 x 0.98 x 2 mm)."""
    volume = read_volume(shared_data / "ct_abdomen_dicom" / "series")
    image = to_sitk(volume.array, volume.grid)
    return image[180:300, 200:300, :]


def reoriented(image: sitk.Image, name: str) -> sitk.Image:
    permutation, flips = REORIENTATIONS[name]
    result = sitk.PermuteAxes(image, list(permutation))
    return sitk.Flip(result, list(flips))


def slice_to_ras(orientation: str, point_ras: np.ndarray) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = SLICE_ROTATIONS_RAS[orientation]
    matrix[:3, 3] = point_ras
    return matrix


def rotation_about(axis: int, degrees: float) -> np.ndarray:
    angle = np.radians(degrees)
    cosine, sine = np.cos(angle), np.sin(angle)
    a, b = [index for index in range(3) if index != axis]
    rotation = np.eye(3)
    rotation[a, a], rotation[a, b], rotation[b, a], rotation[b, b] = cosine, -sine, sine, cosine
    return rotation


@pytest.mark.parametrize("copy_name", list(REORIENTATIONS))
def test_ijk_to_ras_round_trip(ct_crop, copy_name):
    image = reoriented(ct_crop, copy_name)
    grid = grid_of(image)

    rebuilt = grid_from_ijk_to_ras(ijk_to_ras_matrix(grid), grid.shape_kji)

    assert rebuilt.shape_kji == grid.shape_kji
    np.testing.assert_allclose(rebuilt.origin_lps, grid.origin_lps, atol=1e-9)
    np.testing.assert_allclose(rebuilt.spacing_ijk, grid.spacing_ijk, atol=1e-9)
    np.testing.assert_allclose(rebuilt.direction, grid.direction, atol=1e-12)
    # Slicer's IJKToRAS maps voxel (0, 0, 0) to the RAS origin, i.e. LPS with x and y negated.
    np.testing.assert_allclose(ijk_to_ras_matrix(grid)[:3, 3], lps_to_ras(np.array(image.GetOrigin())))


@pytest.mark.parametrize("copy_name", list(REORIENTATIONS))
@pytest.mark.parametrize("view_colour,orientation", VIEW_ORIENTATIONS)
def test_click_in_view_maps_to_voxel(ct_crop, copy_name, view_colour, orientation):
    target_lps = np.array(ct_crop.TransformIndexToPhysicalPoint(TARGET_IJK))
    expected_value = ct_crop[TARGET_IJK]
    image = reoriented(ct_crop, copy_name)
    grid = grid_of(image)
    array = sitk.GetArrayFromImage(image)  # (K, J, I)
    target_ras = lps_to_ras(target_lps)

    # The view's plane passes 0.3 slice spacings off the voxel centre; the click
    # is 0.3 pixel off the centre along both in-plane axes.
    rotation = SLICE_ROTATIONS_RAS[orientation]
    plane_point = target_ras + 0.3 * 0.9 * rotation[:, 2]
    click_ras = target_ras + 0.3 * 0.97 * rotation[:, 0] - 0.3 * 0.97 * rotation[:, 1] + 0.3 * 0.9 * rotation[:, 2]

    plane = view_plane(slice_to_ras(orientation, plane_point), grid)
    ijk = voxel_of_point(grid, click_ras)

    expected_ijk = image.TransformPhysicalPointToIndex(tuple(target_lps))
    assert plane.view == orientation, f"{view_colour} view showing {orientation}"
    assert ijk == tuple(expected_ijk)
    assert plane.slice_index == expected_ijk[plane.axis_ijk]
    assert array[ijk[2], ijk[1], ijk[0]] == expected_value


@pytest.mark.parametrize("copy_name", ["original", "permuted_flipped"])
def test_neighbour_click_maps_to_other_voxel(ct_crop, copy_name):
    """Negative control: a click one voxel further along i lands on another voxel."""
    image = reoriented(ct_crop, copy_name)
    grid = grid_of(image)
    target = np.array(TARGET_IJK)
    neighbour = target + np.array([1, 0, 0])
    click_ras = lps_to_ras(np.array(ct_crop.TransformIndexToPhysicalPoint(tuple(int(v) for v in neighbour))))

    ijk = voxel_of_point(grid, click_ras)

    assert ijk != tuple(image.TransformPhysicalPointToIndex(ct_crop.TransformIndexToPhysicalPoint(TARGET_IJK)))
    assert ijk == tuple(image.TransformPhysicalPointToIndex(ct_crop.TransformIndexToPhysicalPoint(tuple(int(v) for v in neighbour))))


@pytest.mark.parametrize("degrees", [2.0, 15.0, 45.0])
def test_rotated_view_is_oblique(ct_crop, degrees):
    grid = grid_of(ct_crop)
    centre_ras = lps_to_ras(np.array(ct_crop.TransformIndexToPhysicalPoint(TARGET_IJK)))
    matrix = slice_to_ras("axial", centre_ras)
    matrix[:3, :3] = rotation_about(0, degrees) @ matrix[:3, :3]

    with pytest.raises(ObliqueViewError, match="Rotate to volume plane"):
        view_plane(matrix, grid)


def test_nearly_aligned_view_is_accepted(ct_crop):
    grid = grid_of(ct_crop)
    centre_ras = lps_to_ras(np.array(ct_crop.TransformIndexToPhysicalPoint(TARGET_IJK)))
    matrix = slice_to_ras("coronal", centre_ras)
    matrix[:3, :3] = rotation_about(2, 0.2) @ matrix[:3, :3]

    plane = view_plane(matrix, grid)

    assert plane.view == "coronal"
    assert plane.angle_degrees == pytest.approx(0.2, abs=1e-6)


def test_oblique_volume_needs_view_rotated_to_it(ct_crop):
    """A volume tilted 20 degrees about L: the standard axial view is oblique, a view on the volume's axes is not."""
    base = grid_of(ct_crop)
    tilt = rotation_about(0, 20.0)
    grid = Grid.create(base.shape_kji, base.origin_lps, base.spacing_ijk, tilt @ base.direction)
    centre_ijk = np.array([60.0, 50.0, 10.0])
    centre_ras = lps_to_ras(grid.ijk_to_lps(centre_ijk))

    with pytest.raises(ObliqueViewError):
        view_plane(slice_to_ras("axial", centre_ras), grid)

    # "Rotate to volume plane": the view's axes follow the volume's i, j, k axes.
    aligned = np.eye(4)
    aligned[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ grid.direction
    aligned[:3, 3] = centre_ras
    plane = view_plane(aligned, grid)
    assert plane.view == "axial"
    assert plane.axis_ijk == 2
    assert plane.slice_index == 10


def test_plane_outside_volume_is_rejected(ct_crop):
    grid = grid_of(ct_crop)
    outside_ras = lps_to_ras(grid.ijk_to_lps(np.array([60.0, 50.0, 25.0])))

    with pytest.raises(InputError, match="outside the volume"):
        view_plane(slice_to_ras("axial", outside_ras), grid)


def test_click_outside_volume_is_rejected(ct_crop):
    grid = grid_of(ct_crop)
    outside_ras = lps_to_ras(grid.ijk_to_lps(np.array([-3.0, 50.0, 5.0])))

    with pytest.raises(InputError, match="outside the volume"):
        voxel_of_point(grid, outside_ras)


@pytest.mark.parametrize("copy_name", list(REORIENTATIONS))
def test_snap_moves_points_onto_slice_centre(ct_crop, copy_name):
    image = reoriented(ct_crop, copy_name)
    grid = grid_of(image)
    centre_ras = lps_to_ras(np.array(ct_crop.TransformIndexToPhysicalPoint(TARGET_IJK)))
    plane = view_plane(slice_to_ras("sagittal", centre_ras), grid)
    points_ras = centre_ras + np.array([[0.4, 5.0, -3.0], [-0.3, -7.5, 12.0]])

    snapped = snap_to_plane(grid, plane, points_ras)

    snapped_ijk = grid.to_ijk(snapped, "RAS")
    np.testing.assert_allclose(snapped_ijk[:, plane.axis_ijk], plane.slice_index, atol=1e-9)
    original_ijk = grid.to_ijk(points_ras, "RAS")
    in_plane = [axis for axis in range(3) if axis != plane.axis_ijk]
    np.testing.assert_allclose(snapped_ijk[:, in_plane], original_ijk[:, in_plane], atol=1e-9)
    # The sagittal normal is the patient's L-R axis: only the R coordinate changes.
    np.testing.assert_allclose(snapped[:, 1:], points_ras[:, 1:], atol=1e-9)
    assert ras_to_lps(snapped).shape == (2, 3)
