"""DICOM series reading on the real CT series: geometry from the headers, slice order, and errors for bad folders."""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_helpers import copy_series, new_series_uids, series_folder
from segmote.dicom.series import list_series, read_series
from segmote.errors import InputError


def header_geometry_errors(image: sitk.Image, files: list[Path]) -> list[str]:
    """Compare an image's geometry with what each file's headers imply; return the differences found."""
    errors = []
    for k, path in enumerate(files):
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        position = np.array(image.TransformIndexToPhysicalPoint((0, 0, k)))
        if not np.allclose(position, np.array(dataset.ImagePositionPatient, dtype=float), atol=1e-4):
            errors.append(f"slice {k}: origin {position} != ImagePositionPatient {list(dataset.ImagePositionPatient)}")
        direction = np.array(image.GetDirection()).reshape(3, 3)
        orientation = np.array(dataset.ImageOrientationPatient, dtype=float)
        if not np.allclose(direction[:, 0], orientation[:3]) or not np.allclose(direction[:, 1], orientation[3:]):
            errors.append(f"slice {k}: direction {direction.tolist()} != ImageOrientationPatient {orientation}")
        row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)
        if not np.allclose(image.GetSpacing()[:2], (column_spacing, row_spacing)):
            errors.append(f"slice {k}: spacing {image.GetSpacing()[:2]} != PixelSpacing {list(dataset.PixelSpacing)}")
    return errors


def test_series_geometry_matches_headers(shared_data: Path) -> None:
    series = read_series(series_folder(shared_data))

    assert series.image.GetSize() == (512, 512, 20)
    assert series.modality == "CT"
    assert series.series_uid == "1.2.826.0.1.3680043.8.498.86222413802212225249538874049526878701"
    assert len(series.files) == 20
    assert header_geometry_errors(series.image, series.files) == []
    assert series.image.GetSpacing()[2] == pytest.approx(2.0)


def test_geometry_check_detects_shift(shared_data: Path) -> None:
    # Negative control: the header comparison fails on an image moved by one slice.
    series = read_series(series_folder(shared_data))
    moved = sitk.Image(series.image)
    moved.SetOrigin(moved.TransformIndexToPhysicalPoint((0, 0, 1)))

    assert header_geometry_errors(moved, series.files)
    assert header_geometry_errors(series.image, list(reversed(series.files)))


def test_series_pixels_match_pydicom(shared_data: Path) -> None:
    # pydicom decodes JPEG 2000 with pylibjpeg, independently of SimpleITK/GDCM.
    series = read_series(series_folder(shared_data))
    volume = sitk.GetArrayFromImage(series.image)  # (K, J, I)

    for k in (0, 7, 19):
        dataset = pydicom.dcmread(series.files[k])
        expected = dataset.pixel_array * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
        assert np.array_equal(volume[k], expected), f"slice {k} differs from {series.files[k].name}"


def test_series_sorted_by_position_not_name(shared_data: Path, tmp_path: Path) -> None:
    source = series_folder(shared_data)
    reference = read_series(source)
    names = [f"IM{n:04d}" for n in random.Random(7).sample(range(1000), 20)]
    nested = tmp_path / "a" / "b"
    copy_series(source, nested, rename=lambda index, path: names[index])
    (tmp_path / "README.txt").write_text("not a DICOM file\n")

    shuffled = read_series(tmp_path)

    assert np.array_equal(sitk.GetArrayFromImage(shuffled.image), sitk.GetArrayFromImage(reference.image))
    assert shuffled.image.GetOrigin() == reference.image.GetOrigin()
    original_names = sorted(p.name for p in source.iterdir())
    renamed_to_original = {names[i]: original_names[i] for i in range(20)}
    assert [renamed_to_original[p.name] for p in shuffled.files] == [p.name for p in reference.files]


def test_empty_folder_rejected(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here\n")
    with pytest.raises(InputError, match="no DICOM images found"):
        read_series(tmp_path)


def test_missing_folder_rejected(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="DICOM folder not found"):
        read_series(tmp_path / "missing")


def test_several_series_listed_and_picked(shared_data: Path, tmp_path: Path) -> None:
    source = series_folder(shared_data)
    copy_series(source, tmp_path / "first")
    copy_series(source, tmp_path / "second", edit=new_series_uids(series_number=7))

    infos = list_series(tmp_path)
    assert [(info.series_number, info.count, info.modality) for info in infos] == [(2, 20, "CT"), (7, 20, "CT")]

    with pytest.raises(InputError) as error:
        read_series(tmp_path)
    message = str(error.value)
    assert "2 series" in message
    assert "--series UID|NUMBER" in message
    assert infos[0].series_uid in message
    assert infos[1].series_uid in message
    assert "'CT Body 3.0'" in message
    assert "\n" not in message

    by_number = read_series(tmp_path, series="7")
    assert by_number.series_uid == infos[1].series_uid
    by_uid = read_series(tmp_path, series=infos[0].series_uid)
    assert all(path.parent.name == "first" for path in by_uid.files)

    with pytest.raises(InputError, match="series '99' not found"):
        read_series(tmp_path, series="99")


def test_missing_slice_rejected(shared_data: Path, tmp_path: Path) -> None:
    copy_series(series_folder(shared_data), tmp_path)
    sorted(tmp_path.iterdir())[10].unlink()
    with pytest.raises(InputError, match="inconsistent slice spacing"):
        read_series(tmp_path)


def test_mixed_orientation_rejected(shared_data: Path, tmp_path: Path) -> None:
    def tilt_one(index: int, dataset: pydicom.Dataset) -> None:
        if index == 5:
            dataset.ImageOrientationPatient = [1, 0, 0, 0, 0.9998477, -0.0174524]

    copy_series(series_folder(shared_data), tmp_path, edit=tilt_one)
    with pytest.raises(InputError, match="inconsistent orientation"):
        read_series(tmp_path)


def test_mixed_pixel_spacing_rejected(shared_data: Path, tmp_path: Path) -> None:
    def respace_one(index: int, dataset: pydicom.Dataset) -> None:
        if index == 3:
            dataset.PixelSpacing = [0.8, 0.8]

    copy_series(series_folder(shared_data), tmp_path, edit=respace_one)
    with pytest.raises(InputError, match="inconsistent pixel spacing"):
        read_series(tmp_path)


def test_gantry_tilt_rejected(shared_data: Path, tmp_path: Path) -> None:
    # A 15-degree tilt: each slice 2 mm further along z moves 2 * tan(15 deg) mm along y.
    shear = np.tan(np.radians(15.0))

    def tilt(index: int, dataset: pydicom.Dataset) -> None:
        x, y, z = (float(v) for v in dataset.ImagePositionPatient)
        dataset.ImagePositionPatient = [x, y + shear * (z + 766.5), z]
        dataset.GantryDetectorTilt = 15

    copy_series(series_folder(shared_data), tmp_path, edit=tilt)
    with pytest.raises(InputError) as error:
        read_series(tmp_path)
    assert "gantry tilt 15 degrees" in str(error.value)
    assert "not supported" in str(error.value)


def test_missing_pixel_data_rejected(shared_data: Path, tmp_path: Path) -> None:
    def strip_pixels(index: int, dataset: pydicom.Dataset) -> None:
        if index == 8:
            del dataset.PixelData

    copy_series(series_folder(shared_data), tmp_path, edit=strip_pixels)
    with pytest.raises(InputError, match="has no pixel data"):
        read_series(tmp_path)


@pytest.mark.parametrize("damage", ["truncated_pixels", "garbage_header"])
def test_corrupt_file_skipped_or_strict(shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str) -> None:
    source = series_folder(shared_data)
    copy_series(source, tmp_path)
    good = sorted(source.iterdir())[4].read_bytes()
    if damage == "truncated_pixels":
        broken = good[: len(good) // 2]  # header intact, JPEG 2000 stream cut in half
    else:
        broken = good[:132] + bytes(range(256)) * 8  # DICOM marker, then no valid elements
    (tmp_path / "broken.dcm").write_bytes(broken)

    with caplog.at_level(logging.WARNING, logger="segmote.dicom.series"):
        series = read_series(tmp_path)
    assert len(series.files) == 20
    assert all(path.name != "broken.dcm" for path in series.files)
    assert any("broken.dcm" in record.getMessage() for record in caplog.records)

    with pytest.raises(InputError, match="broken.dcm"):
        read_series(tmp_path, strict=True)


def test_single_slice_series(shared_data: Path, tmp_path: Path) -> None:
    only = sorted(series_folder(shared_data).iterdir())[0]
    shutil.copyfile(only, tmp_path / only.name)
    series = read_series(tmp_path)
    assert series.image.GetSize() == (512, 512, 1)
    assert header_geometry_errors(series.image, series.files) == []
