"""Training and validation targets from cached slices, with a patient-level split.

A *prompted target* is one structure that passed curation, segmented from a
box or clicks. When a structure such as the lungs or kidneys falls apart into
separate objects, each major connected component is a target of its own. An
*auto target* is one named structure of a completely annotated slice,
empty masks included; it is segmented by the structure's learned prompt tokens.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from .cache import CachedSlice

# A structure with several connected components is split into separate
# prompted targets when at least two components each contain this fraction
# of its pixels (both lungs, both kidneys). Smaller specks stay attached.
MAJOR_COMPONENT_FRACTION = 0.1

# Share of patients per data set held out for validation.
VALIDATION_FRACTION = 0.2

# Data sets that always go to training: a single patient that the automatic
# segmentation classes need (its slices are the only labelled CT volume).
TRAIN_ONLY_SETS = ("ct_abdomen_small",)


@dataclass
class Target:
    """One segmentation target.

    Attributes:
        slice_index: index into the list of cached slices.
        structure: structure name.
        mask: bool ``(256, 256)`` in the low-resolution frame.
        class_index: index into the automatic classes, or -1 for a prompted target.
    """

    slice_index: int
    structure: str
    mask: torch.Tensor
    class_index: int = -1


def split_patients(slices: list[CachedSlice], fraction: float = VALIDATION_FRACTION) -> tuple[set[str], set[str]]:
    """Split ``dataset/patient`` ids into training and validation sets.

    Within each data set, patients are ordered by a hash of their id, which is
    stable across runs and machines. The first ``ceil(fraction * n)`` go to
    validation. A set with one patient, or listed in :data:`TRAIN_ONLY_SETS`,
    stays in training.
    """
    patients: dict[str, set[str]] = defaultdict(set)
    for item in slices:
        patients[item.dataset].add(f"{item.dataset}/{item.patient}")
    train, validation = set(), set()
    for dataset, ids in patients.items():
        ordered = sorted(ids, key=lambda value: hashlib.sha1(value.encode()).hexdigest())
        count = 0 if dataset in TRAIN_ONLY_SETS or len(ordered) < 2 else math.ceil(fraction * len(ordered))
        validation.update(ordered[:count])
        train.update(ordered[count:])
    return train, validation


def patient_id(item: CachedSlice) -> str:
    """Return the ``dataset/patient`` id used by :func:`split_patients`."""
    return f"{item.dataset}/{item.patient}"


def prompted_targets(slices: list[CachedSlice], indexes: list[int]) -> list[Target]:
    """List the prompted targets of the given slices (curated structures, split into major components)."""
    targets = []
    for index in indexes:
        item = slices[index]
        for position, structure in enumerate(item.structures):
            mask = item.masks[position]
            if not item.prompted[position] or not bool(mask.any()):
                continue
            for part in _major_components(mask.numpy()):
                targets.append(Target(index, structure, torch.from_numpy(part)))
    return targets


def auto_targets(slices: list[CachedSlice], indexes: list[int], classes: list[str]) -> list[Target]:
    """List the automatic-class targets (empty masks included) of the given slices."""
    class_of = {name: position for position, name in enumerate(classes)}
    targets = []
    for index in indexes:
        item = slices[index]
        for position, structure in enumerate(item.structures):
            if item.auto[position] and structure in class_of:
                targets.append(Target(index, structure, item.masks[position], class_of[structure]))
    return targets


def _major_components(mask: np.ndarray) -> list[np.ndarray]:
    components, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count < 2:
        return [mask]
    sizes = ndimage.sum_labels(mask, components, index=np.arange(1, count + 1))
    major = [label + 1 for label, size in enumerate(sizes) if size >= MAJOR_COMPONENT_FRACTION * mask.sum()]
    if len(major) < 2:
        return [mask]
    # Attach every minor speck to the nearest major component.
    distances = np.stack([ndimage.distance_transform_edt(components != label) for label in major])
    owner = np.argmin(distances, axis=0)
    return [mask & (owner == position) for position in range(len(major))]
