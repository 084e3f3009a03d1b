"""Bad input to ``segmote segment``: exit status 2, one plain line naming the problem, no file left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from segmote.cli import main

LIVER_BOX_IJK = [[20, 30, 15], [60, 70, 15]]


def _prompts(tmp_path: Path, data) -> Path:
    path = tmp_path / "prompts.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _box(box, system="IJK", view="axial"):
    return {"coordinate_system": system, "segments": [{"name": "liver", "view": view, "box": box}]}


def _run(capsys, tmp_path: Path, input_path, prompts, *extra: str) -> tuple[int, str]:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    code = main(["segment", str(input_path), "--prompts", str(prompts), "--output", str(out / "labels.nii.gz"),
                 "--adapters", "none", "--device", "cpu", "--quiet", *extra])
    error = capsys.readouterr().err
    assert list(out.iterdir()) == [], "a failed run left files behind"
    return code, error


@pytest.fixture
def small_ct(shared_data) -> Path:
    return shared_data / "ct_abdomen_small" / "ct.nii.gz"


def _assert_one_line(error: str, *words: str) -> None:
    lines = [line for line in error.splitlines() if line.strip()]
    assert len(lines) == 1, error
    assert "Traceback" not in error
    for word in words:
        assert word in lines[0], lines[0]


def test_missing_input_file(capsys, tmp_path):
    code, error = _run(capsys, tmp_path, tmp_path / "absent.nii.gz", _prompts(tmp_path, _box(LIVER_BOX_IJK)))
    assert code == 2
    _assert_one_line(error, "not found", "absent.nii.gz")


def test_corrupt_input_file(capsys, tmp_path):
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b this is not a NIfTI file" * 10)
    code, error = _run(capsys, tmp_path, corrupt, _prompts(tmp_path, _box(LIVER_BOX_IJK)))
    assert code == 2
    _assert_one_line(error, "cannot read", "corrupt.nii.gz")


def test_four_dimensional_input(capsys, tmp_path):
    path = tmp_path / "series4d.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 4, 8, 8), np.int16)), str(path))
    code, error = _run(capsys, tmp_path, path, _prompts(tmp_path, _box(LIVER_BOX_IJK)))
    assert code == 2
    _assert_one_line(error, "4-D", "series4d.nii.gz")


def test_nan_voxels(capsys, tmp_path):
    array = np.zeros((4, 16, 16), np.float32)
    array[1, 2, 3] = np.nan
    array[2, 2, 3] = np.inf
    path = tmp_path / "nan.mha"  # the NIfTI writer would replace NaN
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    code, error = _run(capsys, tmp_path, path, _prompts(tmp_path, _box([[1, 1, 1], [5, 5, 1]])))
    assert code == 2
    _assert_one_line(error, "2 NaN or infinite voxels")


@pytest.mark.parametrize(
    "prompts,words",
    [
        ({"coordinate_system": "IJK", "segments": []}, ["no segments"]),
        ({"coordinate_system": "IJK", "segments": [{"name": "liver"}]}, ["no prompt", "liver"]),
        ({"coordinate_system": "IJK", "segments": [{"name": "liver", "points": [[1, 2, 3]], "point_labels": [0]}]},
         ["only background points"]),
        (_box(LIVER_BOX_IJK, system="XYZ"), ["coordinate_system", "XYZ"]),
        (_box(LIVER_BOX_IJK, view="oblique"), ["unknown view", "oblique"]),
        ("{not json", ["not valid JSON"]),
        ({"coordinate_system": "IJK", "segments": [{"name": "liver", "box": LIVER_BOX_IJK, "veiw": "axial"}]},
         ["unknown key", "'veiw'", "view"]),
        ({"coordinate_system": "IJK", "segments": [{"name": "liver", "box": LIVER_BOX_IJK}], "propagte": True},
         ["unknown key", "'propagte'"]),
    ],
)
def test_invalid_prompts_file(capsys, tmp_path, small_ct, prompts, words):
    code, error = _run(capsys, tmp_path, small_ct, _prompts(tmp_path, prompts))
    assert code == 2
    _assert_one_line(error, *words)


def test_prompt_outside_volume(capsys, tmp_path, small_ct):
    code, error = _run(capsys, tmp_path, small_ct, _prompts(tmp_path, _box([[20, 30, 15], [500, 70, 15]])))
    assert code == 2
    _assert_one_line(error, "outside the volume")


def test_second_segment_invalid_writes_nothing(capsys, tmp_path, small_ct):
    prompts = {"coordinate_system": "IJK", "segments": [
        {"name": "liver", "box": LIVER_BOX_IJK},
        {"name": "spleen", "points": [[10, 10, 99]]},
    ]}
    code, error = _run(capsys, tmp_path, small_ct, _prompts(tmp_path, prompts))
    assert code == 2
    _assert_one_line(error, "spleen", "outside the volume")


def test_zero_area_box(capsys, tmp_path, small_ct):
    code, error = _run(capsys, tmp_path, small_ct, _prompts(tmp_path, _box([[20, 30, 15], [20, 70, 15]])))
    assert code == 2
    _assert_one_line(error, "zero area")


def test_prompts_on_different_slices(capsys, tmp_path, small_ct):
    code, error = _run(capsys, tmp_path, small_ct, _prompts(tmp_path, _box([[20, 30, 10], [60, 70, 15]])))
    assert code == 2
    _assert_one_line(error, "different axial slices")


def test_unwritable_output_folder(capsys, tmp_path, small_ct):
    prompts = _prompts(tmp_path, _box(LIVER_BOX_IJK))
    code = main(["segment", str(small_ct), "--prompts", str(prompts), "--output",
                 str(tmp_path / "missing" / "labels.nii.gz"), "--adapters", "none", "--quiet"])
    assert code == 2
    _assert_one_line(capsys.readouterr().err, "output folder does not exist")


def test_dicom_seg_for_nifti_input(capsys, tmp_path, small_ct):
    prompts = _prompts(tmp_path, _box(LIVER_BOX_IJK))
    code = main(["segment", str(small_ct), "--prompts", str(prompts), "--output", str(tmp_path / "seg.dcm"),
                 "--adapters", "none", "--quiet"])
    assert code == 2
    _assert_one_line(capsys.readouterr().err, "not a DICOM series", "source")
    assert not (tmp_path / "seg.dcm").exists()


def test_missing_checkpoint(capsys, tmp_path, small_ct, monkeypatch):
    monkeypatch.delenv("SEGMOTE_CHECKPOINT", raising=False)
    code, error = _run(capsys, tmp_path, small_ct, _prompts(tmp_path, _box(LIVER_BOX_IJK)), "--backbone", "sam-vit-b")
    assert code == 2
    _assert_one_line(error, "sam_vit_b_01ec64.pth", "--checkpoint")


def test_error_from_subprocess_has_no_traceback(tmp_path):
    """The installed entry point prints one line and exits 2, as a user sees it."""
    completed = subprocess.run(
        [sys.executable, "-m", "segmote.cli", "segment", str(tmp_path / "absent.nrrd"), "--prompts",
         str(tmp_path / "p.json"), "--output", str(tmp_path / "o.nii.gz")],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert completed.stderr.strip().count("\n") == 0
    assert "prompts file not found" in completed.stderr
