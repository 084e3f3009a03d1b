"""PNG overlays of a label map on one slice, for a quick visual check."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..geometry import SliceGeometry
from .intensity import IntensityScaling
from .seg_nrrd import structure_color
from .volume import Volume, atomic_write

# Opacity of the label colours over the image.
OVERLAY_ALPHA = 0.45


def largest_label_slice(labels: np.ndarray) -> int:
    """Index k of the axial-array slice (numpy axis 0) with the most labelled voxels."""
    return int(np.argmax((labels > 0).reshape(labels.shape[0], -1).sum(axis=1)))


def write_overlay(
    volume: Volume,
    scaling: IntensityScaling,
    labels: np.ndarray,
    label_table: dict[int, str],
    path: Path,
    view: str = "axial",
    index: Optional[int] = None,
) -> Path:
    """Write a PNG of one slice with the labels blended in their structure colours.

    The slice is shown in the model's orientation (see :class:`SliceGeometry`);
    by default the slice with the most labelled voxels.
    """
    from PIL import Image

    grid = volume.grid
    if index is None:
        axis_ijk = grid.view_axes()[view]
        per_slice = (labels > 0).sum(axis=tuple(a for a in range(3) if a != 2 - axis_ijk))
        index = int(np.argmax(per_slice))
    geometry = SliceGeometry.for_view(grid, view, index)
    image = scaling.apply(geometry.extract(volume.array))
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    rgb = (rgb * 255).astype(np.float32)
    plane = geometry.extract(labels)
    for value, name in label_table.items():
        inside = plane == value
        if inside.any():
            color = np.asarray(structure_color(name, value), dtype=np.float32)
            rgb[inside] = (1 - OVERLAY_ALPHA) * rgb[inside] + OVERLAY_ALPHA * color
    picture = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    # Show physical proportions: scale the column axis by the pixel aspect ratio.
    aspect = geometry.spacing_rc[1] / geometry.spacing_rc[0]
    if abs(aspect - 1.0) > 0.01:
        picture = picture.resize((max(1, round(picture.width * aspect)), picture.height))
    atomic_write(Path(path), lambda temporary: picture.save(temporary, format="PNG"))
    return Path(path)
