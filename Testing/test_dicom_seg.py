"""DICOM-SEG writing on the real CT series, checked by dciodvfy, dcmqi and highdicom against the label voxels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_helpers import labels_on_series_grid, series_folder
from seg_checks import dciodvfy_errors, dcmqi_segments, highdicom_segments, mismatched_segments, on_reference_grid
from segmote.dicom.seg_writer import write_seg_for_volume
from segmote.dicom.series import DicomSeries, read_series
from segmote.errors import InputError
from segmote.terminology import lookup


@pytest.fixture(scope="module")
def series(shared_data: Path) -> DicomSeries:
    return read_series(series_folder(shared_data))


@pytest.fixture(scope="module")
def labels(shared_data: Path, series: DicomSeries) -> np.ndarray:
    return labels_on_series_grid(shared_data, series.image)


@pytest.fixture(scope="module")
def label_table(shared_data: Path) -> dict[int, str]:
    tables = json.loads((shared_data / "labels_totalsegmentator.json").read_text())
    return {int(value): name for value, name in tables["total"].items()}


@pytest.fixture(scope="module")
def seg_path(tmp_path_factory: pytest.TempPathFactory, series: DicomSeries, labels: np.ndarray, label_table: dict[int, str]) -> Path:
    path = tmp_path_factory.mktemp("seg") / "labels.dcm"
    return write_seg_for_volume(labels, label_table, series.files, path, "AUTOMATIC")


def test_labels_cover_31_structures(labels: np.ndarray) -> None:
    # The shared label map has 31 structures; the grid resampling must keep them all.
    assert len(np.unique(labels)) - 1 == 31


def test_seg_passes_dciodvfy(seg_path: Path) -> None:
    assert dciodvfy_errors(seg_path) == []


def test_dciodvfy_reports_source_error(series: DicomSeries) -> None:
    # Negative control: the source CT lacks Laterality, which dciodvfy reports as an error.
    errors = dciodvfy_errors(series.files[0])
    assert any("Laterality" in line for line in errors)


def test_dcmqi_reads_back_every_segment(
    seg_path: Path, series: DicomSeries, labels: np.ndarray, label_table: dict[int, str], tmp_path: Path
) -> None:
    images = dcmqi_segments(seg_path, tmp_path / "dcmqi")
    decoded = {name: on_reference_grid(image, series.image) for name, image in images.items()}

    assert len(decoded) == 31
    assert mismatched_segments(decoded, labels, label_table) == {}


def test_voxel_check_fails_on_flip_and_shift(
    seg_path: Path, series: DicomSeries, labels: np.ndarray, label_table: dict[int, str], tmp_path: Path
) -> None:
    # Negative control: the comparison used above reports flipped rows and a one-slice shift.
    images = dcmqi_segments(seg_path, tmp_path / "dcmqi")
    decoded = {name: on_reference_grid(image, series.image) for name, image in images.items()}

    flipped = mismatched_segments(decoded, labels[:, ::-1, :], label_table)
    shifted = mismatched_segments(decoded, np.roll(labels, 1, axis=0), label_table)
    assert len(flipped) >= 25
    assert len(shifted) >= 25


def test_seg_with_wrong_slice_order_fails(
    series: DicomSeries, labels: np.ndarray, label_table: dict[int, str], tmp_path: Path
) -> None:
    # Negative control on a written file: frames attached to the reversed source order land on the wrong slices.
    wrong = write_seg_for_volume(labels, label_table, list(reversed(series.files)), tmp_path / "wrong.dcm")
    images = dcmqi_segments(wrong, tmp_path / "dcmqi")
    decoded = {name: on_reference_grid(image, series.image) for name, image in images.items()}

    assert len(mismatched_segments(decoded, labels, label_table)) >= 25


def test_highdicom_reads_back_voxels(seg_path: Path, series: DicomSeries, labels: np.ndarray, label_table: dict[int, str]) -> None:
    decoded = highdicom_segments(seg_path, series.files)

    assert len(decoded) == 31
    assert mismatched_segments(decoded, labels, label_table) == {}
    assert len(mismatched_segments(decoded, labels[:, :, ::-1], label_table)) >= 25


def test_highdicom_reads_back_codes(seg_path: Path, labels: np.ndarray, label_table: dict[int, str]) -> None:
    segmentation = hd.seg.segread(seg_path)
    present = [label_table[int(v)] for v in np.unique(labels) if v != 0]

    assert [segmentation.get_segment_description(n).segment_label for n in segmentation.segment_numbers] == present
    for number in segmentation.segment_numbers:
        description = segmentation.get_segment_description(number)
        term = lookup(description.segment_label)
        assert description.segmented_property_category.value == term.category.value
        assert description.segmented_property_type.value == term.type.value
        assert description.segmented_property_type.scheme_designator == "SCT"
        assert description.algorithm_type.value == "AUTOMATIC"
        assert description.algorithm_identification[0].AlgorithmName == "SegMoTE"
        assert description.algorithm_identification[0].AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
        modifiers = description.SegmentedPropertyTypeCodeSequence[0].get("SegmentedPropertyTypeModifierCodeSequence", [])
        assert [m.CodeValue for m in modifiers] == ([term.type_modifier.value] if term.type_modifier else [])


def test_seg_references_source(seg_path: Path, series: DicomSeries, labels: np.ndarray) -> None:
    seg = pydicom.dcmread(seg_path)
    source = [pydicom.dcmread(path, stop_before_pixels=True) for path in series.files]

    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID", "PatientBirthDate", "PatientSex"):
        assert seg.get(keyword) == source[0].get(keyword), keyword
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {str(d.SOPInstanceUID) for d in source}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert seg.SegmentationType == "BINARY"
    assert seg.SeriesDescription == "SegMoTE segmentation"
    assert seg.SeriesNumber == 1002

    # Empty frames are left out: one frame per (slice, segment) pair with voxels.
    nonempty = sum(int(np.any(labels[k] == v)) for k in range(labels.shape[0]) for v in np.unique(labels) if v != 0)
    assert seg.NumberOfFrames == nonempty


def test_deflated_seg_read_by_dcmqi(series: DicomSeries, labels: np.ndarray, label_table: dict[int, str], tmp_path: Path) -> None:
    path = write_seg_for_volume(labels, label_table, series.files, tmp_path / "deflated.dcm", compress="deflate")

    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    images = dcmqi_segments(path, tmp_path / "dcmqi")
    decoded = {name: on_reference_grid(image, series.image) for name, image in images.items()}
    assert mismatched_segments(decoded, labels, label_table) == {}
    assert mismatched_segments(highdicom_segments(path, series.files), labels, label_table) == {}


def test_jpeg2000_seg_passes_dciodvfy(series: DicomSeries, labels: np.ndarray, label_table: dict[int, str], tmp_path: Path) -> None:
    path = write_seg_for_volume(
        labels, label_table, series.files, tmp_path / "j2k.dcm", "SEMIAUTOMATIC", compress="jpeg2000",
        series_description="prompted", series_number=77,
    )

    seg = pydicom.dcmread(path)
    assert seg.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
    assert seg.SeriesNumber == 77
    assert seg.SeriesDescription == "prompted"
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert dciodvfy_errors(path) == []
    assert mismatched_segments(highdicom_segments(path, series.files), labels, label_table) == {}


def test_fractional_seg(series: DicomSeries, labels: np.ndarray, tmp_path: Path) -> None:
    # A two-structure fractional SEG with a real probability ramp across columns for the liver.
    table = {1: "spleen", 5: "liver"}
    subset = np.where(np.isin(labels, list(table)), labels, 0).astype(np.uint8)
    ramp = np.broadcast_to(np.linspace(0.2, 1.0, subset.shape[2], dtype=np.float32), subset.shape)
    probabilities = np.stack([(subset == 1).astype(np.float32), np.where(subset == 5, ramp, 0.0)])
    path = write_seg_for_volume(subset, table, series.files, tmp_path / "fractional.dcm", fractional=True, probabilities=probabilities)

    assert dciodvfy_errors(path) == []
    segmentation = hd.seg.segread(path)
    assert segmentation.segmentation_type.value == "FRACTIONAL"
    decoded = highdicom_segments(path, series.files)
    assert np.abs(decoded["liver"] - probabilities[1]).max() <= 0.5 / 255 + 1e-6
    assert np.array_equal(decoded["spleen"] > 0.5, subset == 1)


@pytest.mark.parametrize(
    "case, message",
    [
        ("shape", "does not match the source series"),
        ("unnamed", "have no name in the label table"),
        ("empty", "no labelled voxels"),
        ("algorithm", "invalid segment algorithm type"),
        ("no_source", "no source DICOM files"),
        ("compression", "unknown compression"),
    ],
)
def test_seg_bad_inputs(case: str, message: str, series: DicomSeries, labels: np.ndarray, label_table: dict[int, str], tmp_path: Path) -> None:
    arguments = dict(labels=labels, label_table=label_table, source_files=series.files, output_path=tmp_path / "out.dcm")
    if case == "shape":
        arguments["labels"] = labels[:10]
    elif case == "unnamed":
        arguments["label_table"] = {1: "spleen"}
    elif case == "empty":
        arguments["labels"] = np.zeros_like(labels)
    elif case == "algorithm":
        arguments["algorithm_type"] = "GUESSED"
    elif case == "no_source":
        arguments["source_files"] = []
    elif case == "compression":
        arguments["compress"] = "zip"

    with pytest.raises(InputError, match=message):
        write_seg_for_volume(**arguments)
    assert list(tmp_path.iterdir()) == []


def test_dicom_modules_import_no_torch() -> None:
    code = (
        "import sys\n"
        "import segmote.terminology, segmote.dicom.series, segmote.dicom.seg_writer, segmote.dicom.push, segmote.dicom.commands\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
