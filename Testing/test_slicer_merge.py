"""Merging a prompt result into one label or segment, on the real abdominal CT label map (41 structures).

The prompt result used here is the liver grown by two voxels, so on its slice
it covers voxels of neighbouring structures: a merge that ignored them would
change them (checked as a negative control).
"""

from __future__ import annotations

import numpy as np
import pytest

from segmote.engine.volume import read_volume
from segmote.errors import InputError
from SegMoTELib.merge import (
    Masking,
    changed_region,
    editable_area_mask,
    merge_into_labelmap,
    merge_into_segments,
    overwritable_ids,
    slice_region,
)
from SegMoTELib.viewgeometry import ViewPlane

LIVER = 5
SLICE_K = 15
AXIAL = ViewPlane(view="axial", axis_ijk=2, slice_index=SLICE_K, angle_degrees=0.0)


def grow(mask: np.ndarray, voxels: int) -> np.ndarray:
    """Dilate a boolean mask (K, J, I) within each axial slice by ``voxels`` (square neighbourhood)."""
    grown = mask.copy()
    for _ in range(voxels):
        step = grown.copy()
        for axis in (1, 2):
            for shift in (-1, 1):
                step |= np.roll(grown, shift, axis=axis)
        grown = step
    return grown


@pytest.fixture(scope="module")
def labels(shared_data) -> np.ndarray:
    """The real label map (K, J, I) = (30, 101, 122), uint8, TotalSegmentator 'total' values."""
    return read_volume(shared_data / "ct_abdomen_small" / "labels.nii.gz").array


@pytest.fixture(scope="module")
def ct(shared_data) -> np.ndarray:
    return read_volume(shared_data / "ct_abdomen_small" / "ct.nii.gz").array


@pytest.fixture(scope="module")
def result(labels) -> np.ndarray:
    """A prompt result on every slice: the liver grown by two voxels."""
    return grow(labels == LIVER, 2)


def test_result_overlaps_other_labels(labels, result):
    """Negative control: writing the result blindly would change other structures on the slice."""
    region = slice_region(labels.shape, AXIAL)
    others = (labels != 0) & (labels != LIVER)

    naive = labels.copy()
    naive[region & result] = LIVER

    assert np.count_nonzero(naive[others] != labels[others]) > 20


def test_merge_keeps_other_labels(labels, result):
    region = slice_region(labels.shape, AXIAL)

    merged = merge_into_labelmap(labels, LIVER, result, region)

    others = (labels != 0) & (labels != LIVER)
    assert np.array_equal(merged[others], labels[others])
    assert np.array_equal(merged[~region], labels[~region])
    free = region & ((labels == 0) | (labels == LIVER))
    assert np.array_equal(merged[free] == LIVER, result[free])
    assert np.count_nonzero(merged[region] == LIVER) > np.count_nonzero(labels[region] == LIVER)


def test_merge_shrinks_target_inside_region_only(labels):
    smaller = np.zeros(labels.shape, dtype=bool)
    region = slice_region(labels.shape, AXIAL)

    merged = merge_into_labelmap(labels, LIVER, smaller, region)

    assert np.count_nonzero(merged[SLICE_K] == LIVER) == 0
    assert np.count_nonzero(labels[SLICE_K] == LIVER) > 0
    assert np.array_equal(merged[SLICE_K + 1], labels[SLICE_K + 1])


def test_merge_overwrites_only_chosen_labels(labels, result):
    region = slice_region(labels.shape, AXIAL)
    covered = labels[region & result]
    neighbours = sorted(set(covered.tolist()) - {0, LIVER})
    assert len(neighbours) >= 2, "the grown liver should touch at least two structures"
    chosen, kept = neighbours[0], neighbours[1:]

    merged = merge_into_labelmap(labels, LIVER, result, region, overwrite_labels=[chosen])

    taken = region & result & (labels == chosen)
    assert taken.any()
    assert np.all(merged[taken] == LIVER)
    for label in kept:
        assert np.array_equal(merged[labels == label], labels[labels == label]), f"label {label} changed"
    assert np.array_equal(merged[~region], labels[~region])


def test_merge_respects_editable_area(labels, result):
    region = slice_region(labels.shape, AXIAL)
    editable = np.zeros(labels.shape, dtype=bool)
    editable[:, :50, :] = True

    merged = merge_into_labelmap(labels, LIVER, result, region, editable=editable)

    assert np.array_equal(merged[~editable], labels[~editable])
    changed = merged != labels
    assert changed.any()
    assert np.all(editable[changed])


def test_merge_rejects_background_label_and_bad_shape(labels, result):
    region = slice_region(labels.shape, AXIAL)

    with pytest.raises(InputError, match="background"):
        merge_into_labelmap(labels, 0, result, region)
    with pytest.raises(InputError, match="shape"):
        merge_into_labelmap(labels, LIVER, result[:-1], region)


def segment_masks(labels: np.ndarray, values: list[int]) -> dict[str, np.ndarray]:
    return {f"label_{value}": labels == value for value in values}


def test_segments_merge_matches_labelmap_merge(labels, result):
    values = [int(v) for v in np.unique(labels) if v not in (0, LIVER)]
    others = segment_masks(labels, values)
    region = slice_region(labels.shape, AXIAL)
    chosen = sorted(set(labels[region & result].tolist()) - {0, LIVER})[0]

    update = merge_into_segments(labels == LIVER, others, result, region, overwrite_ids={f"label_{chosen}"})
    merged = merge_into_labelmap(labels, LIVER, result, region, overwrite_labels=[chosen])

    assert np.array_equal(update.target, merged == LIVER)
    assert set(update.changed_others) == {f"label_{chosen}"}
    assert np.array_equal(update.changed_others[f"label_{chosen}"], merged == chosen)


def test_segments_merge_keeps_overlapping_segments(labels, result):
    """Segments may overlap in Slicer: a kept segment that overlaps another keeps every voxel."""
    region = slice_region(labels.shape, AXIAL)
    stomach_like = grow(labels == LIVER, 1) & ~(labels == LIVER)  # a ring around the liver
    others = {"ring": stomach_like, "spleen": labels == 1}

    update = merge_into_segments(labels == LIVER, others, result, region)

    assert update.changed_others == {}
    assert not np.any(update.target & stomach_like & region & ~(labels == LIVER))
    assert np.array_equal(update.target[~region], (labels == LIVER)[~region])


def test_editable_area_modes(labels, ct):
    masks = segment_masks(labels, [1, 2, LIVER])
    masks = {"spleen": masks["label_1"], "kidney": masks["label_2"], "liver": masks[f"label_{LIVER}"]}

    inside_all = editable_area_mask(Masking(editable_area="inside_all_segments"), masks, ["spleen"], "liver")
    assert np.array_equal(inside_all, masks["spleen"] | masks["kidney"])

    outside_visible = editable_area_mask(Masking(editable_area="outside_visible_segments"), masks, ["spleen"], "liver")
    assert np.array_equal(outside_visible, ~masks["spleen"])

    single = editable_area_mask(
        Masking(editable_area="inside_single_segment", mask_segment_id="kidney"), masks, [], "liver"
    )
    assert np.array_equal(single, masks["kidney"])

    soft_tissue = editable_area_mask(Masking(intensity_range=(-100.0, 200.0)), masks, [], "liver", ct)
    assert np.array_equal(soft_tissue, (ct >= -100) & (ct <= 200))

    assert editable_area_mask(Masking(), masks, [], "liver") is None


def test_overwrite_modes():
    ids = ["liver", "spleen", "kidney"]

    assert overwritable_ids(Masking(), ids, ids, "liver") == set()
    assert overwritable_ids(Masking(overwrite="all_segments"), ids, ["kidney"], "liver") == {"spleen", "kidney"}
    assert overwritable_ids(Masking(overwrite="visible_segments"), ids, ["kidney", "liver"], "liver") == {"kidney"}


def test_masking_rejects_unknown_modes():
    with pytest.raises(InputError, match="editable area"):
        Masking(editable_area="inside_some")
    with pytest.raises(InputError, match="overwrite"):
        Masking(overwrite="always")
    with pytest.raises(InputError, match="mask segment"):
        Masking(editable_area="inside_single_segment")


def test_changed_region_with_propagation(labels, result):
    region = changed_region(labels.shape, AXIAL, result, propagate=False)
    assert np.array_equal(np.flatnonzero(region.any(axis=(1, 2))), [SLICE_K])

    partial = result.copy()
    partial[:10] = False  # the propagation stopped before slice 10
    region = changed_region(labels.shape, AXIAL, partial, propagate=True)
    reached = set(np.flatnonzero(partial.any(axis=(1, 2))).tolist()) | {SLICE_K}
    assert set(np.flatnonzero(region.any(axis=(1, 2))).tolist()) == reached
    assert region[12].all()
    assert not region[5].any()


def test_segments_merge_keeps_earlier_group_voxels(labels):
    """A second prompt group on a slice adds to the segment: the first group's voxels stay."""
    region = slice_region(labels.shape, AXIAL)
    liver = labels == LIVER
    first_half = liver.copy()
    first_half[:, :, 61:] = False
    second_half = liver & ~first_half
    assert first_half[SLICE_K].any()
    assert second_half[SLICE_K].any()

    update = merge_into_segments(first_half, {}, second_half, region, keep=first_half)

    assert np.array_equal(update.target[SLICE_K], liver[SLICE_K])
    # Without keep, the result replaces the slice (the first half disappears there).
    replaced = merge_into_segments(first_half, {}, second_half, region)
    assert not np.any(replaced.target[SLICE_K] & first_half[SLICE_K])
