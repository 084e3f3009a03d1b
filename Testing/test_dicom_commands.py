"""The export and push subcommands through a small argparse front end, on the real CT series and its labels."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_helpers import series_folder
from seg_checks import highdicom_segments, mismatched_segments
from segmote.dicom.commands import add_export_parser, add_push_parser
from segmote.dicom.series import read_series
from segmote.errors import InputError


def run(arguments: list[str]) -> int:
    """Parse and run one subcommand as the CLI would, with a common parent parser that defines --series."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--series")
    parser = argparse.ArgumentParser(prog="segmote")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_export_parser(subparsers, parents=[common])
    add_push_parser(subparsers, parents=[common])
    args = parser.parse_args(arguments)
    return args.func(args)


@pytest.fixture
def labelled(shared_data: Path, tmp_path: Path) -> tuple[Path, dict[int, str]]:
    """The shared label map (rows flipped relative to the series) with its table beside it."""
    labels = tmp_path / "labels.nii.gz"
    labels.write_bytes((shared_data / "ct_abdomen_dicom" / "labels.nii.gz").read_bytes())
    tables = json.loads((shared_data / "labels_totalsegmentator.json").read_text())
    Path(str(labels) + ".labels.json").write_text(json.dumps(tables["total"]))
    return labels, {int(value): name for value, name in tables["total"].items()}


def test_export_flipped_label_map(shared_data: Path, labelled: tuple[Path, dict[int, str]], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    labels_path, table = labelled
    output = tmp_path / "seg.dcm"

    code = run(["export", str(labels_path), "--source", str(series_folder(shared_data)), "--output", str(output), "--series", "2"])

    assert code == 0
    assert "Wrote" in capsys.readouterr().out
    series = read_series(series_folder(shared_data))
    # The stored rows run the other way: flipping the raw array puts it on the series grid.
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_path)))[:, ::-1, :]
    decoded = highdicom_segments(output, series.files)
    assert len(decoded) == 31
    assert mismatched_segments(decoded, expected, table) == {}
    assert pydicom.dcmread(output, stop_before_pixels=True).SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"


def test_export_rejects_other_grid(shared_data: Path, labelled: tuple[Path, dict[int, str]], tmp_path: Path) -> None:
    labels_path, _ = labelled
    image = sitk.ReadImage(str(labels_path))
    image.SetOrigin(np.array(image.GetOrigin()) + np.array([0.4, 0.0, 0.0]))  # off the voxel centres
    shifted = tmp_path / "shifted.nii.gz"
    sitk.WriteImage(image, str(shifted))
    Path(str(shifted) + ".labels.json").write_text(Path(str(labels_path) + ".labels.json").read_text())

    with pytest.raises(InputError, match="does not match the DICOM series"):
        run(["export", str(shifted), "--source", str(series_folder(shared_data)), "--output", str(tmp_path / "out.dcm")])
    assert not (tmp_path / "out.dcm").exists()


def test_export_needs_label_table(shared_data: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.nii.gz"
    labels.write_bytes((shared_data / "ct_abdomen_dicom" / "labels.nii.gz").read_bytes())
    with pytest.raises(InputError, match="label table not found"):
        run(["export", str(labels), "--source", str(series_folder(shared_data)), "--output", str(tmp_path / "out.dcm")])


def test_export_keeps_existing_output(shared_data: Path, labelled: tuple[Path, dict[int, str]], tmp_path: Path) -> None:
    labels_path, _ = labelled
    existing = tmp_path / "seg.dcm"
    existing.write_text("keep me")
    with pytest.raises(InputError, match="--overwrite"):
        run(["export", str(labels_path), "--source", str(series_folder(shared_data)), "--output", str(existing)])
    assert existing.read_text() == "keep me"


def test_export_from_non_dicom_source(labelled: tuple[Path, dict[int, str]], tmp_path: Path) -> None:
    labels_path, _ = labelled
    with pytest.raises(InputError, match="no DICOM images found"):
        run(["export", str(labels_path), "--source", str(tmp_path), "--output", str(tmp_path / "out.dcm")])


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--dimse", "127.0.0.1", "104"], "needs --called-aet"),
        (["--dimse", "127.0.0.1", "http", "--called-aet", "PACS"], "invalid port"),
        (["--dimse", "127.0.0.1", "104", "--called-aet", "A_VERY_LONG_AE_TITLE"], "invalid AE title"),
        (["--dicomweb", "ftp://pacs/dicom-web"], "invalid DICOMweb URL"),
        (["--dicomweb", "http://127.0.0.1:9/dicom-web", "--timeout", "0"], "invalid --timeout"),
    ],
)
def test_push_bad_options(shared_data: Path, arguments: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        run(["push", str(series_folder(shared_data))] + arguments)


def test_push_refused_connection_names_each_file(shared_data: Path, capsys: pytest.CaptureFixture) -> None:
    # Port 9 (discard) has no listener here: every file fails, each one reported, none hangs.
    files = sorted(series_folder(shared_data).iterdir())[:2]
    code = run(["push", *map(str, files), "--dicomweb", "http://127.0.0.1:9/dicom-web", "--timeout", "5"])

    output = capsys.readouterr().out
    assert code == 1
    assert output.count("FAILED") == 2
    assert all(path.name in output for path in files)
    assert "0 of 2 files sent, 2 failed" in output
