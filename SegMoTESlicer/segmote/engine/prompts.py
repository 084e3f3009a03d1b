"""Mapping a segment's prompts from the prompts file's frame onto one slice of the volume."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import InputError
from ..geometry import Grid, SliceGeometry
from ..protocol import SegmentPrompt

# A prompt may lie this far (in voxels) outside the first or last voxel centre,
# which is the voxel's own extent.
EDGE_TOLERANCE_VOXELS = 0.5


@dataclass(frozen=True)
class SlicePrompt:
    """Prompts on one slice, in slice pixel coordinates.

    Attributes:
        index: slice index along the view's volume axis.
        points_rc: ``(N, 2)`` points as (row, col).
        point_labels: ``(N,)`` 1 = foreground, 0 = background.
        box_rc: ``(r0, c0, r1, c1)`` with r0 <= r1 and c0 <= c1, or None.
    """

    index: int
    points_rc: np.ndarray
    point_labels: np.ndarray
    box_rc: Optional[tuple[float, float, float, float]]


def _describe(point: tuple[float, float, float], system: str) -> str:
    return f"({', '.join(f'{v:g}' for v in point)}) {system}"


def map_segment_prompt(prompt: SegmentPrompt, coordinate_system: str, grid: Grid) -> SlicePrompt:
    """Map one segment's points and box to a :class:`SlicePrompt`.

    Raises:
        InputError: a prompt outside the volume, prompts on different slices,
            or a box of zero area on the slice.
    """
    system = coordinate_system.upper()
    positions = list(prompt.points)
    if prompt.box is not None:
        positions.extend(prompt.box)
    ijk = grid.to_ijk(np.asarray(positions, dtype=np.float64).reshape(-1, 3), system)
    size = np.asarray(grid.size_ijk, dtype=np.float64)

    for original, voxel in zip(positions, ijk):
        outside = (voxel < -EDGE_TOLERANCE_VOXELS) | (voxel > size - 1 + EDGE_TOLERANCE_VOXELS)
        if outside.any():
            raise InputError(
                f"segment {prompt.name!r}: prompt {_describe(original, system)} lies outside the volume "
                f"(voxel ({', '.join(f'{v:.1f}' for v in voxel)}) IJK, size {tuple(int(s) for s in size)}); "
                "check the coordinate_system and the positions"
            )

    normal_ijk = grid.view_axes()[prompt.view]
    slice_numbers = np.clip(np.rint(ijk[:, normal_ijk]), 0, size[normal_ijk] - 1).astype(int)
    if len(set(slice_numbers.tolist())) > 1:
        raise InputError(
            f"segment {prompt.name!r}: its points and box lie on different {prompt.view} slices "
            f"({sorted(set(slice_numbers.tolist()))}); put all prompts of one segment on one slice, "
            "or split them into separate segments"
        )
    index = int(slice_numbers[0])
    geometry = SliceGeometry.for_view(grid, prompt.view, index)
    rc = geometry.ijk_to_rc(ijk)

    count = len(prompt.points)
    points_rc = rc[:count]
    labels = np.asarray(prompt.point_labels, dtype=np.int64)
    box_rc = None
    if prompt.box is not None:
        (r_a, c_a), (r_b, c_b) = rc[count], rc[count + 1]
        box_rc = (min(r_a, r_b), min(c_a, c_b), max(r_a, r_b), max(c_a, c_b))
        if box_rc[2] - box_rc[0] < 0.5 or box_rc[3] - box_rc[1] < 0.5:
            raise InputError(
                f"segment {prompt.name!r}: the box {_describe(prompt.box[0], system)} - "
                f"{_describe(prompt.box[1], system)} has zero area on the {prompt.view} slice; "
                "give two opposite corners that differ in both in-plane directions"
            )
    return SlicePrompt(index, points_rc, labels, box_rc)
