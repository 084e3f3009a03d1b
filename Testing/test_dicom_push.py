"""PACS push to a real Orthanc with authentication (STOW-RS and C-STORE), read back and compared with what was sent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_helpers import labels_on_series_grid, series_folder
from seg_checks import highdicom_segments, mismatched_segments
from segmote.dicom.push import Credentials, _stow_result, collect_files, read_credentials
from segmote.dicom.seg_writer import write_seg_for_volume
from segmote.dicom.series import read_series
from segmote.errors import InputError

TESTING = Path(__file__).resolve().parent
# The whole scenario (start, two pushes of 21 files, two downloads, stop) takes about 20 s on one core.
SCENARIO_TIMEOUT_SECONDS = 110


def instances_by_uid(folder: Path) -> dict[str, pydicom.Dataset]:
    datasets = [pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm"))]
    return {str(d.SOPInstanceUID): d for d in datasets}


@pytest.fixture(scope="module")
def orthanc_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    for tool, package in (("Orthanc", "orthanc"), ("unshare", "util-linux"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: install the Debian package {package}")
    if not Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so").is_file():
        pytest.fail("the Orthanc DICOMweb plugin is missing: install the Debian package orthanc-dicomweb")

    work = tmp_path_factory.mktemp("orthanc")
    series = read_series(series_folder(shared_data))
    labels = labels_on_series_grid(shared_data, series.image)
    tables = json.loads((shared_data / "labels_totalsegmentator.json").read_text())
    table = {int(value): name for value, name in tables["total"].items()}
    seg = write_seg_for_volume(labels, table, series.files, work / "seg.dcm", "AUTOMATIC")
    password_file = work / "password.txt"
    password_file.write_text("s3cret-for-test\n")
    password_file.chmod(0o600)
    (work / "inputs.json").write_text(json.dumps({
        "files": [str(series_folder(shared_data)), str(seg)], "user": "segmote", "password_file": str(password_file),
    }))

    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTING.parent / "SegMoTESlicer"), os.environ.get("PYTHONPATH", "")]))
    completed = subprocess.run(
        ["unshare", "--net", sys.executable, str(TESTING / "orthanc_helpers.py"), str(work)],
        capture_output=True, text=True, timeout=SCENARIO_TIMEOUT_SECONDS, env=environment,
    )
    log = (work / "orthanc.log").read_text() if (work / "orthanc.log").exists() else ""
    assert completed.returncode == 0, f"scenario failed: {completed.stderr[-3000:]}\nOrthanc log: {log[-2000:]}"
    results = json.loads((work / "results.json").read_text())
    results.update(work=work, series=series, labels=labels, table=table, seg=seg)
    return results


def test_orthanc_requires_authentication(orthanc_run: dict) -> None:
    assert orthanc_run["anonymous_status"] == 401


def test_wrong_password_fails_every_file(orthanc_run: dict) -> None:
    result = orthanc_run["stow_wrong_password"]
    assert result["exit_code"] == 1
    assert result["output"].count("FAILED") == 21
    assert "HTTP 401" in result["output"]
    assert orthanc_run["stored_after_wrong_password"] == 0


@pytest.mark.parametrize("method", ["stow", "cstore"])
def test_push_reports_each_file(orthanc_run: dict, method: str) -> None:
    result = orthanc_run[method]
    assert result["exit_code"] == 0, result["output"]
    assert result["output"].count("OK ") == 21
    assert "21 of 21 files sent" in result["output"]


@pytest.mark.parametrize("method", ["stow", "cstore"])
def test_pacs_copy_matches_sent_files(orthanc_run: dict, method: str) -> None:
    stored = instances_by_uid(orthanc_run["work"] / method)
    sent = {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(path) for path in [*orthanc_run["series"].files, orthanc_run["seg"]])}

    assert set(stored) == set(sent)
    for uid, original in sent.items():
        copy = stored[uid]
        assert copy.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID, uid
        assert copy.PixelData == original.PixelData, uid
        assert copy.PatientID == original.PatientID, uid
        assert copy.StudyInstanceUID == original.StudyInstanceUID, uid


@pytest.mark.parametrize("method", ["stow", "cstore"])
def test_pacs_seg_has_same_voxels(orthanc_run: dict, method: str) -> None:
    stored_seg = next(path for path in (orthanc_run["work"] / method).glob("*.dcm") if pydicom.dcmread(path, stop_before_pixels=True).Modality == "SEG")
    decoded = highdicom_segments(stored_seg, orthanc_run["series"].files)

    assert len(decoded) == 31
    assert mismatched_segments(decoded, orthanc_run["labels"], orthanc_run["table"]) == {}


def test_pacs_ct_decodes_like_source(orthanc_run: dict) -> None:
    stored = instances_by_uid(orthanc_run["work"] / "cstore")
    for path in orthanc_run["series"].files[:3]:
        original = pydicom.dcmread(path)
        assert np.array_equal(stored[str(original.SOPInstanceUID)].pixel_array, original.pixel_array)


def test_wrong_called_aet_fails(orthanc_run: dict) -> None:
    result = orthanc_run["cstore_wrong_aet"]
    assert result["exit_code"] == 1
    assert "association rejected" in result["output"]


def test_orthanc_stopped(orthanc_run: dict) -> None:
    assert orthanc_run["orthanc_exit_code"] is not None
    assert orthanc_run["stored_after_delete"] == 0


def test_credentials_only_from_files(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc123\n")
    assert read_credentials(token, None, None).authorization_header() == "Bearer abc123"
    with pytest.raises(InputError, match="not both"):
        read_credentials(token, "user", tmp_path / "password")
    with pytest.raises(InputError, match="go together"):
        read_credentials(None, "user", None)
    with pytest.raises(InputError, match="cannot read the password file"):
        read_credentials(None, "user", tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(InputError, match="is empty"):
        read_credentials(None, "user", tmp_path / "empty")


def test_push_rejects_non_dicom(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(InputError, match="not a DICOM file"):
        collect_files([tmp_path / "notes.txt"])
    with pytest.raises(InputError, match="no DICOM files found"):
        collect_files([tmp_path])
    with pytest.raises(InputError, match="not found"):
        collect_files([tmp_path / "missing.dcm"])


def test_stow_response_failure_parsed() -> None:
    body = json.dumps({"00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.3"]}, "00081197": {"vr": "US", "Value": [272]}}]}})
    result = _stow_result(Path("x.dcm"), "1.2.3", 409, body)
    assert not result.ok
    assert "0x0110" in result.status
    assert not _stow_result(Path("x.dcm"), "1.2.3", 200, "{}").ok  # stored only when listed as referenced
    assert Credentials().authorization_header() is None
