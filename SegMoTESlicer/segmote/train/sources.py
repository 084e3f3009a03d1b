"""Training samples from the project's real data: 2-D image/mask pairs and labelled volumes.

A :class:`SliceSample` is one 2-D slice in the model's fixed in-plane
orientation, scaled to [0, 1] exactly as the engine scales it at inference
(:mod:`segmote.engine.intensity`), with one bool mask per structure.

Sources:

- ``pairs.tsv`` folders: one row per image; masks separated by ``;``; the
  anatomy column names the structure or gives a colour legend. 3-D rows
  (NIfTI image and label volumes) yield several axial slices.
- labelled volumes: a CT/MR volume, a label map on the same grid and a label
  table ``{"value": "name"}``.
- a folder ``images/*.png`` + ``masks/<image>_<structure>_<k>.png``.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from PIL import Image

from ..engine.intensity import intensity_scaling
from ..engine.volume import read_volume
from ..errors import InputError
from ..geometry import SliceGeometry
from .masks import parse_colour_legend, read_binary_mask, read_colour_mask

logger = logging.getLogger(__name__)

# Modality of each pairs.tsv folder, in the benchmark's seven groups.
FOLDER_MODALITY = {
    "abdomen_ct_curvas": "CT",
    "ct_lesion_deeplesion": "CT",
    "brain_mri_brats": "MR",
    "cardiac_mri_acdc": "MR",
    "breast_us_busi": "ultrasound",
    "thyroid_us_tg3k": "ultrasound",
    "cxr_lungs": "X-ray",
    "dermoscopy_isic": "dermoscopy",
    "polyp_kvasir": "endoscopy",
    "fundus_drive": "fundus",
}

# Structure name of each mask column position for single-structure folders.
# The DRIVE field-of-view mask (second column) marks the camera's valid
# region, not anatomy, so it is skipped (None).
FOLDER_STRUCTURES = {
    "breast_us_busi": ["breast_lesion"],
    "thyroid_us_tg3k": ["thyroid_gland"],
    "cxr_lungs": ["lung"],
    "dermoscopy_isic": ["skin_lesion"],
    "polyp_kvasir": ["polyp"],
    "fundus_drive": ["retinal_vessels", None],
    "ct_lesion_deeplesion": ["lesion"],
    "brain_mri_brats": ["glioma", "brain"],
}

# Data licence of each source, for the adapters' metadata and the model card.
LICENCES = {
    "abdomen_ct_curvas": "CC BY-NC 4.0 (CURVAS)",
    "brain_mri_brats": "CC BY-NC-SA 3.0 (BraTS 2015)",
    "breast_us_busi": "CC BY 4.0 (BUSI)",
    "cardiac_mri_acdc": "research use (ACDC)",
    "ct_lesion_deeplesion": "DeepLesion terms (NIH)",
    "cxr_lungs": "NLM public sets (Shenzhen)",
    "dermoscopy_isic": "CC BY-NC (ISIC)",
    "fundus_drive": "research use (DRIVE)",
    "polyp_kvasir": "research/educational use (Kvasir-SEG)",
    "thyroid_us_tg3k": "research use (TG3K)",
    "ct_abdomen_small": "Apache-2.0 (TotalSegmentator test data)",
    "ct_slices_2d": "Apache-2.0 (SAM-Med2D demo data from AMOS and TotalSegmentator)",
}


@dataclass
class SliceSample:
    """One 2-D training slice with its structure masks.

    Attributes:
        key: unique name, safe as a file name.
        dataset: source folder name.
        modality: ``CT``, ``MR``, ``X-ray``, ``ultrasound``, ``dermoscopy``, ``endoscopy`` or ``fundus``.
        patient: patient id for the patient-level split.
        image: ``(R, C)`` or ``(R, C, 3)`` float32 in [0, 1].
        spacing_rc: pixel size (mm) along rows and columns, ``(1, 1)`` for 2-D images.
        masks: structure name -> bool ``(R, C)``.
    """

    key: str
    dataset: str
    modality: str
    patient: str
    image: np.ndarray
    spacing_rc: tuple[float, float]
    masks: dict[str, np.ndarray] = field(default_factory=dict)


def _safe_key(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "__".join(parts))


def read_image_2d(path: Path) -> np.ndarray:
    """Read an 8-bit PNG/JPEG/TIFF image as float32 ``(R, C)`` or ``(R, C, 3)`` in [0, 1]."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB")
            array = np.asarray(image)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read image {path}: {error}") from None
    if array.dtype != np.uint8:
        raise InputError(f"image {path} is {array.dtype}, but 2-D training images must be 8-bit")
    return array.astype(np.float32) / 255.0


def read_pairs_table(folder: Path) -> list[dict[str, str]]:
    """Read ``folder/pairs.tsv`` as a list of rows (column name -> text)."""
    path = folder / "pairs.tsv"
    if not path.is_file():
        raise InputError(f"no pairs.tsv in {folder}: a pairs folder needs a pairs.tsv with image and masks columns")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    for row in rows:
        if not row.get("image") or row.get("masks") is None:
            raise InputError(f"{path}: every row needs an image and a masks column")
    return rows


def patient_of(folder_name: str, image_path: str) -> str:
    """Return the patient id of a pairs.tsv row.

    CURVAS file names start with the patient id before ``_``. BraTS and
    DeepLesion rows are one patient per case. Any other image is its own patient.
    """
    name = Path(image_path).name
    if folder_name == "abdomen_ct_curvas":
        return name.split("_")[0]
    if folder_name == "brain_mri_brats":
        return Path(image_path).parts[0]
    if folder_name == "ct_lesion_deeplesion":
        return "_".join(name.split("_")[:3])
    return Path(image_path).with_suffix("").as_posix()


def iter_pairs_folder(
    folder: Path, max_rows: Optional[int] = None, slices_per_volume: int = 6
) -> Iterator[SliceSample]:
    """Yield the samples of one ``pairs.tsv`` folder.

    Args:
        folder: folder containing ``pairs.tsv``.
        max_rows: use at most this many rows, evenly spread over the table.
        slices_per_volume: for 3-D rows, the number of axial slices taken,
            evenly spread over the slices where the first structure is present.
    """
    name = folder.name
    rows = read_pairs_table(folder)
    if max_rows is not None and len(rows) > max_rows:
        picks = np.linspace(0, len(rows) - 1, max_rows).round().astype(int)
        rows = [rows[i] for i in sorted(set(picks))]
    modality = FOLDER_MODALITY.get(name) or _modality_from_text(rows[0].get("modality", "")) if rows else "other"
    for row in rows:
        image_path = folder / row["image"]
        mask_paths = [folder / part for part in row["masks"].split(";") if part]
        patient = patient_of(name, row["image"])
        if image_path.name.endswith((".nii.gz", ".nii", ".nrrd", ".mha")):
            yield from _volume_row_samples(name, modality, patient, image_path, mask_paths, slices_per_volume)
        else:
            yield _image_row_sample(name, modality, patient, row, image_path, mask_paths)


def _modality_from_text(text: str) -> str:
    lowered = text.lower()
    for needle, modality in (("ct", "CT"), ("mri", "MR"), ("ultrasound", "ultrasound"), ("x-ray", "X-ray"),
                             ("dermoscopy", "dermoscopy"), ("endoscopy", "endoscopy"), ("fundus", "fundus")):
        if needle in lowered:
            return modality
    return "other"


def _image_row_sample(
    folder_name: str, modality: str, patient: str, row: dict[str, str], image_path: Path, mask_paths: list[Path]
) -> SliceSample:
    image = read_image_2d(image_path)
    legend = parse_colour_legend(row.get("anatomy", ""))
    masks: dict[str, np.ndarray] = {}
    if legend:
        masks = read_colour_mask(mask_paths[0], legend)
    else:
        names = FOLDER_STRUCTURES.get(folder_name) or [re.sub(r"\W+", "_", row.get("anatomy", "target").lower()).strip("_")]
        for mask_path, structure in zip(mask_paths, names):
            if structure is not None:
                masks[structure] = read_binary_mask(mask_path)
    for structure, mask in masks.items():
        if mask.shape != image.shape[:2]:
            raise InputError(
                f"mask {mask_paths[0]} ({structure}) is {mask.shape}, image {image_path} is {image.shape[:2]}; "
                "the pair does not match"
            )
    key = _safe_key(folder_name, Path(row["image"]).with_suffix("").as_posix())
    return SliceSample(key, folder_name, modality, patient, image, (1.0, 1.0), masks)


def _volume_row_samples(
    folder_name: str, modality: str, patient: str, image_path: Path, mask_paths: list[Path], count: int
) -> Iterator[SliceSample]:
    volume = read_volume(image_path)
    scaling = intensity_scaling(volume, modality="ct" if volume.is_8bit is False and modality == "CT" else None)
    names = FOLDER_STRUCTURES.get(folder_name, ["target"])
    label_volumes = {}
    for mask_path, structure in zip(mask_paths, names):
        if structure is not None:
            label_volumes[structure] = read_volume(mask_path).array > 0
    first = next(iter(label_volumes.values()))
    present = np.flatnonzero(first.reshape(first.shape[0], -1).any(axis=1))
    if present.size == 0:
        logger.warning("%s: no slice contains %s; skipped", image_path, next(iter(label_volumes)))
        return
    for k in np.unique(np.linspace(present[0], present[-1], count + 2)[1:-1].round().astype(int)):
        geometry = SliceGeometry.for_view(volume.grid, "axial", int(k))
        image = scaling.apply(geometry.extract(volume.array))
        masks = {structure: geometry.extract(labels) for structure, labels in label_volumes.items()}
        key = _safe_key(folder_name, image_path.parent.name, image_path.name.split(".")[0], f"k{k:03d}")
        yield SliceSample(key, folder_name, modality, patient, image, geometry.spacing_rc, masks)


def iter_labelled_volume(
    image_path: Path,
    labels_path: Path,
    label_table: dict[str, str],
    dataset: str,
    modality: str = "CT",
    patient: Optional[str] = None,
    every: int = 1,
) -> Iterator[SliceSample]:
    """Yield the axial slices of a labelled volume that contain at least one listed structure.

    Args:
        image_path: the CT/MR volume.
        labels_path: label map on the same grid.
        label_table: label value (as a string) -> structure name; only these structures are kept.
        every: take every n-th slice.
    """
    volume = read_volume(image_path)
    labels = read_volume(labels_path)
    if labels.array.shape != volume.array.shape:
        raise InputError(
            f"label map {labels_path} has shape {labels.array.shape}, image {image_path} has {volume.array.shape}; "
            "resample the labels onto the image grid first"
        )
    scaling = intensity_scaling(volume)
    wanted = {int(value): name for value, name in label_table.items()}
    for k in range(0, volume.array.shape[0], every):
        geometry = SliceGeometry.for_view(volume.grid, "axial", k)
        label_plane = geometry.extract(labels.array)
        masks = {name: label_plane == value for value, name in wanted.items() if np.any(label_plane == value)}
        if not masks:
            continue
        image = scaling.apply(geometry.extract(volume.array))
        key = _safe_key(dataset, f"k{k:03d}")
        yield SliceSample(key, dataset, modality, patient or dataset, image, geometry.spacing_rc, masks)


def iter_instance_folder(folder: Path, dataset: str, modality: str = "CT") -> Iterator[SliceSample]:
    """Yield samples of a folder ``images/<name>.png`` + ``masks/<name>_<structure>_<k>.png``.

    Instances ``k`` of one structure are merged into one mask; images without masks are skipped.
    """
    mask_files = sorted((folder / "masks").glob("*.png"))
    for image_path in sorted((folder / "images").glob("*.png")):
        stem = image_path.stem
        masks: dict[str, np.ndarray] = {}
        for mask_path in mask_files:
            match = re.fullmatch(re.escape(stem) + r"_(.+)_(\d+)", mask_path.stem)
            if match:
                structure = match.group(1)
                mask = read_binary_mask(mask_path)
                masks[structure] = masks[structure] | mask if structure in masks else mask
        if masks:
            image = read_image_2d(image_path)
            yield SliceSample(_safe_key(dataset, stem), dataset, modality, stem, image, (1.0, 1.0), masks)


def read_label_table(path: Path) -> dict[str, str]:
    """Read a label table ``{"1": "liver", ...}``; TotalSegmentator's file gives its ``total`` table."""
    with path.open(encoding="utf-8") as handle:
        table = json.load(handle)
    if "total" in table and isinstance(table["total"], dict):
        table = table["total"]
    if not all(isinstance(value, str) for value in table.values()):
        raise InputError(f"label table {path} must map label values to structure names")
    return table
