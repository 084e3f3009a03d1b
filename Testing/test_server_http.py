"""The server's HTTP contract on a real uvicorn process: auth, limits, expiry, capacity, errors, OpenAPI.

These tests run few or no encodes; segmentation results are checked in
test_server_segment.py.
"""

from __future__ import annotations

import http.client
import io
import json
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from segmote.engine.volume import read_volume
from segmote.wire import (
    HEADER_BASE_REVISION,
    HEADER_CLIENT_API_VERSION,
    HEADER_UPLOAD,
    PATH_HEALTH,
    PATH_SESSIONS,
    PATH_VERSION,
    dump_header_json,
    encode_array,
)
from test_server_harness import ServerProcess, error_of, http_request, write_token

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UPLOAD_LIMIT_MB = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A server with a token, a 4 MiB upload limit and the bare backbone."""
    token_file = write_token(tmp_path_factory.mktemp("token"), TOKEN)
    with ServerProcess(
        ["--adapters", "none", "--token-file", str(token_file), "--max-upload-mb", str(UPLOAD_LIMIT_MB), "--max-sessions", "4"]
    ) as process:
        yield process


@pytest.fixture(scope="module")
def ct_bytes(shared_data: Path) -> bytes:
    return (shared_data / "ct_abdomen_small" / "ct.nii.gz").read_bytes()


def nifti_upload_headers(**extra: str) -> dict:
    return {**AUTH, HEADER_UPLOAD: dump_header_json({"format": "nii.gz"}), **extra}


def open_session(server: ServerProcess, ct_bytes: bytes) -> str:
    status, _, body = http_request(server.url, "POST", PATH_SESSIONS, ct_bytes, nifti_upload_headers())
    assert status == 201, body
    return json.loads(body)["session_id"]


def assert_error(status: int, body: bytes, expected_status: int, field: str | None = None) -> dict:
    """Check an error response: status, the JSON error body, and no traceback."""
    assert status == expected_status, body
    error = error_of(body)
    assert error["status"] == expected_status
    assert error["message"]
    assert len(error["error_id"]) == 12
    assert b"Traceback" not in body
    if field is not None:
        assert error["field"] == field, error
    return error


# Version, health, OpenAPI


def test_version_needs_no_token(server: ServerProcess) -> None:
    status, _, body = http_request(server.url, "GET", PATH_VERSION)
    assert status == 200
    info = json.loads(body)
    assert info["api_version"] == 1
    assert info["auth_required"] is True
    assert info["max_upload_bytes"] == UPLOAD_LIMIT_MB << 20
    assert "segment" in info["capabilities"]


def test_health_reports_model_and_memory(server: ServerProcess) -> None:
    status, _, body = http_request(server.url, "GET", PATH_HEALTH, headers=AUTH)
    assert status == 200
    health = json.loads(body)
    assert health["model"]["backbone"] == "lite-medsam"
    assert len(health["model"]["checkpoint_sha256"]) == 64
    assert health["device"] == "cpu"
    assert health["memory"]["process_rss_bytes"] > 50 << 20  # the model alone is larger
    assert 0 < health["memory"]["host_available_bytes"] <= health["memory"]["host_total_bytes"]
    assert health["memory"]["gpu"] is None


def test_openapi_documents_every_endpoint(server: ServerProcess) -> None:
    status, _, body = http_request(server.url, "GET", "/openapi.json")
    assert status == 200
    paths = json.loads(body)["paths"]
    expected = {
        ("get", "/v1/version"), ("get", "/v1/health"), ("post", "/v1/sessions"),
        ("get", "/v1/sessions/{session_id}"), ("delete", "/v1/sessions/{session_id}"),
        ("post", "/v1/sessions/{session_id}/segment"), ("post", "/v1/sessions/{session_id}/auto"),
        ("get", "/v1/sessions/{session_id}/auto/{job_id}"), ("post", "/v1/sessions/{session_id}/auto/{job_id}/cancel"),
        ("get", "/v1/sessions/{session_id}/auto/{job_id}/result"),
    }
    documented = {(method, path) for path, methods in paths.items() for method in methods}
    assert expected <= documented
    segment = paths["/v1/sessions/{session_id}/segment"]["post"]
    assert "coordinate_system" in json.dumps(segment["requestBody"])
    assert {"400", "401", "404", "410"} <= set(segment["responses"])


# Authentication


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}],
    ids=["missing", "wrong", "not-bearer", "empty"],
)
def test_requests_without_valid_token_get_401(server: ServerProcess, ct_bytes: bytes, headers: dict) -> None:
    status, response_headers, body = http_request(server.url, "GET", PATH_HEALTH, headers=headers)
    assert_error(status, body, 401)
    assert response_headers["www-authenticate"].startswith("Bearer")

    upload_headers = {**headers, HEADER_UPLOAD: dump_header_json({"format": "nii.gz"})}
    status, _, body = http_request(server.url, "POST", PATH_SESSIONS, ct_bytes, upload_headers)
    assert_error(status, body, 401)


def test_valid_token_is_accepted(server: ServerProcess) -> None:
    # Control for the 401 test: the same request with the right token passes.
    status, _, _ = http_request(server.url, "GET", PATH_HEALTH, headers=AUTH)
    assert status == 200


# Upload limits


def test_oversize_upload_gets_413_with_sizes(server: ServerProcess) -> None:
    size = (UPLOAD_LIMIT_MB << 20) + 1
    status, _, body = http_request(server.url, "POST", PATH_SESSIONS, bytes(size), nifti_upload_headers())
    error = assert_error(status, body, 413)
    assert str(size) in error["message"]
    assert str(UPLOAD_LIMIT_MB << 20) in error["message"]


def test_chunked_oversize_upload_gets_413(server: ServerProcess) -> None:
    # No Content-Length: the server counts the bytes as they arrive.
    chunks = (bytes(1 << 20) for _ in range(UPLOAD_LIMIT_MB + 1))
    address = server.url.split("//")[1]
    host, port = address.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", PATH_SESSIONS, body=chunks, headers=nifti_upload_headers(), encode_chunked=True)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    error = assert_error(response.status, body, 413)
    assert f"more than {UPLOAD_LIMIT_MB << 20}" in error["message"]


def test_upload_at_limit_passes_size_check(server: ServerProcess) -> None:
    # Control: a body of exactly the limit passes the size check and fails later, as a bad image (400).
    status, _, body = http_request(server.url, "POST", PATH_SESSIONS, bytes(UPLOAD_LIMIT_MB << 20), nifti_upload_headers())
    assert_error(status, body, 400)


def test_zlib_bomb_gets_413(server: ServerProcess) -> None:
    expanded_limit = (UPLOAD_LIMIT_MB << 20) * 8
    bomb = zlib.compress(bytes(expanded_limit + 1), 9)
    assert len(bomb) < 1 << 20
    headers = {**AUTH, HEADER_UPLOAD: dump_header_json({"format": "nii", "compression": "zlib"})}
    status, _, body = http_request(server.url, "POST", PATH_SESSIONS, bomb, headers)
    error = assert_error(status, body, 413)
    assert str(expanded_limit) in error["message"]


def test_array_larger_than_the_limit_gets_413(server: ServerProcess) -> None:
    description, payload = encode_array(np.zeros((2, 2, 2), dtype=np.int16))
    upload = {
        "format": "array", "compression": "zlib",
        "array": {**description.to_json(), "shape": [512, 512, 512]},
        "origin_lps": [0, 0, 0], "spacing_ijk": [1, 1, 1], "direction_lps": [1, 0, 0, 0, 1, 0, 0, 0, 1],
    }
    status, _, body = http_request(server.url, "POST", PATH_SESSIONS, payload, {**AUTH, HEADER_UPLOAD: dump_header_json(upload)})
    error = assert_error(status, body, 413)
    assert str(512 * 512 * 512 * 2) in error["message"]


# Invalid input


GARBAGE_UPLOADS = [
    (None, b"x", "X-SegMoTE-Upload"),
    ("{not json", b"x", "X-SegMoTE-Upload"),
    (dump_header_json({"format": "jpeg"}), b"x", "format"),
    (dump_header_json({"format": "nii.gz", "compression": "brotli"}), b"x", "compression"),
    (dump_header_json({"format": "nii.gz"}), b"\x1f\x8b garbage that is not gzip", None),
    (dump_header_json({"format": "nii", "compression": "zlib"}), b"not a zlib stream", "body"),
    (dump_header_json({"format": "dicom-zip"}), b"PK not a zip", "body"),
    (dump_header_json({"format": "array", "compression": "zlib"}), b"x", "array"),
    (
        dump_header_json({
            "format": "array", "compression": "zlib", "array": {"dtype": "int16", "shape": [2, 2, 2], "encoding": "zlib"},
            "origin_lps": [0, 0, 0], "spacing_ijk": [1, -1, 1], "direction_lps": [1, 0, 0, 0, 1, 0, 0, 0, 1],
        }),
        zlib.compress(bytes(16)),
        "spacing_ijk",
    ),
    (
        dump_header_json({
            "format": "array", "compression": "zlib", "array": {"dtype": "int16", "shape": [2, 2, 2], "encoding": "zlib"},
            "origin_lps": [0, 0, 0], "spacing_ijk": [1, 1, 1], "direction_lps": [1, 0, 0, 0, 1, 0, 0, 0, 1],
        }),
        zlib.compress(bytes(15)),  # one byte short of 2 x 2 x 2 int16
        "body",
    ),
]


@pytest.mark.parametrize("upload_header, body, field", GARBAGE_UPLOADS)
def test_garbage_uploads_get_400(server: ServerProcess, upload_header: str | None, body: bytes, field: str | None) -> None:
    headers = dict(AUTH)
    if upload_header is not None:
        headers[HEADER_UPLOAD] = upload_header
    status, _, response = http_request(server.url, "POST", PATH_SESSIONS, body, headers)
    assert_error(status, response, 400, field)


def test_unsafe_zip_gets_400(server: ServerProcess, shared_data: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../outside.dcm", b"DICM")
    headers = {**AUTH, HEADER_UPLOAD: dump_header_json({"format": "dicom-zip"})}
    status, _, body = http_request(server.url, "POST", PATH_SESSIONS, buffer.getvalue(), headers)
    error = assert_error(status, body, 400, "body")
    assert "parent-folder" in error["message"]


def test_dicom_zip_upload_matches_local_read(server: ServerProcess, shared_data: Path) -> None:
    folder = shared_data / "ct_abdomen_dicom" / "series"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, f"series/{path.name}")
    headers = {**AUTH, HEADER_UPLOAD: dump_header_json({"format": "dicom-zip"})}
    status, _, body = http_request(server.url, "POST", PATH_SESSIONS, buffer.getvalue(), headers)
    assert status == 201, body
    info = json.loads(body)
    local = read_volume(folder)
    assert tuple(info["shape_kji"]) == local.grid.shape_kji == (20, 512, 512)
    np.testing.assert_allclose(info["origin_lps"], local.grid.origin_lps, atol=1e-4)
    np.testing.assert_allclose(info["spacing_ijk"], local.grid.spacing_ijk, atol=1e-4)
    assert info["modality"] == "CT"
    http_request(server.url, "DELETE", f"{PATH_SESSIONS}/{info['session_id']}", headers=AUTH)


@pytest.fixture(scope="module")
def session_id(server: ServerProcess, ct_bytes: bytes) -> str:
    return open_session(server, ct_bytes)


GARBAGE_PROMPTS = [
    (b"{not json", "body"),
    (b"[]", None),
    (json.dumps({"segments": [{"name": "liver", "box": [[1, 1, 1], [5, 5, 1]]}]}).encode(), None),
    (json.dumps({"coordinate_system": "IJK", "segments": []}).encode(), None),
    (json.dumps({"coordinate_system": "IJK", "segments": [{"name": "liver", "box": [[1, 1], [5, 5, 1]]}]}).encode(), None),
    (
        json.dumps({"coordinate_system": "IJK", "segments": [
            {"name": "a", "box": [[1, 1, 1], [5, 5, 1]]}, {"name": "b", "box": [[1, 1, 1], [5, 5, 1]]},
        ]}).encode(),
        "segments",
    ),
    # Outside the 122 x 101 x 30 volume: the engine rejects it before encoding.
    (json.dumps({"coordinate_system": "IJK", "segments": [{"name": "liver", "box": [[1, 1, 90], [5, 5, 90]]}]}).encode(), None),
]


@pytest.mark.parametrize("body, field", GARBAGE_PROMPTS)
def test_garbage_prompts_get_400(server: ServerProcess, session_id: str, body: bytes, field: str | None) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    status, _, response = http_request(server.url, "POST", f"{PATH_SESSIONS}/{session_id}/segment", body, headers)
    assert_error(status, response, 400, field)


def test_missing_coordinate_system_is_named(server: ServerProcess, session_id: str) -> None:
    body = json.dumps({"segments": [{"name": "liver", "box": [[1, 1, 1], [5, 5, 1]]}]}).encode()
    status, _, response = http_request(server.url, "POST", f"{PATH_SESSIONS}/{session_id}/segment", body, AUTH)
    assert "coordinate_system" in assert_error(status, response, 400)["message"]


def test_invalid_base_revision_gets_400(server: ServerProcess, session_id: str) -> None:
    body = json.dumps({"coordinate_system": "IJK", "segments": [{"name": "liver", "box": [[1, 1, 1], [5, 5, 1]]}]}).encode()
    headers = {**AUTH, HEADER_BASE_REVISION: "two"}
    status, _, response = http_request(server.url, "POST", f"{PATH_SESSIONS}/{session_id}/segment", body, headers)
    assert_error(status, response, 400, HEADER_BASE_REVISION)


@pytest.mark.parametrize("body", [b"{not json", b"{}", json.dumps({"structures": "liver"}).encode(), json.dumps({"structures": []}).encode()])
def test_garbage_auto_requests_get_400(server: ServerProcess, session_id: str, body: bytes) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    status, _, response = http_request(server.url, "POST", f"{PATH_SESSIONS}/{session_id}/auto", body, headers)
    assert_error(status, response, 400)


def test_auto_without_adapters_gets_400_naming_the_fix(server: ServerProcess, session_id: str) -> None:
    body = json.dumps({"structures": ["liver"]}).encode()
    status, _, response = http_request(server.url, "POST", f"{PATH_SESSIONS}/{session_id}/auto", body, AUTH)
    error = assert_error(status, response, 400, "structures")
    assert "--adapters" in error["message"]


def test_client_api_version_mismatch_gets_400(server: ServerProcess) -> None:
    status, _, body = http_request(server.url, "GET", PATH_HEALTH, headers={**AUTH, HEADER_CLIENT_API_VERSION: "99"})
    assert assert_error(status, body, 400, HEADER_CLIENT_API_VERSION)["code"] == "version_mismatch"


# Sessions


def test_unknown_session_gets_404(server: ServerProcess) -> None:
    status, _, body = http_request(server.url, "GET", f"{PATH_SESSIONS}/{'0' * 32}", headers=AUTH)
    assert_error(status, body, 404, "session_id")


def test_closed_session_gets_404(server: ServerProcess, ct_bytes: bytes) -> None:
    created = open_session(server, ct_bytes)
    status, _, _ = http_request(server.url, "DELETE", f"{PATH_SESSIONS}/{created}", headers=AUTH)
    assert status == 204
    status, _, body = http_request(server.url, "GET", f"{PATH_SESSIONS}/{created}", headers=AUTH)
    assert "closed" in assert_error(status, body, 404)["message"]


def test_unknown_path_gets_json_404(server: ServerProcess) -> None:
    status, _, body = http_request(server.url, "GET", "/v1/nothing-here", headers=AUTH)
    assert_error(status, body, 404)


def test_log_has_no_patient_data(server: ServerProcess) -> None:
    log = server.stderr_text
    assert "Session " in log
    assert " created: " in log
    assert "ct.nii.gz" not in log
    assert "series/CT." not in log  # DICOM file names from the zip
    assert "ANON0001" not in log  # the DICOM series' PatientID
    assert "Traceback" not in log


@pytest.fixture(scope="module")
def short_lived_server():
    """A server that allows one session and expires it after 1 s idle."""
    with ServerProcess(["--adapters", "none", "--max-sessions", "1", "--session-idle-timeout", "1"]) as process:
        yield process


def test_capacity_then_expiry(short_lived_server: ServerProcess, ct_bytes: bytes) -> None:
    url = short_lived_server.url
    headers = {HEADER_UPLOAD: dump_header_json({"format": "nii.gz"})}
    status, _, body = http_request(url, "POST", PATH_SESSIONS, ct_bytes, headers)
    assert status == 201, body
    first = json.loads(body)["session_id"]

    # A second session does not fit.
    status, response_headers, body = http_request(url, "POST", PATH_SESSIONS, ct_bytes, headers)
    assert "limit 1" in assert_error(status, body, 503)["message"]
    assert int(response_headers["retry-after"]) > 0

    # The reaper frees the idle session; the health check shows when.
    deadline = time.monotonic() + 30
    while json.loads(http_request(url, "GET", PATH_HEALTH)[2])["sessions"] > 0:
        assert time.monotonic() < deadline, "the idle session was not reaped within 30 s"
        time.sleep(0.2)
    status, _, body = http_request(url, "GET", f"{PATH_SESSIONS}/{first}")
    assert "expired" in assert_error(status, body, 410)["message"]

    # Its place is free again.
    status, _, body = http_request(url, "POST", PATH_SESSIONS, ct_bytes, headers)
    assert status == 201, body
    assert "expired after" in short_lived_server.stderr_text


# The serve command's own checks


def run_serve_command(*options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segmote.server", "--adapters", "none", "--device", "cpu", *options],
        capture_output=True, text=True, timeout=120,
    )


def test_non_loopback_host_without_token_is_refused() -> None:
    result = run_serve_command("--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert "--token-file" in result.stderr
    assert "listening" not in result.stdout


def test_short_token_is_refused(tmp_path: Path) -> None:
    result = run_serve_command("--token-file", str(write_token(tmp_path, "short")), "--port", "0")
    assert result.returncode == 2
    assert "use at least 16" in result.stderr


def test_missing_token_file_is_refused(tmp_path: Path) -> None:
    result = run_serve_command("--token-file", str(tmp_path / "absent.txt"), "--port", "0")
    assert result.returncode == 2
    assert "token file not found" in result.stderr


def test_cli_serve_checks_the_host() -> None:
    # The same check through the project's CLI entry point.
    code = "import sys; from segmote.cli import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", code, "serve", "--host", "0.0.0.0", "--port", "0", "--adapters", "none"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "--token-file" in result.stderr


def test_keep_alive_requests_are_fast(server: ServerProcess) -> None:
    # With Nagle's algorithm on, each response on a reused connection waited
    # about 40 ms for the client's delayed ACK.
    host, port = server.url.split("//")[1].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    elapsed = []
    for _ in range(15):
        start = time.perf_counter()
        connection.request("GET", PATH_VERSION)
        connection.getresponse().read()
        elapsed.append(time.perf_counter() - start)
    connection.close()
    assert sorted(elapsed)[7] < 0.030
