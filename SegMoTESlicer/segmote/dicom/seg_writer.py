"""Writing a label map on a DICOM series grid as a DICOM Segmentation (SEG) object with highdicom.

The label map is numpy ``(K, J, I)`` on the grid of the source series as
:func:`segmote.dicom.series.read_series` returns it: ``labels[k]`` is the frame of
``source_files[k]``, ``j`` its row and ``i`` its column. Each label value with a
name in the label table becomes one segment (numbered 1, 2, ... in increasing
label value). The segment label is the structure name; category, type,
laterality and colour come from :mod:`segmote.terminology`.

The SEG references every source instance and their frame of reference, copies
patient and study attributes from the source (nothing is invented or
changed), names SegMoTE as the algorithm (family "Artificial Intelligence"),
and leaves out frames that contain no segment voxels. Binary by default;
fractional on request. Uncompressed (Explicit VR Little Endian) by default, or
one of two lossless compressed transfer syntaxes, neither read by every tool:

- ``deflate`` (Deflated Explicit VR Little Endian): read by dcmqi/DCMTK (3D
  Slicer), pydicom and highdicom; dicom3tools' dciodvfy cannot read it.
- ``jpeg2000`` (JPEG 2000 lossless): read by pydicom, highdicom and dciodvfy.
  dcmqi 1.5 rejects it ("uses lossy compression, not supported for
  Segmentation objects"). It is the only compressed syntax that highdicom 0.28
  allows for binary SEGs.

This module imports no torch.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless

from .. import __version__
from ..errors import InputError
from ..terminology import Code, Term, lookup

logger = logging.getLogger(__name__)

ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")
COMPRESSIONS = ("deflate", "jpeg2000")
ALGORITHM_NAME = "SegMoTE"
MANUFACTURER = "SegMoTE"
DEFAULT_SERIES_DESCRIPTION = "SegMoTE segmentation"
# Added to the source's SeriesNumber so that the SEG sorts after its source in viewers.
SERIES_NUMBER_OFFSET = 1000
# A DICOM LO value (segment label, series description) has at most 64 characters.
MAX_LONG_STRING_CHARS = 64


@dataclass
class SegOptions:
    """Options for writing a SEG.

    Attributes:
        algorithm_type: ``AUTOMATIC`` (auto-segmentation), ``SEMIAUTOMATIC``
            (prompted results) or ``MANUAL``.
        fractional: write a FRACTIONAL (probability) SEG instead of BINARY.
        compress: None (uncompressed), ``"deflate"`` or ``"jpeg2000"`` (see the module docstring).
        series_description: SeriesDescription of the SEG.
        series_number: SeriesNumber of the SEG; None: the source's plus 1000.
        algorithm_parameters: extra name/value pairs stored with the algorithm
            identification (for example the backbone name).
    """

    algorithm_type: str = "AUTOMATIC"
    fractional: bool = False
    compress: Optional[str] = None
    series_description: str = DEFAULT_SERIES_DESCRIPTION
    series_number: Optional[int] = None
    algorithm_parameters: dict[str, str] = field(default_factory=dict)


def build_segmentation(
    labels: np.ndarray,
    label_table: Mapping[int, str],
    source_datasets: Sequence[pydicom.Dataset],
    options: SegOptions,
    probabilities: Optional[np.ndarray] = None,
) -> hd.seg.Segmentation:
    """Build the SEG dataset for a label map on the source series grid.

    Args:
        labels: integer label map ``(K, J, I)``, ``labels[k]`` on ``source_datasets[k]``.
        label_table: label value -> structure name; values present in ``labels``
            must all have a name; names without voxels are left out (logged).
        source_datasets: the source instances in slice order (pixel data not needed).
        options: see :class:`SegOptions`.
        probabilities: optional float ``(S, K, J, I)`` in [0, 1], one channel per
            table entry in increasing label value, written instead of the 0/1
            masks when ``options.fractional``.

    Raises:
        InputError: shape mismatch, unnamed label values, an empty label map,
            invalid options.
    """
    algorithm_type = _check_algorithm_type(options.algorithm_type)
    if options.compress is not None and options.compress not in COMPRESSIONS:
        raise InputError(f"unknown compression {options.compress!r}: use one of {', '.join(COMPRESSIONS)}, or none")
    _check_shape(labels, source_datasets)
    present = _present_values(labels, label_table)

    # Segment n (1-based) is the n-th present label value in increasing order.
    segment_values = [value for value in sorted(label_table) if value in present]
    skipped = [label_table[value] for value in sorted(label_table) if value not in present]
    if skipped:
        logger.info("Leaving out %d segments without voxels: %s", len(skipped), ", ".join(skipped[:10]) + (", ..." if len(skipped) > 10 else ""))
    if not segment_values:
        raise InputError(
            "the label map contains no labelled voxels, so there is no segment to write; check the segmentation "
            "before exporting it"
        )

    descriptions = [
        segment_description(number, label_table[value], algorithm_type, options.algorithm_parameters)
        for number, value in enumerate(segment_values, start=1)
    ]
    pixel_array = _pixel_array(labels, segment_values, sorted(label_table), options.fractional, probabilities)
    series_number = options.series_number
    if series_number is None:
        series_number = int(source_datasets[0].get("SeriesNumber", 0) or 0) + SERIES_NUMBER_OFFSET

    with warnings.catch_warnings():
        # highdicom warns about the source's PatientName form; it is copied unchanged, as it must be.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name", category=UserWarning)
        segmentation = _segmentation(pixel_array, descriptions, source_datasets, options, series_number)
    if options.compress == "deflate":
        # highdicom builds the uncompressed dataset; pydicom deflates the whole dataset when saving.
        segmentation.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return segmentation


def _segmentation(
    pixel_array: np.ndarray,
    descriptions: list[hd.seg.SegmentDescription],
    source_datasets: Sequence[pydicom.Dataset],
    options: SegOptions,
    series_number: int,
) -> hd.seg.Segmentation:
    return hd.seg.Segmentation(
        source_images=list(source_datasets),
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL if options.fractional else hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=__version__,
        device_serial_number="0",
        series_description=_long_string(options.series_description, "series description"),
        content_label="SEGMOTE",
        content_description=_long_string(options.series_description, "series description"),
        transfer_syntax_uid=_transfer_syntax(options),
        omit_empty_frames=True,
    )


def segment_description(
    number: int, name: str, algorithm_type: str, parameters: Optional[Mapping[str, str]] = None
) -> hd.seg.SegmentDescription:
    """Describe segment ``number`` (1-based) for structure ``name``, with codes and colour from the terminology."""
    term = lookup(name)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        family=codes.cid7162.ArtificialIntelligence,
        version=__version__,
        parameters=dict(parameters) if parameters else None,
    )
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=_long_string(name, "structure name"),
        segmented_property_category=_coded(term.category),
        segmented_property_type=_coded(term.type),
        algorithm_type=algorithm_type,
        algorithm_identification=algorithm,
        anatomic_regions=[_coded(term.anatomic_region)] if term.anatomic_region else None,
        display_color=hd.color.CIELabColor.from_rgb(*term.color),
    )
    _add_modifiers(description, term)
    return description


def _add_modifiers(description: hd.seg.SegmentDescription, term: Term) -> None:
    """Attach laterality: a type modifier, or a modifier of the anatomic region (lesions)."""
    if term.type_modifier is not None:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            _coded(term.type_modifier)
        ]
    if term.anatomic_region is not None and term.anatomic_region_modifier is not None:
        description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [_coded(term.anatomic_region_modifier)]


def _coded(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _check_algorithm_type(algorithm_type: str) -> str:
    value = str(algorithm_type).upper().replace("-", "").replace("_", "")
    if value not in ALGORITHM_TYPES:
        raise InputError(
            f"invalid segment algorithm type {algorithm_type!r}: use AUTOMATIC (auto-segmentation), "
            "SEMIAUTOMATIC (prompted) or MANUAL"
        )
    return value


def _check_shape(labels: np.ndarray, source_datasets: Sequence[pydicom.Dataset]) -> None:
    if not source_datasets:
        raise InputError("no source DICOM instances given; a SEG must reference the images it segments")
    rows, columns = int(source_datasets[0].Rows), int(source_datasets[0].Columns)
    expected = (len(source_datasets), rows, columns)
    if labels.ndim != 3 or tuple(labels.shape) != expected:
        raise InputError(
            f"label map shape {tuple(labels.shape)} does not match the source series (K, J, I) = {expected}; "
            "write the label map on the grid of the series it was computed from"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"label map type {labels.dtype} is not an integer type; pass integer label values")


def _present_values(labels: np.ndarray, label_table: Mapping[int, str]) -> set[int]:
    present = {int(v) for v in np.unique(labels) if v != 0}
    unnamed = sorted(present - set(label_table))
    if unnamed:
        raise InputError(
            f"label values {unnamed} have no name in the label table ({len(label_table)} names); add them to the "
            "table (value -> structure name) or remove them from the label map"
        )
    return present


def _pixel_array(
    labels: np.ndarray,
    segment_values: list[int],
    table_values: list[int],
    fractional: bool,
    probabilities: Optional[np.ndarray],
) -> np.ndarray:
    """Return highdicom's input: a label map of segment numbers ``(K, J, I)``, or ``(K, J, I, S)`` fractions."""
    if fractional and probabilities is not None:
        expected = (len(table_values),) + tuple(labels.shape)
        if tuple(probabilities.shape) != expected:
            raise InputError(f"probabilities shape {tuple(probabilities.shape)} does not match (S, K, J, I) = {expected}")
        channels = [table_values.index(value) for value in segment_values]
        return np.moveaxis(np.clip(probabilities[channels], 0.0, 1.0).astype(np.float32), 0, -1)

    # Map label values to consecutive segment numbers; 0 stays background.
    lookup_table = np.zeros(int(labels.max()) + 1, dtype=np.uint8 if len(segment_values) < 256 else np.uint16)
    for number, value in enumerate(segment_values, start=1):
        lookup_table[value] = number
    segment_numbers = lookup_table[labels]
    if not fractional:
        return segment_numbers
    masks = np.stack([segment_numbers == n for n in range(1, len(segment_values) + 1)], axis=-1)
    return masks.astype(np.float32)


def _transfer_syntax(options: SegOptions) -> str:
    return JPEG2000Lossless if options.compress == "jpeg2000" else ExplicitVRLittleEndian


def _long_string(text: str, field_name: str) -> str:
    if len(text) > MAX_LONG_STRING_CHARS:
        raise InputError(f"{field_name} {text!r} is longer than {MAX_LONG_STRING_CHARS} characters; shorten it")
    return text


def write_seg_for_volume(
    labels: np.ndarray,
    label_table: Mapping[int, str],
    source_files: Sequence[Path],
    output_path: Path,
    algorithm_type: str = "AUTOMATIC",
    *,
    fractional: bool = False,
    compress: Optional[str] = None,
    series_description: str = DEFAULT_SERIES_DESCRIPTION,
    series_number: Optional[int] = None,
    algorithm_parameters: Optional[Mapping[str, str]] = None,
    probabilities: Optional[np.ndarray] = None,
) -> Path:
    """Write a label map ``(K, J, I)`` on a DICOM series grid as a DICOM-SEG file, atomically.

    Args:
        labels: integer label map; ``labels[k]`` lies on ``source_files[k]`` (the
            order of ``Volume.source_files`` / ``DicomSeries.files``).
        label_table: label value -> structure name.
        source_files: the source series' instance files in slice order.
        output_path: the SEG file to write (conventionally ``.dcm``).
        algorithm_type: ``AUTOMATIC`` for auto-segmentation, ``SEMIAUTOMATIC`` for prompted results.
        fractional, compress, series_description, series_number, algorithm_parameters:
            see :class:`SegOptions`.
        probabilities: optional float ``(S, K, J, I)`` for a fractional SEG.

    Returns:
        ``output_path``.

    Raises:
        InputError: no source files, unreadable source files, shape mismatch, unnamed
            label values, empty label map, unwritable output folder.
    """
    from ..engine.volume import atomic_write

    datasets = read_source_headers(source_files)
    options = SegOptions(
        algorithm_type=algorithm_type,
        fractional=fractional,
        compress=compress,
        series_description=series_description,
        series_number=series_number,
        algorithm_parameters=dict(algorithm_parameters or {}),
    )
    segmentation = build_segmentation(np.asarray(labels), label_table, datasets, options, probabilities)
    output_path = Path(output_path)
    atomic_write(output_path, lambda temporary: segmentation.save_as(temporary))
    logger.info("Wrote DICOM-SEG %s with %d segments", output_path, len(segmentation.SegmentSequence))
    return output_path


def read_source_headers(source_files: Sequence[Path]) -> list[pydicom.Dataset]:
    """Read the source instances' headers (no pixel data), in the given order.

    Raises:
        InputError: no files, or a file that is missing or not DICOM.
    """
    if not source_files:
        raise InputError(
            "no source DICOM files: a DICOM-SEG references the DICOM images it was computed on; "
            "segment a DICOM series folder, or write .nii.gz/.nrrd/.seg.nrrd instead"
        )
    datasets = []
    for path in source_files:
        try:
            datasets.append(pydicom.dcmread(path, stop_before_pixels=True))
        except (OSError, pydicom.errors.InvalidDicomError) as error:
            raise InputError(f"cannot read source DICOM file {path}: {error}; pass the series the labels were computed on") from None
    return datasets
