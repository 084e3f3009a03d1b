"""SegMoTEClient against a real server and against small local servers that misbehave on purpose.

The misbehaving servers (wrong API version, connection resets, no reply) are
plain sockets on 127.0.0.1 started by the tests.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from segmote.client import (
    AuthenticationError,
    RemoteInputError,
    RemoteTimeoutError,
    SegMoTEClient,
    ServerUnreachableError,
    SessionExpiredError,
    Timeouts,
    UploadTooLargeError,
    VersionMismatchError,
)
from segmote.client.errors import ServerBusyError, SessionNotFoundError, error_from_body
from segmote.engine.volume import read_volume
from segmote.errors import InputError
from test_server_harness import ServerProcess, write_token

TOKEN = "client-test-token-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A server with a token, a 4 MiB upload limit and a 1 s idle timeout."""
    token_file = write_token(tmp_path_factory.mktemp("token"), TOKEN)
    options = ["--adapters", "none", "--token-file", str(token_file), "--max-upload-mb", "4", "--session-idle-timeout", "1"]
    with ServerProcess(options) as process:
        yield process


def small_volume() -> tuple[np.ndarray, dict]:
    array = (np.arange(2 * 16 * 16, dtype=np.int16).reshape(2, 16, 16) % 200) - 100
    return array, {"origin_lps": (10.0, -5.0, 2.5), "spacing_ijk": (0.8, 0.8, 2.0), "modality": "CT"}


# Addresses


@pytest.mark.parametrize("url", ["127.0.0.1:8765", "gpu-server:8765", "ftp://host:21", "http://", "http://host:port"])
def test_invalid_urls_are_rejected_with_the_fix(url: str) -> None:
    with pytest.raises(InputError, match="http://"):
        SegMoTEClient(url)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_is_reported() -> None:
    client = SegMoTEClient(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ServerUnreachableError, match="cannot connect to the SegMoTE server at http://127.0.0.1"):
        client.version()


# Small local servers that misbehave


class RawServer:
    """A TCP server on 127.0.0.1 that hands each connection to ``handle(connection, number)``."""

    def __init__(self, handle: Callable[[socket.socket, int], None]) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self._handle = handle
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with connection:
                self._handle(connection, self.connections)

    def close(self) -> None:
        self.listener.close()


def read_request(connection: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def json_reply(connection: socket.socket, status: int, value: object) -> None:
    body = json.dumps(value).encode()
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    connection.sendall(head.encode() + body)


VERSION_REPLY = {"api_version": 1, "server_version": "0.1.0", "max_upload_bytes": 1 << 20}


def test_version_mismatch_is_reported() -> None:
    raw = RawServer(lambda connection, _: (read_request(connection), json_reply(connection, 200, {**VERSION_REPLY, "api_version": 99})))
    try:
        with pytest.raises(VersionMismatchError, match="API version 99") as raised:
            SegMoTEClient(raw.url).version()
        assert "speaks 1" in str(raised.value)
    finally:
        raw.close()


def test_server_without_version_path_is_not_segmote() -> None:
    raw = RawServer(lambda connection, _: (read_request(connection), json_reply(connection, 404, {"detail": "Not Found"})))
    try:
        with pytest.raises(VersionMismatchError, match="not a SegMoTE server"):
            SegMoTEClient(raw.url).version()
    finally:
        raw.close()


def reset_first(connection: socket.socket, number: int) -> None:
    read_request(connection)
    if number == 1:
        # Close with RST, as a server does when it drops a connection.
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        return
    json_reply(connection, 200, VERSION_REPLY)


def test_connection_reset_is_retried_once() -> None:
    raw = RawServer(reset_first)
    try:
        assert SegMoTEClient(raw.url).version()["api_version"] == 1
        assert raw.connections == 2
    finally:
        raw.close()


def test_second_reset_is_reported() -> None:
    # Control for the retry: a server that always resets gets exactly two attempts.
    raw = RawServer(lambda connection, number: reset_first(connection, 1))
    try:
        with pytest.raises(ServerUnreachableError, match="reset twice"):
            SegMoTEClient(raw.url).version()
        assert raw.connections == 2
    finally:
        raw.close()


def test_silent_server_times_out() -> None:
    answered = threading.Event()
    raw = RawServer(lambda connection, _: (read_request(connection), answered.wait(10)))
    try:
        client = SegMoTEClient(raw.url, timeouts=Timeouts(request_s=0.5))
        start = time.monotonic()
        with pytest.raises(RemoteTimeoutError, match="within 0.5 s"):
            client.version()
        assert time.monotonic() - start < 5
    finally:
        answered.set()
        raw.close()


@pytest.mark.parametrize(
    "status, error_class", [(400, RemoteInputError), (401, AuthenticationError), (404, SessionNotFoundError),
                            (410, SessionExpiredError), (413, UploadTooLargeError), (503, ServerBusyError)],
)
def test_error_statuses_map_to_classes(status: int, error_class: type) -> None:
    body = {"error": {"status": status, "code": "x", "message": "what failed", "field": "f", "error_id": "abc123"}}
    error = error_from_body(status, body, "http://host")
    assert type(error) is error_class
    assert "what failed" in str(error)
    assert "abc123" in str(error)


# Against the real server


def test_missing_or_wrong_token_is_reported(server: ServerProcess) -> None:
    for token in (None, "wrong-token-0123456789abc"):
        client = SegMoTEClient(server.url, token=token)
        assert client.version()["auth_required"] is True  # the version check needs no token
        with pytest.raises(AuthenticationError, match="token"):
            client.health()
    assert SegMoTEClient(server.url, token=TOKEN).health()["status"] == "ok"


def test_array_session_keeps_its_geometry(server: ServerProcess) -> None:
    array, geometry = small_volume()
    with SegMoTEClient(server.url, token=TOKEN) as client, client.open_session((array, geometry)) as session:
        assert session.shape_kji == (2, 16, 16)
        assert session.info["origin_lps"] == [10.0, -5.0, 2.5]
        assert session.info["spacing_ijk"] == pytest.approx([0.8, 0.8, 2.0])
        assert session.info["modality"] == "CT"
        assert session.info["dtype"] == "int16"


def test_dicom_folder_upload(server: ServerProcess, shared_data: Path) -> None:
    folder = shared_data / "ct_abdomen_dicom" / "series"
    with SegMoTEClient(server.url, token=TOKEN) as client, client.open_session(folder) as session:
        assert session.shape_kji == read_volume(folder).grid.shape_kji


def test_oversize_upload_is_stopped_before_sending(server: ServerProcess) -> None:
    noise = np.random.default_rng(0).integers(-1000, 1000, size=(40, 256, 256), dtype=np.int16)  # 5 MiB, hardly compressible
    with SegMoTEClient(server.url, token=TOKEN) as client:
        with pytest.raises(UploadTooLargeError, match=str(4 << 20)):
            client.open_session((noise, {"origin_lps": (0, 0, 0), "spacing_ijk": (1, 1, 1)}))
        assert client.health()["sessions"] == 0


def test_unsupported_file_is_rejected_locally(server: ServerProcess, shared_data: Path) -> None:
    image = next((shared_data / "ct_slices_2d" / "images").glob("*.png"))
    with pytest.raises(InputError, match="NIfTI"):
        SegMoTEClient(server.url, token=TOKEN).open_session(image)


def test_invalid_prompts_are_rejected_before_sending(server: ServerProcess) -> None:
    with SegMoTEClient(server.url, token=TOKEN) as client, client.open_session(small_volume()) as session:
        sent = session.bytes_sent
        with pytest.raises(InputError, match="coordinate_system"):
            session.segment({"segments": [{"name": "x", "box": [[0, 0, 0], [3, 3, 0]]}]})
        assert session.bytes_sent == sent


def test_auto_without_adapters_names_the_fix(server: ServerProcess) -> None:
    with SegMoTEClient(server.url, token=TOKEN) as client, client.open_session(small_volume()) as session:
        with pytest.raises(RemoteInputError, match="--adapters"):
            session.auto(["liver"])


def test_expired_session_is_reported(server: ServerProcess) -> None:
    client = SegMoTEClient(server.url, token=TOKEN)
    session = client.open_session(small_volume())
    deadline = time.monotonic() + 30
    while client.health()["sessions"] > 0:
        assert time.monotonic() < deadline, "the idle session was not reaped within 30 s"
        time.sleep(0.2)
    with pytest.raises(SessionExpiredError, match="open a new session"):
        session.segment({"coordinate_system": "IJK", "segments": [{"name": "x", "box": [[0, 0, 0], [3, 3, 0]]}]})
    session.close()  # closing an expired session is harmless


PYTHON_3_9_SCRIPT = """
import sys
import numpy as np
from segmote.client import SegMoTEClient

client = SegMoTEClient(sys.argv[1], token=sys.argv[2])
array = (np.arange(2 * 16 * 16, dtype=np.int16).reshape(2, 16, 16) % 200) - 100
with client.open_session((array, {"origin_lps": (0, 0, 0), "spacing_ijk": (1, 1, 1)})) as session:
    labels = session.segment({"coordinate_system": "IJK", "segments": [{"name": "x", "box": [[2, 2, 1], [12, 12, 1]]}]})
print(sys.version_info[:2], labels.shape, labels.dtype, sorted(m for m in sys.modules if m.startswith("torch")))
"""


def python_3_9() -> str | None:
    """A Python 3.9 interpreter with numpy: on PATH, or installed by pyenv."""
    candidates = [shutil.which("python3.9"), *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))]
    for executable in filter(None, candidates):
        probe = subprocess.run([executable, "-c", "import numpy"], capture_output=True)
        if probe.returncode == 0:
            return executable
    return None


@pytest.mark.skipif(python_3_9() is None, reason="needs python3.9 with numpy, the oldest Python the client supports")
def test_client_runs_on_python_3_9(server: ServerProcess) -> None:
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "SegMoTESlicer")}
    result = subprocess.run(
        [python_3_9(), "-c", PYTHON_3_9_SCRIPT, server.url, TOKEN], capture_output=True, text=True, timeout=300, env=environment
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(3, 9) (2, 16, 16) uint8 []"


def reject_uploads_early(connection: socket.socket, number: int) -> None:
    request = read_request(connection)
    if request.startswith(b"GET /v1/version"):
        json_reply(connection, 200, {**VERSION_REPLY, "max_upload_bytes": 1 << 30})
    elif request.startswith(b"GET /v1/health"):
        json_reply(connection, 200, {"status": "ok"})
    else:
        # Reply without reading the body, then close, as servers do for a rejected upload.
        body = {"error": {"status": 413, "code": "too_large", "message": "upload of 40000000 bytes exceeds the limit", "error_id": "e1"}}
        json_reply(connection, 413, body)


def test_early_rejection_of_an_upload_is_reported() -> None:
    raw = RawServer(reject_uploads_early)
    try:
        noise = np.random.default_rng(1).integers(-1000, 1000, size=(80, 256, 256), dtype=np.int16)  # 10 MiB
        with pytest.raises(UploadTooLargeError, match="exceeds the limit"):
            SegMoTEClient(raw.url).open_session((noise, {"origin_lps": (0, 0, 0), "spacing_ijk": (1, 1, 1)}))
    finally:
        raw.close()
