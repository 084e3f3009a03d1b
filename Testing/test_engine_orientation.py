"""The same physical prompts on re-oriented copies of a real CT give the same mask in physical space.

Each copy permutes and flips the voxel axes with SimpleITK, which updates the
direction matrix and origin so that every voxel keeps its physical position.
The model must see the same slice in the same in-plane orientation, so the
mask resampled back onto the original grid must match (Dice >= 0.99).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from segmote.engine.metrics import dice, resample_like
from segmote.engine.session import VolumeSession
from segmote.engine.volume import grid_of, read_volume, to_sitk, Volume
from segmote.protocol import parse_prompts

from engine_cases import TOTAL_LABELS, box_prompt_ras, largest_axial_slice

# (axis permutation, flips) in ITK axis order: a sample of the 48 orientations.
ORIENTATIONS = [
    ((0, 1, 2), (False, False, False)),
    ((0, 1, 2), (True, False, False)),
    ((1, 0, 2), (False, True, False)),
    ((2, 0, 1), (False, False, True)),
    ((1, 2, 0), (True, True, False)),
    ((2, 1, 0), (True, False, True)),
]


def _reoriented(image: sitk.Image, order, flips) -> sitk.Image:
    return sitk.Flip(sitk.PermuteAxes(image, list(order)), list(flips))


@pytest.fixture(scope="module")
def original(shared_data):
    folder = shared_data / "ct_abdomen_small"
    image = sitk.ReadImage(str(folder / "ct.nii.gz"))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels.nii.gz")))
    return image, labels


@pytest.fixture(scope="module")
def reference_liver(original, bare_engine):
    """The liver box in RAS and its mask on the original grid."""
    image, labels = original
    volume = Volume(sitk.GetArrayFromImage(image), grid_of(image))
    mask = labels == TOTAL_LABELS["liver"]
    k = largest_axial_slice(mask)
    prompts = parse_prompts(box_prompt_ras(mask, k, "liver", volume))
    return volume, prompts, VolumeSession(bare_engine, volume).segment(prompts.segments[0], "RAS").mask


@pytest.mark.parametrize("order,flips", ORIENTATIONS)
def test_reoriented_ct_same_mask(original, reference_liver, bare_engine, order, flips):
    image, _ = original
    volume, prompts, reference = reference_liver

    moved_image = _reoriented(image, order, flips)
    moved = Volume(sitk.GetArrayFromImage(moved_image), grid_of(moved_image))
    if order != (0, 1, 2) or any(flips):
        assert not np.allclose(moved.grid.direction, volume.grid.direction)
    result = VolumeSession(bare_engine, moved).segment(prompts.segments[0], "RAS").mask

    back = resample_like(to_sitk(result.astype(np.uint8), moved.grid), image)
    back_mask = sitk.GetArrayFromImage(back).astype(bool)
    assert reference.sum() > 500
    assert dice(back_mask, reference) >= 0.99


def test_flipped_mask_fails_comparison(reference_liver):
    """Negative control: a mask written back with one axis flipped does not pass the check above."""
    _, _, reference = reference_liver
    assert dice(reference[:, :, ::-1], reference) < 0.9


def test_dicom_geometry_matches_headers(shared_data):
    import pydicom

    volume = read_volume(shared_data / "ct_abdomen_dicom" / "series")
    first = pydicom.dcmread(volume.source_files[0], stop_before_pixels=True)
    last = pydicom.dcmread(volume.source_files[-1], stop_before_pixels=True)
    orientation = np.array(first.ImageOrientationPatient, dtype=float)
    row_direction, column_direction = orientation[:3], orientation[3:]
    normal = np.cross(row_direction, column_direction)
    grid = volume.grid
    np.testing.assert_allclose(grid.origin_lps, np.array(first.ImagePositionPatient, dtype=float), atol=1e-3)
    np.testing.assert_allclose(grid.direction[:, 0], row_direction, atol=1e-6)
    np.testing.assert_allclose(grid.direction[:, 1], column_direction, atol=1e-6)
    np.testing.assert_allclose(grid.direction[:, 2], normal, atol=1e-6)
    # DICOM PixelSpacing is (row spacing, column spacing) = (j, i).
    np.testing.assert_allclose(grid.spacing_ijk[:2], [float(first.PixelSpacing[1]), float(first.PixelSpacing[0])])
    last_position = np.array(last.ImagePositionPatient, dtype=float)
    np.testing.assert_allclose(grid.ijk_to_lps([0, 0, grid.shape_kji[0] - 1]), last_position, atol=1e-3)


def test_flipped_reference_labels_overlay_in_physical_space(shared_data):
    """labels.nii.gz stores rows flipped: physical resampling aligns it, raw array order does not."""
    from engine_cases import labels_on_grid

    folder = shared_data / "ct_abdomen_dicom"
    volume = read_volume(folder / "series")
    on_grid = labels_on_grid(folder / "labels.nii.gz", volume)
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels.nii.gz")))
    liver_physical = on_grid == TOTAL_LABELS["liver"]
    liver_raw = raw == TOTAL_LABELS["liver"]
    # The liver lies on the patient's right: low LPS x, which is low i on this grid.
    k = largest_axial_slice(liver_physical)
    _, cols = np.nonzero(liver_physical[k])
    assert cols.mean() < volume.grid.shape_kji[2] / 2
    assert np.array_equal(liver_physical, liver_raw[:, ::-1, :])
    # Read by raw array index, the liver is mirrored front to back and overlaps itself only partly.
    assert dice(liver_physical, liver_raw) < 0.6
