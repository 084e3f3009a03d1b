"""Decoding of published segmentation masks: binary, soft-edged JPEG, colour-coded and label maps.

Masks arrive as published: 0/255 PNGs, JPEGs whose edges are blurred by
compression (thresholded at 128), and RGB masks whose colours name the
structures (for example ``pancreas=cyan`` or ``blue=1 RV``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError

# Grey level (0-255) at which a binary or JPEG mask is split into foreground.
BINARY_THRESHOLD = 128

# Colour names used in the anatomy column of pairs.tsv, as RGB.
COLOURS = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
}

# Abbreviations in colour legends, mapped to TotalSegmentator-style names.
STRUCTURE_ALIASES = {
    "rv": "heart_ventricle_right",
    "lv": "heart_ventricle_left",
    "myo": "heart_myocardium",
}


def parse_colour_legend(anatomy: str) -> dict[str, tuple[int, int, int]]:
    """Parse a colour legend into structure name -> RGB colour.

    Accepts both ``"pancreas=cyan, kidney=yellow"`` and
    ``"blue=1 RV, green=2 MYO"``; returns an empty dict when the text names no colour.
    """
    legend: dict[str, tuple[int, int, int]] = {}
    for left, right in re.findall(r"([A-Za-z_]+)\s*=\s*([A-Za-z0-9_]+(?:\s+[A-Za-z_]+)?)", anatomy):
        left_lower, right_words = left.lower(), right.split()
        if right_words[0].lower() in COLOURS:
            legend[left_lower] = COLOURS[right_words[0].lower()]
        elif left_lower in COLOURS:
            name = right_words[-1].lower()
            legend[STRUCTURE_ALIASES.get(name, name)] = COLOURS[left_lower]
    return legend


def read_binary_mask(path: Path) -> np.ndarray:
    """Read a binary mask image (PNG/JPEG/GIF, grey or RGB) as bool ``(R, C)``.

    The grey level (mean of the channels for RGB) is thresholded at 128, which
    also undoes the soft edges of JPEG masks.
    """
    array = _read_image_array(path)
    if array.ndim == 3:
        array = array[..., :3].mean(axis=2)
    return array >= BINARY_THRESHOLD


def read_colour_mask(path: Path, legend: dict[str, tuple[int, int, int]]) -> dict[str, np.ndarray]:
    """Split a colour-coded RGB mask into one bool ``(R, C)`` mask per structure of ``legend``.

    Each channel is thresholded at 128 before matching, so slightly off
    colours from resampling or compression still map to their structure.

    Raises:
        InputError: the mask is not RGB.
    """
    array = _read_image_array(path)
    if array.ndim != 3 or array.shape[2] < 3:
        raise InputError(f"mask {path} is not an RGB image, but its legend gives colours; check the pairs.tsv row")
    bits = array[..., :3] >= BINARY_THRESHOLD  # (R, C, 3) bool
    masks = {}
    for name, colour in legend.items():
        wanted = np.array(colour) >= BINARY_THRESHOLD
        masks[name] = np.all(bits == wanted, axis=2)
    return masks


def _read_image_array(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "RGB", "RGBA"):
                image = image.convert("RGB" if image.mode in ("P", "CMYK", "YCbCr") else "L")
            return np.asarray(image)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read mask {path}: {error}; check that the file is a PNG, JPEG, GIF or TIFF image") from None
