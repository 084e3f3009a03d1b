"""Terminology entries and export from the Slicer module: DICOM-SEG on the real CT series, NIfTI label maps."""

from __future__ import annotations

import json
import random

import highdicom
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from segmote import terminology
from segmote.dicom.label_grid import labels_on_series_grid
from segmote.engine.volume import read_volume, to_sitk
from segmote.errors import InputError
from segmote.geometry import Grid
from SegMoTELib.export import export_dicom_seg, export_label_map, label_table, labels_in_file_order, safe_file_stem
from SegMoTELib.terminology import (
    ANATOMIC_CONTEXT,
    CATEGORY_TYPE_CONTEXT,
    CodedConcept,
    parse_terminology_entry,
    segment_style,
)

LIVER, SPLEEN = 5, 1


@pytest.fixture(scope="module")
def series(shared_data):
    """The real CT series (20 slices of 512 x 512), its files in slice order, and liver/spleen labels on its grid."""
    volume = read_volume(shared_data / "ct_abdomen_dicom" / "series")
    reference = labels_on_series_grid(
        sitk.ReadImage(str(shared_data / "ct_abdomen_dicom" / "labels.nii.gz")), to_sitk(volume.array, volume.grid), "labels"
    )
    labels = np.zeros(reference.shape, dtype=np.uint8)
    labels[reference == LIVER] = 1
    labels[reference == SPLEEN] = 2
    return volume, labels


def test_liver_terminology_entry():
    style = segment_style("liver")

    fields = style.terminology.split("~")
    assert len(fields) == 7
    assert fields[0] == CATEGORY_TYPE_CONTEXT
    assert fields[1] == "SCT^91723000^Anatomical Structure"
    assert fields[2] == "SCT^10200004^Liver"
    assert fields[3] == "^^"
    assert fields[4] == ANATOMIC_CONTEXT
    assert fields[5:] == ["^^", "^^"]
    assert style.name == "liver"
    term = terminology.lookup("liver")
    assert style.color_rgb == tuple(channel / 255.0 for channel in term.color)


def test_parser_reads_slicer_default_entry():
    """vtkSegment's default terminology string in Slicer 5.6 (vtkSegment.cxx) has the same layout."""
    slicer_default = (
        "Segmentation category and type - 3D Slicer General Anatomy list~SCT^85756007^Tissue~SCT^85756007^Tissue"
        "~^^~Anatomic codes - DICOM master list~^^~^^"
    )

    entry = parse_terminology_entry(slicer_default)

    assert entry["type"] == CodedConcept("85756007", "SCT", "Tissue")
    assert entry["type_modifier"] is None
    assert entry["anatomic_context"] == ANATOMIC_CONTEXT


def test_sided_structure_carries_laterality():
    entry = parse_terminology_entry(segment_style("kidney_left").terminology)

    assert entry["type"] == CodedConcept("64033007", "SCT", "Kidney")
    assert entry["type_modifier"] == CodedConcept("7771000", "SCT", "Left")
    assert entry["anatomic_region"] is None


def test_every_table_term_serialises():
    for name, term in terminology.all_terms().items():
        entry = parse_terminology_entry(segment_style(name).terminology)
        assert entry["type"].value == term.type.value, name
        assert entry["category"].value == term.category.value, name
        if term.anatomic_region is not None:
            assert entry["anatomic_context"] == ANATOMIC_CONTEXT
            assert entry["anatomic_region"].value == term.anatomic_region.value


def test_unknown_name_gets_generic_code():
    style = segment_style("my_structure")

    entry = parse_terminology_entry(style.terminology)
    assert entry["type"] == CodedConcept("91723000", "SCT", "Anatomical Structure")
    assert style.name == "my_structure"
    assert all(0.0 <= channel <= 1.0 for channel in style.color_rgb)


def test_separator_in_code_is_rejected():
    with pytest.raises(ValueError, match="separators"):
        CodedConcept("1~2", "SCT", "Bad").serialize()


def test_labels_follow_shuffled_file_order(series):
    volume, labels = series
    files = list(volume.source_files)
    order = list(range(len(files)))
    random.Random(7).shuffle(order)
    positions = [pydicom.dcmread(files[n], stop_before_pixels=True).ImagePositionPatient for n in order]

    ordered = labels_in_file_order(labels, volume.grid, positions)

    for position, n in enumerate(order):
        assert np.array_equal(ordered[position], labels[n]), f"file {n} got another slice"
    assert not np.array_equal(ordered, labels), "the shuffled order should differ from the slice order"


def test_files_off_the_grid_are_rejected(series):
    volume, labels = series
    grid = volume.grid
    shifted = Grid.create(grid.shape_kji, np.asarray(grid.origin_lps) + [0.5, 0.0, 0.0], grid.spacing_ijk, grid.direction)
    positions = [pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient for path in volume.source_files]

    with pytest.raises(InputError, match="does not lie on a slice"):
        labels_in_file_order(labels, shifted, positions)


def test_dicom_seg_references_series_and_keeps_voxels(series, tmp_path):
    volume, labels = series
    reversed_files = list(reversed(volume.source_files))
    output = tmp_path / "liver_spleen.dcm"

    path = export_dicom_seg(labels, volume.grid, label_table(["liver", "spleen"]), reversed_files, output)

    seg = highdicom.seg.segread(str(path))
    source = pydicom.dcmread(volume.source_files[0], stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["liver", "spleen"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    for k, file in enumerate(volume.source_files):
        uid = pydicom.dcmread(file, stop_before_pixels=True).SOPInstanceUID
        if not labels[k].any():
            continue
        frames = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[uid], segment_numbers=[1, 2], combine_segments=True, skip_overlap_checks=True
        )
        assert np.array_equal(frames[0], labels[k]), f"slice {k} changed in the SEG"
    assert list(tmp_path.iterdir()) == [output], "export left other files behind"


def test_dicom_seg_needs_source_files(series, tmp_path):
    volume, labels = series

    with pytest.raises(InputError, match="NRRD or NIfTI"):
        export_dicom_seg(labels, volume.grid, label_table(["liver", "spleen"]), [], tmp_path / "x.dcm")
    with pytest.raises(InputError, match=".dcm"):
        export_dicom_seg(labels, volume.grid, label_table(["liver", "spleen"]), volume.source_files, tmp_path / "x.nrrd")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".nii.gz", ".seg.nrrd"])
def test_label_map_export_round_trip(series, tmp_path, suffix):
    volume, labels = series
    path = export_label_map(labels, volume.grid, tmp_path / f"liver_spleen{suffix}", label_table(["liver", "spleen"]))

    image = sitk.ReadImage(str(path))
    assert np.array_equal(sitk.GetArrayFromImage(image), labels)
    np.testing.assert_allclose(image.GetOrigin(), volume.grid.origin_lps)
    table = json.loads((tmp_path / f"liver_spleen{suffix}.labels.json").read_text())
    assert table == {"1": "liver", "2": "spleen"}
    if suffix == ".seg.nrrd":
        assert image.GetMetaData("Segment0_Name") == "liver"
        assert image.GetMetaData("Segment1_Name") == "spleen"


def test_export_names_and_formats(tmp_path):
    assert label_table(["liver", "spleen"]) == {1: "liver", 2: "spleen"}
    with pytest.raises(InputError, match="unique"):
        label_table(["liver", "liver"])
    assert safe_file_stem("CT abdomen / SegMoTE") == "CT_abdomen_SegMoTE"
    assert safe_file_stem("///") == "segmentation"
    with pytest.raises(InputError, match="unsupported export file"):
        export_label_map(np.zeros((1, 2, 2), np.uint8), Grid.create((1, 2, 2), (0, 0, 0), (1, 1, 1), np.eye(3)),
                         tmp_path / "x.png", {1: "liver"})
