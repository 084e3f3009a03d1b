"""Prompt markups to the prompts JSON, on the real DICOM CT grid and a re-oriented copy."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from segmote.engine.volume import grid_of, read_volume, to_sitk
from segmote.errors import InputError
from segmote.geometry import lps_to_ras
from segmote.protocol import parse_prompts
from SegMoTELib.prompts import PromptGroup, box_corners_from_roi, markups_to_prompts
from SegMoTELib.viewgeometry import ViewPlane, view_plane

AXIAL_SLICE_TO_RAS = np.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
CORONAL_SLICE_TO_RAS = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


@pytest.fixture(scope="module")
def grids(shared_data) -> dict:
    """Grids of the real DICOM CT (512 x 512 x 20) and of a copy with permuted, flipped axes."""
    volume = read_volume(shared_data / "ct_abdomen_dicom" / "series")
    copy = sitk.Flip(sitk.PermuteAxes(to_sitk(volume.array, volume.grid), [2, 0, 1]), [True, False, False])
    return {"original": volume.grid, "permuted_flipped": grid_of(copy)}


def plane_at(grid, rotation: np.ndarray, point_ras: np.ndarray) -> ViewPlane:
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = point_ras
    return view_plane(matrix, grid)


@pytest.mark.parametrize("grid_name", ["original", "permuted_flipped"])
def test_points_and_box_become_valid_prompts(grids, grid_name):
    grid = grids[grid_name]
    centre_ras = lps_to_ras(grids["original"].ijk_to_lps(np.array([250.0, 260.0, 9.0])))
    plane = plane_at(grid, AXIAL_SLICE_TO_RAS, centre_ras + [0.0, 0.0, 0.6])
    points = [centre_ras + [5.0, 3.0, 0.7], centre_ras + [-20.0, 4.0, -0.4]]
    box = [centre_ras + [-30.0, -30.0, 0.2], centre_ras + [30.0, 25.0, 0.2]]

    prompts = markups_to_prompts("liver", plane, grid, points, [1, 0], box, propagate=True, propagate_limit=5)

    prompt_set = parse_prompts(prompts)
    segment = prompt_set.segments[0]
    assert prompt_set.coordinate_system == "RAS"
    assert segment.name == "liver"
    assert segment.view == "axial"
    assert segment.point_labels == (1, 0)
    assert segment.propagate is True
    assert segment.propagate_limit == 5
    # All positions lie on the centre of one voxel slice, in-plane positions unchanged.
    positions = np.array(list(segment.points) + list(segment.box))
    normal = grid.to_ijk(positions, "RAS")[:, plane.axis_ijk]
    np.testing.assert_allclose(normal, plane.slice_index, atol=1e-9)
    np.testing.assert_allclose(positions[:2, :2], np.array(points)[:, :2], atol=1e-9)
    np.testing.assert_allclose(positions[2:, :2], np.array(box)[:, :2], atol=1e-9)


def test_coronal_prompts_name_coronal_view(grids):
    grid = grids["original"]
    centre_ras = lps_to_ras(grid.ijk_to_lps(np.array([250.0, 260.0, 9.0])))
    plane = plane_at(grid, CORONAL_SLICE_TO_RAS, centre_ras)

    prompts = markups_to_prompts("spleen", plane, grid, [centre_ras], [1])

    assert prompts["segments"][0]["view"] == "coronal"
    assert plane.axis_ijk == 1


def test_background_points_alone_are_rejected(grids):
    grid = grids["original"]
    centre_ras = lps_to_ras(grid.ijk_to_lps(np.array([250.0, 260.0, 9.0])))
    plane = plane_at(grid, AXIAL_SLICE_TO_RAS, centre_ras)

    with pytest.raises(InputError, match="foreground"):
        markups_to_prompts("liver", plane, grid, [centre_ras], [0])
    with pytest.raises(InputError, match="no prompt"):
        markups_to_prompts("liver", plane, grid)


def test_point_outside_volume_is_rejected(grids):
    grid = grids["original"]
    centre_ras = lps_to_ras(grid.ijk_to_lps(np.array([250.0, 260.0, 9.0])))
    outside_ras = lps_to_ras(grid.ijk_to_lps(np.array([530.0, 260.0, 9.0])))
    plane = plane_at(grid, AXIAL_SLICE_TO_RAS, centre_ras)

    with pytest.raises(InputError, match="outside the volume"):
        markups_to_prompts("liver", plane, grid, [centre_ras, outside_ras], [1, 1])


def test_label_count_must_match(grids):
    grid = grids["original"]
    centre_ras = lps_to_ras(grid.ijk_to_lps(np.array([250.0, 260.0, 9.0])))
    plane = plane_at(grid, AXIAL_SLICE_TO_RAS, centre_ras)

    with pytest.raises(InputError, match="one label per point"):
        markups_to_prompts("liver", plane, grid, [centre_ras, centre_ras], [1])


def test_prompt_group_collects_one_slice(grids):
    grid = grids["original"]
    centre_ras = lps_to_ras(grid.ijk_to_lps(np.array([250.0, 260.0, 9.0])))
    plane = plane_at(grid, AXIAL_SLICE_TO_RAS, centre_ras)
    next_plane = plane_at(grid, AXIAL_SLICE_TO_RAS, centre_ras + [0.0, 0.0, 2.0])
    group = PromptGroup("liver", plane)

    group.add_point(centre_ras, 0)
    assert not group.is_ready
    group.set_box(centre_ras - 10.0, centre_ras + 10.0)
    assert group.is_ready
    group.set_box(centre_ras - 5.0, centre_ras + 5.0)

    prompts = group.to_prompts(grid)
    assert prompts["segments"][0]["point_labels"] == [0]
    np.testing.assert_allclose(prompts["segments"][0]["box"][0][:2], (centre_ras - 5.0)[:2])
    assert group.matches("liver", plane)
    assert not group.matches("liver", next_plane)
    assert not group.matches("spleen", plane)
    with pytest.raises(InputError, match="point label"):
        group.add_point(centre_ras, 2)


def test_roi_corners_follow_rotation():
    corners = box_corners_from_roi([10.0, 20.0, 30.0], [40.0, 20.0, 0.0])
    assert corners == ((-10.0, 10.0, 30.0), (30.0, 30.0, 30.0))

    quarter_turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    low, high = box_corners_from_roi([0.0, 0.0, 0.0], [40.0, 20.0, 2.0], quarter_turn)
    np.testing.assert_allclose(low, [10.0, -20.0, -1.0])
    np.testing.assert_allclose(high, [-10.0, 20.0, 1.0])
