"""Label map outputs, evaluation in physical space, 2-D and single-file DICOM input, intensity scaling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from segmote.cli import main
from segmote.engine.intensity import CT_WINDOWS, intensity_scaling
from segmote.engine.volume import read_volume, volume_from_array, write_label_map
from segmote.errors import InputError


def test_seg_nrrd_carries_segment_names(shared_data, tmp_path):
    volume = read_volume(shared_data / "ct_abdomen_small" / "ct.nii.gz")
    labels = np.zeros(volume.grid.shape_kji, np.uint8)
    labels[10:12, 20:30, 30:40] = 1
    labels[5, 5, 5] = 2
    path = write_label_map(labels, volume.grid, tmp_path / "out.seg.nrrd", {1: "liver", 2: "spleen"})
    image = sitk.ReadImage(str(path))
    assert image.GetMetaData("Segment0_Name") == "liver"
    assert image.GetMetaData("Segment1_Name") == "spleen"
    assert image.GetMetaData("Segment1_LabelValue") == "2"
    assert image.GetMetaData("Segment0_Extent") == "30 39 20 29 10 11"
    assert np.allclose(image.GetDirection(), volume.grid.direction.flatten())
    assert np.array_equal(sitk.GetArrayFromImage(image), labels)
    assert json.loads((tmp_path / "out.seg.nrrd.labels.json").read_text()) == {"1": "liver", "2": "spleen"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.seg.nrrd", "out.seg.nrrd.labels.json"]


def test_evaluate_compares_in_physical_space(shared_data, tmp_path, capsys):
    """The reference stored with flipped rows scores 1.0 against itself resampled onto the series grid."""
    from engine_cases import labels_on_grid

    folder = shared_data / "ct_abdomen_dicom"
    volume = read_volume(folder / "series")
    on_grid = labels_on_grid(folder / "labels.nii.gz", volume)
    table = {5: "liver", 1: "spleen"}
    resampled = np.where(np.isin(on_grid, list(table)), on_grid, 0)
    write_label_map(resampled, volume.grid, tmp_path / "pred.nii.gz", table)
    reference_table = tmp_path / "ref.json"
    reference_table.write_text(json.dumps({"5": "liver", "1": "spleen", "6": "stomach"}))

    code = main(["evaluate", str(tmp_path / "pred.nii.gz"), str(folder / "labels.nii.gz"),
                 "--ref-labels", str(reference_table), "--json"])
    scores = {row["name"]: row for row in json.loads(capsys.readouterr().out)["structures"]}
    assert code == 0
    assert scores["liver"]["dice"] == pytest.approx(1.0)
    assert scores["spleen"]["surface_dice"] == pytest.approx(1.0)

    # Negative control: the same voxels written in raw array order on the flipped grid do not match.
    flipped = sitk.ReadImage(str(folder / "labels.nii.gz"))
    wrong = sitk.GetImageFromArray(resampled)
    wrong.CopyInformation(flipped)
    sitk.WriteImage(wrong, str(tmp_path / "wrong.nii.gz"))
    (tmp_path / "wrong.nii.gz.labels.json").write_text(json.dumps({"5": "liver", "1": "spleen"}))
    main(["evaluate", str(tmp_path / "wrong.nii.gz"), str(folder / "labels.nii.gz"),
          "--ref-labels", str(reference_table), "--json"])
    wrong_scores = {row["name"]: row for row in json.loads(capsys.readouterr().out)["structures"]}
    assert wrong_scores["liver"]["dice"] < 0.9


def test_single_file_inputs_one_slice(shared_data):
    series = read_volume(shared_data / "ct_abdomen_dicom" / "series")
    single = read_volume(series.source_files[5])
    assert single.array.shape == (1, 512, 512)
    assert single.modality == "CT"
    assert np.array_equal(single.array[0], series.array[5])
    png = read_volume(shared_data / "ct_slices_2d" / "images" / "s0114_111.png")
    assert png.array.shape == (1, 181, 258)
    assert png.is_8bit


def test_intensity_scaling_choices(shared_data):
    ct = read_volume(shared_data / "ct_abdomen_small" / "ct.nii.gz")
    scaling = intensity_scaling(ct)
    level, width = CT_WINDOWS["soft_tissue"]
    assert (scaling.low, scaling.high) == (level - width / 2, level + width / 2)
    assert intensity_scaling(ct, window="lung").description.startswith("CT window lung")

    png = read_volume(shared_data / "ct_slices_2d" / "images" / "amos_0004_75.png")
    assert (intensity_scaling(png).low, intensity_scaling(png).high) == (0.0, 255.0)
    with pytest.raises(InputError, match="already windowed"):
        intensity_scaling(png, window="bone")

    # Made-up MR-like values (not real data): percentiles map to [0, 1].
    values = np.linspace(0, 1000, 4 * 16 * 16, dtype=np.float32).reshape(4, 16, 16)
    mr = volume_from_array(values, modality="MR")
    scaling = intensity_scaling(mr)
    assert scaling.low == pytest.approx(np.percentile(values, 0.5), rel=1e-3)
    assert scaling.high == pytest.approx(np.percentile(values, 99.5), rel=1e-3)
    with pytest.raises(InputError, match="not CT"):
        intensity_scaling(mr, window="soft_tissue")
