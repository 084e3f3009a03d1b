"""Prompt markups to the prompts JSON that the backend reads.

The module collects the prompts of one segment on one slice into a
:class:`PromptGroup`: foreground and background points (from two point-list
markups) and at most one box (from an ROI markup). The group turns into the
prompts JSON with ``coordinate_system`` RAS, every position moved onto the
centre of its voxel slice, so that the backend receives points and box on one
slice of the named view.

This module imports neither slicer, Qt nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from segmote.errors import InputError
from segmote.geometry import Grid
from segmote.protocol import parse_prompts

from .viewgeometry import ViewPlane, snap_to_plane, voxel_of_point

FOREGROUND = 1
BACKGROUND = 0


def box_corners_from_roi(
    center_ras: Sequence[float], size_mm: Sequence[float], axes_ras: np.ndarray | None = None
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Return two opposite corners (RAS mm) of a box markup.

    Args:
        center_ras: the ROI centre in RAS mm.
        size_mm: the ROI edge lengths along its own three axes.
        axes_ras: 3 x 3 matrix whose columns are the ROI axes in RAS (the
            rotation part of the ROI's ObjectToWorld matrix); identity if None.
    """
    axes = np.eye(3) if axes_ras is None else np.asarray(axes_ras, dtype=np.float64)
    half = axes @ (np.asarray(size_mm, dtype=np.float64) / 2.0)
    center = np.asarray(center_ras, dtype=np.float64)
    low, high = center - half, center + half
    return (tuple(float(v) for v in low), tuple(float(v) for v in high))  # type: ignore[return-value]


@dataclass
class PromptGroup:
    """The prompts placed for one segment on one voxel slice, since the last undo point.

    Attributes:
        segment_name: name sent to the backend (the segment's name).
        plane: the voxel slice the prompts lie on.
        points_ras: point positions, RAS mm.
        point_labels: 1 = foreground, 0 = background, one per point.
        box_ras: two opposite box corners, RAS mm, or None.
    """

    segment_name: str
    plane: ViewPlane
    points_ras: list[tuple[float, float, float]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)
    box_ras: Optional[tuple[tuple[float, float, float], tuple[float, float, float]]] = None

    def matches(self, segment_name: str, plane: ViewPlane) -> bool:
        """Return whether a new prompt for ``segment_name`` on ``plane`` belongs to this group."""
        return (
            self.segment_name == segment_name
            and self.plane.axis_ijk == plane.axis_ijk
            and self.plane.slice_index == plane.slice_index
        )

    def add_point(self, point_ras: Sequence[float], label: int) -> None:
        """Add a foreground (1) or background (0) point."""
        if label not in (FOREGROUND, BACKGROUND):
            raise InputError(f"invalid point label {label!r}: use 1 (foreground) or 0 (background)")
        self.points_ras.append(tuple(float(v) for v in point_ras))  # type: ignore[arg-type]
        self.point_labels.append(int(label))

    def set_box(self, corner_a_ras: Sequence[float], corner_b_ras: Sequence[float]) -> None:
        """Set the box from two opposite corners; a new box replaces the old one."""
        self.box_ras = (
            tuple(float(v) for v in corner_a_ras),  # type: ignore[assignment]
            tuple(float(v) for v in corner_b_ras),
        )

    @property
    def is_ready(self) -> bool:
        """Whether the group can be sent: a box, or at least one foreground point."""
        return self.box_ras is not None or FOREGROUND in self.point_labels

    def to_prompts(self, grid: Grid, propagate: bool = False, propagate_limit: Optional[int] = None) -> dict[str, Any]:
        """Return the prompts JSON for this group (``coordinate_system`` RAS, one segment).

        Raises:
            InputError: the group has only background points, or a point lies
                outside the volume.
        """
        return markups_to_prompts(
            self.segment_name,
            self.plane,
            grid,
            points_ras=self.points_ras,
            point_labels=self.point_labels,
            box_ras=self.box_ras,
            propagate=propagate,
            propagate_limit=propagate_limit,
        )


def markups_to_prompts(
    segment_name: str,
    plane: ViewPlane,
    grid: Grid,
    points_ras: Sequence[Sequence[float]] = (),
    point_labels: Sequence[int] = (),
    box_ras: Optional[Sequence[Sequence[float]]] = None,
    propagate: bool = False,
    propagate_limit: Optional[int] = None,
) -> dict[str, Any]:
    """Build the prompts JSON for one segment from markup positions.

    Points and box corners are moved along the slice normal onto the centre of
    ``plane``'s voxel slice; their in-plane position is kept. The result passes
    :func:`segmote.protocol.parse_prompts`.

    Args:
        segment_name: the segment's name.
        plane: the voxel slice shown in the view where the prompts were placed.
        grid: the volume's grid.
        points_ras: ``(N, 3)`` point positions, RAS mm.
        point_labels: ``N`` labels, 1 = foreground, 0 = background.
        box_ras: two opposite box corners, RAS mm, or None.
        propagate: run 3-D propagation from this slice.
        propagate_limit: the maximum number of slices in each direction; None = no limit.

    Raises:
        InputError: no usable prompt, a label count that does not match, or a
            point outside the volume.
    """
    if len(points_ras) != len(point_labels):
        raise InputError(f"{len(points_ras)} points but {len(point_labels)} point labels: give one label per point")
    segment: dict[str, Any] = {"name": segment_name, "view": plane.view, "propagate": bool(propagate)}

    # Points: check each lies on the image, then snap onto the slice.
    if len(points_ras):
        for point in points_ras:
            voxel_of_point(grid, point)
        snapped = snap_to_plane(grid, plane, np.asarray(points_ras, dtype=np.float64))
        segment["points"] = [[float(v) for v in point] for point in snapped]
        segment["point_labels"] = [int(label) for label in point_labels]

    # Box: both corners onto the slice; a box may reach past the image border.
    if box_ras is not None:
        corners = snap_to_plane(grid, plane, np.asarray(box_ras, dtype=np.float64).reshape(2, 3))
        segment["box"] = [[float(v) for v in corner] for corner in corners]

    if propagate_limit is not None:
        segment["propagate_limit"] = int(propagate_limit)
    prompts = {"coordinate_system": "RAS", "segments": [segment]}
    parse_prompts(prompts)  # raises InputError naming the missing prompt
    return prompts
