"""Merging a prompt result into one segment without touching other segments.

A prompt result is a boolean mask ``(K, J, I)`` on the volume grid. Only voxels
in the changed region (the prompt's slice, or the slices a propagation reached)
change. By default a voxel that belongs to another segment is never taken, so
other segments keep every voxel. When the user turns on "Follow Segment
Editor masking", the Segment Editor's editable area and overwrite mode decide
instead, as they do for Slicer's own effects.

Two forms: :func:`merge_into_labelmap` for a label map (one value per voxel)
and :func:`merge_into_segments` for overlapping segments, as a Slicer
segmentation stores them. This module imports neither slicer, Qt nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from segmote.errors import InputError

from .viewgeometry import ViewPlane

# Editable areas, in the order of vtkMRMLSegmentationNode's EditAllowed* enum.
EDITABLE_AREAS = (
    "everywhere",
    "inside_all_segments",
    "inside_visible_segments",
    "outside_all_segments",
    "outside_visible_segments",
    "inside_single_segment",
)

# Overwrite modes, in the order of vtkMRMLSegmentEditorNode's Overwrite* enum.
OVERWRITE_MODES = ("all_segments", "visible_segments", "none")


@dataclass(frozen=True)
class Masking:
    """The Segment Editor's masking settings, or the safe default.

    Attributes:
        editable_area: one of :data:`EDITABLE_AREAS`.
        overwrite: one of :data:`OVERWRITE_MODES`; ``none`` keeps all other segments.
        mask_segment_id: the segment used by ``inside_single_segment``.
        intensity_range: (low, high) source volume intensities that are editable, or None.
    """

    editable_area: str = "everywhere"
    overwrite: str = "none"
    mask_segment_id: Optional[str] = None
    intensity_range: Optional[tuple[float, float]] = None

    def __post_init__(self) -> None:
        if self.editable_area not in EDITABLE_AREAS:
            raise InputError(f"unknown editable area {self.editable_area!r}: use one of {', '.join(EDITABLE_AREAS)}")
        if self.overwrite not in OVERWRITE_MODES:
            raise InputError(f"unknown overwrite mode {self.overwrite!r}: use one of {', '.join(OVERWRITE_MODES)}")
        if self.editable_area == "inside_single_segment" and not self.mask_segment_id:
            raise InputError("editable area 'inside_single_segment' needs a mask segment: choose one in the Segment Editor")


# The default for prompt results: everywhere editable, never overwrite another segment.
KEEP_OTHER_SEGMENTS = Masking()


def slice_region(shape_kji: Sequence[int], plane: ViewPlane) -> np.ndarray:
    """Return a boolean mask ``(K, J, I)`` that is True on the plane's voxel slice only."""
    region = np.zeros(tuple(shape_kji), dtype=bool)
    index: list = [slice(None)] * 3
    index[plane.numpy_axis] = plane.slice_index
    region[tuple(index)] = True
    return region


def changed_region(shape_kji: Sequence[int], plane: ViewPlane, result: np.ndarray, propagate: bool) -> np.ndarray:
    """Return the voxels ``(K, J, I)`` that a prompt result may change.

    Without propagation this is the prompt's slice. With propagation it adds
    every slice along the same axis where the result is non-empty, so slices
    the propagation did not reach keep their earlier contents.
    """
    region = slice_region(shape_kji, plane)
    if propagate:
        other_axes = tuple(axis for axis in range(3) if axis != plane.numpy_axis)
        reached = np.any(result, axis=other_axes)  # (slices along the normal,)
        shape = [1, 1, 1]
        shape[plane.numpy_axis] = reached.size
        region |= np.broadcast_to(reached.reshape(shape), region.shape)
    return region


def _check_shapes(reference: np.ndarray, **arrays: Optional[np.ndarray]) -> None:
    for name, array in arrays.items():
        if array is not None and array.shape != reference.shape:
            raise InputError(f"{name} has shape {array.shape}, but the volume has {reference.shape}")


def editable_area_mask(
    masking: Masking,
    segment_masks: Mapping[str, np.ndarray],
    visible_ids: Iterable[str],
    target_id: str,
    source_volume: Optional[np.ndarray] = None,
) -> Optional[np.ndarray]:
    """Return the editable voxels ``(K, J, I)`` for a masking choice, or None when all are editable.

    Follows the Segment Editor's rules: "inside/outside all segments" counts
    every segment except the one being edited. The intensity range, when set,
    needs ``source_volume`` ``(K, J, I)``.
    """
    visible = set(visible_ids)
    others = {segment_id: mask for segment_id, mask in segment_masks.items() if segment_id != target_id}
    editable: Optional[np.ndarray] = None

    # Editable area from other segments.
    area = masking.editable_area
    if area != "everywhere":
        if area == "inside_single_segment":
            if masking.mask_segment_id not in segment_masks:
                raise InputError(f"mask segment {masking.mask_segment_id!r} not found in the segmentation")
            editable = segment_masks[masking.mask_segment_id].astype(bool).copy()
        else:
            chosen = [mask for segment_id, mask in others.items() if "all" in area or segment_id in visible]
            union = np.zeros(next(iter(segment_masks.values())).shape, dtype=bool)
            for mask in chosen:
                union |= mask.astype(bool)
            editable = union if area.startswith("inside") else ~union

    # Editable intensity range of the source volume.
    if masking.intensity_range is not None:
        if source_volume is None:
            raise InputError("the intensity range mask needs the source volume")
        low, high = masking.intensity_range
        in_range = (source_volume >= low) & (source_volume <= high)
        editable = in_range if editable is None else editable & in_range
    return editable


def overwritable_ids(masking: Masking, segment_ids: Iterable[str], visible_ids: Iterable[str], target_id: str) -> set[str]:
    """Return the other segments that the result may take voxels from."""
    others = [segment_id for segment_id in segment_ids if segment_id != target_id]
    if masking.overwrite == "all_segments":
        return set(others)
    if masking.overwrite == "visible_segments":
        visible = set(visible_ids)
        return {segment_id for segment_id in others if segment_id in visible}
    return set()


def merge_into_labelmap(
    labelmap: np.ndarray,
    label: int,
    result: np.ndarray,
    region: np.ndarray,
    overwrite_labels: Iterable[int] = (),
    editable: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Return a copy of ``labelmap`` with ``result`` written as ``label`` inside ``region``.

    Inside ``region``, voxels where ``result`` is True become ``label`` and
    voxels that were ``label`` but are False in ``result`` become 0. A voxel of
    another label changes only when that label is in ``overwrite_labels``;
    voxels outside ``editable`` (when given) and outside ``region`` never change.

    Args:
        labelmap: integer label map ``(K, J, I)``; 0 = background.
        label: the label value to update (not 0).
        result: boolean prompt result ``(K, J, I)``.
        region: boolean mask ``(K, J, I)`` of voxels the prompt may change.
        overwrite_labels: other labels whose voxels the result may take.
        editable: boolean mask ``(K, J, I)`` of editable voxels, or None for all.
    """
    if label == 0:
        raise InputError("label 0 is the background: choose a label value from 1 up")
    _check_shapes(labelmap, result=result, region=region, editable=editable)
    result = result.astype(bool)

    # Voxels this prompt may write: in the region, editable, and not another kept label.
    others = (labelmap != 0) & (labelmap != label)
    kept = others & ~np.isin(labelmap, list(overwrite_labels))
    writable = region & ~kept
    if editable is not None:
        writable &= editable.astype(bool)

    merged = labelmap.copy()
    merged[writable & result] = label
    merged[writable & ~result & (labelmap == label)] = 0
    return merged


@dataclass
class SegmentsUpdate:
    """The new masks ``(K, J, I)`` of the edited segment and of the other segments it took voxels from."""

    target: np.ndarray
    changed_others: dict[str, np.ndarray]


def merge_into_segments(
    target: np.ndarray,
    others: Mapping[str, np.ndarray],
    result: np.ndarray,
    region: np.ndarray,
    overwrite_ids: Iterable[str] = (),
    editable: Optional[np.ndarray] = None,
    keep: Optional[np.ndarray] = None,
) -> SegmentsUpdate:
    """Merge a prompt result into one segment of a segmentation whose segments may overlap.

    Same rules as :func:`merge_into_labelmap`: inside ``region`` and
    ``editable``, the target becomes ``result`` (joined with ``keep``), except
    on voxels of other segments that are not in ``overwrite_ids``. Voxels the
    target gains are removed from the segments in ``overwrite_ids``.

    Args:
        target: boolean mask ``(K, J, I)`` of the segment being edited.
        others: boolean masks ``(K, J, I)`` of the other segments, by segment id.
        result: boolean prompt result ``(K, J, I)``.
        region: boolean mask ``(K, J, I)`` of voxels the prompt may change.
        overwrite_ids: ids of other segments the result may take voxels from.
        editable: boolean mask ``(K, J, I)`` of editable voxels, or None for all.
        keep: boolean mask ``(K, J, I)`` of target voxels that stay whatever the
            result, such as the segment before the current prompt group; None keeps none.
    """
    _check_shapes(target, result=result, region=region, editable=editable, keep=keep)
    for segment_id, mask in others.items():
        _check_shapes(target, **{f"segment {segment_id!r}": mask})
    overwrite = set(overwrite_ids)
    target = target.astype(bool)
    result = result.astype(bool)
    if keep is not None:
        result = result | (keep.astype(bool) & target)

    # Voxels held by a segment that must be kept are not writable.
    writable = region.copy()
    if editable is not None:
        writable &= editable.astype(bool)
    for segment_id, mask in others.items():
        if segment_id not in overwrite:
            writable &= ~mask.astype(bool)

    new_target = target.copy()
    new_target[writable] = result[writable]

    # Overwritable segments lose the voxels the target gained.
    gained = new_target & ~target
    changed_others = {}
    for segment_id in overwrite:
        mask = others[segment_id].astype(bool)
        if np.any(mask & gained):
            changed_others[segment_id] = mask & ~gained
    return SegmentsUpdate(target=new_target, changed_others=changed_others)
