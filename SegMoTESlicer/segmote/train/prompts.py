"""Simulated prompts for training and evaluation, in the decoder's low-resolution frame.

All masks here are bool ``(H, W)`` numpy arrays in the low-resolution frame
(256 x 256, the padded encoder input downsampled). Points and boxes are
returned as ``(x, y)`` = (column, row) pixel coordinates in that frame;
:func:`to_model_coordinates` scales them to the encoder input (x 4 for a
1024-pixel SAM input, x 1 for LiteMedSAM).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

# Box jitter: each side moves by up to this many pixels (at 256 x 256).
BOX_JITTER_PIXELS = 5


def box_from_mask(mask: np.ndarray, rng: Optional[np.random.Generator] = None, jitter: int = BOX_JITTER_PIXELS) -> np.ndarray:
    """Return the bounding box ``(4,)`` as ``x0, y0, x1, y1`` of a non-empty mask, jittered when ``rng`` is given."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    box = np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)
    if rng is not None and jitter > 0:
        box += rng.integers(-jitter, jitter + 1, size=4)
        H, W = mask.shape
        box = np.clip(box, 0, [W - 1, H - 1, W - 1, H - 1])
        box[2] = max(box[2], box[0] + 1)
        box[3] = max(box[3], box[1] + 1)
    return box


def central_point(mask: np.ndarray, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Return a positive click ``(2,)`` as ``(x, y)`` inside a non-empty mask.

    With ``rng``: a random foreground pixel from the half nearest the
    foreground's centroid (the training distribution). Without: the pixel
    deepest inside the mask (largest distance to the background), a
    deterministic "click at the object's interior" for evaluation.
    """
    if rng is None:
        return _deepest_point(mask)
    rows, cols = np.nonzero(mask)
    distance = np.hypot(rows - rows.mean(), cols - cols.mean())
    nearest_half = np.flatnonzero(distance <= np.median(distance))
    pick = rng.choice(nearest_half)
    return np.array([cols[pick], rows[pick]], dtype=np.float32)


def corrective_click(
    prediction: np.ndarray, target: np.ndarray, rng: Optional[np.random.Generator] = None
) -> Optional[tuple[np.ndarray, int]]:
    """Return a click ``((x, y), label)`` that corrects the largest error region, or None if there is no error.

    The error region is the largest connected component of the false negatives
    (label 1) or false positives (label 0). The click is its deepest pixel, or
    with ``rng`` a random pixel among its deeper half.
    """
    false_negative = target & ~prediction
    false_positive = prediction & ~target
    best = None
    for error, label in ((false_negative, 1), (false_positive, 0)):
        if not error.any():
            continue
        components, count = ndimage.label(error)
        sizes = ndimage.sum_labels(error, components, index=np.arange(1, count + 1))
        largest = int(np.argmax(sizes))
        if best is None or sizes[largest] > best[0]:
            best = (sizes[largest], components == largest + 1, label)
    if best is None:
        return None
    _, region, label = best
    if rng is None:
        return _deepest_point(region), label
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    rows, cols = np.nonzero(depth >= np.median(depth[region]))
    pick = rng.integers(len(rows))
    return np.array([cols[pick], rows[pick]], dtype=np.float32), label


def _deepest_point(mask: np.ndarray) -> np.ndarray:
    # Pad so that the image border counts as background.
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return np.array([col, row], dtype=np.float32)


def to_model_coordinates(xy: np.ndarray, image_size: int, low_res_size: int = 256) -> np.ndarray:
    """Scale ``(x, y)`` coordinates from the low-resolution frame to the encoder input frame.

    A low-resolution pixel ``p`` covers encoder pixels ``[p s, (p + 1) s)``,
    ``s = image_size / low_res_size``, so its centre maps to ``(p + 0.5) s - 0.5``.
    """
    scale = image_size / low_res_size
    return (np.asarray(xy, dtype=np.float32) + 0.5) * scale - 0.5
