"""Server parts without HTTP: session registry, zip extraction, tokens, jobs."""

from __future__ import annotations

import io
import socket
import stat
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from segmote.engine.session import Engine, VolumeSession
from segmote.engine.volume import volume_from_array
from segmote.errors import InputError
from segmote.server.auth import check_bearer_token, is_loopback_host, read_token_file
from segmote.server.command import bind_socket
from segmote.server.errors import AuthenticationError, CapacityError, NotFoundError, SessionExpiredError, _LogRateLimit
from segmote.server.jobs import AutoJob, run_job
from segmote.server.sessions import SessionRegistry
from segmote.server.uploads import extract_zip
from segmote.wire import PayloadTooLargeError, WireFormatError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def volume_session() -> VolumeSession:
    """A real engine session on a small array; nothing here encodes a slice."""
    engine = Engine.load(adapters="none", device="cpu")
    array = np.arange(2 * 16 * 16, dtype=np.int16).reshape(2, 16, 16)
    return VolumeSession(engine, volume_from_array(array, modality="CT"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock, volume_session: VolumeSession) -> SessionRegistry:
    registry = SessionRegistry(max_sessions=2, idle_timeout_s=60, clock=clock)
    registry.test_volume_session = volume_session  # type: ignore[attr-defined]
    return registry


def add(registry: SessionRegistry) -> str:
    with registry.reservation():
        return registry.add(registry.test_volume_session, 10).id  # type: ignore[attr-defined]


def test_registry_capacity(registry: SessionRegistry) -> None:
    first = add(registry)
    add(registry)
    with pytest.raises(CapacityError, match="limit 2"):
        add(registry)
    registry.close(first)
    add(registry)  # the closed session's place is free
    assert len(registry) == 2


def test_reservations_count_toward_capacity(registry: SessionRegistry) -> None:
    add(registry)
    with registry.reservation():
        with pytest.raises(CapacityError):
            add(registry)
    add(registry)


def test_idle_session_expires_to_410(registry: SessionRegistry, clock: FakeClock) -> None:
    session_id = add(registry)
    clock.now += 59
    with registry.lease(session_id):
        pass  # a request resets the idle time
    clock.now += 59
    assert registry.expire_idle() == []
    clock.now += 2
    assert registry.expire_idle() == [session_id]
    assert len(registry) == 0
    with pytest.raises(SessionExpiredError, match="expired after 60 s"):
        with registry.lease(session_id):
            pass


def test_expiry_without_reaper_pass(registry: SessionRegistry, clock: FakeClock) -> None:
    session_id = add(registry)
    clock.now += 61
    with pytest.raises(SessionExpiredError):
        with registry.lease(session_id):
            pass


def test_busy_session_does_not_expire(registry: SessionRegistry, clock: FakeClock) -> None:
    session_id = add(registry)
    with registry.lease(session_id) as session:
        clock.now += 600
        assert registry.expire_idle() == []
        assert session.volume_session is not None
    clock.now += 61
    assert registry.expire_idle() == [session_id]


def test_unknown_and_closed_sessions_are_404(registry: SessionRegistry) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        with registry.lease("nope"):
            pass
    session_id = add(registry)
    registry.close(session_id)
    with pytest.raises(NotFoundError, match="was closed"):
        with registry.lease(session_id):
            pass


def test_expired_session_frees_its_state(registry: SessionRegistry, clock: FakeClock) -> None:
    session_id = add(registry)
    with registry.lease(session_id) as session:
        pass
    clock.now += 61
    registry.expire_idle()
    assert session.volume_session is None
    assert session.segments == {}


# Zip extraction


def make_zip(tmp_path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    path = tmp_path / "upload.zip"
    path.write_bytes(buffer.getvalue())
    return path


def test_zip_extracts_flat(tmp_path: Path) -> None:
    archive = make_zip(tmp_path, {"series/a.dcm": b"1", "series/sub/b.dcm": b"22", "series/": b""})
    extract_zip(archive, tmp_path / "out", 1000)
    files = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert len(files) == 2
    assert all(path.parent == tmp_path / "out" for path in (tmp_path / "out").iterdir())


@pytest.mark.parametrize("name", ["/etc/evil.dcm", "../evil.dcm", "series/../../evil.dcm", "C:/evil.dcm", "..\\evil.dcm"])
def test_zip_rejects_unsafe_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(WireFormatError, match="absolute or parent-folder"):
        extract_zip(make_zip(tmp_path, {name: b"x"}), tmp_path / "out", 1000)
    assert not (tmp_path / "evil.dcm").exists()


def test_zip_rejects_symlinks(tmp_path: Path) -> None:
    with pytest.raises(WireFormatError, match="symbolic link"):
        extract_zip(make_zip(tmp_path, {}, symlink="link.dcm"), tmp_path / "out", 1000)


def test_zip_bounds_extracted_size(tmp_path: Path) -> None:
    archive = make_zip(tmp_path, {"a.dcm": bytes(600), "b.dcm": bytes(600)})
    assert archive.stat().st_size < 600
    with pytest.raises(PayloadTooLargeError):
        extract_zip(archive, tmp_path / "out", 1000)
    extract_zip(archive, tmp_path / "out2", 1200)  # control: exactly the limit passes


# Tokens and hosts


def test_token_check() -> None:
    token = "a" * 20
    check_bearer_token(f"Bearer {token}", token)
    check_bearer_token(f"bearer {token}", token)
    check_bearer_token(None, None)  # no token configured
    for header in (None, "", f"Basic {token}", "Bearer " + "a" * 19, f"Bearer {token}x"):
        with pytest.raises(AuthenticationError):
            check_bearer_token(header, token)


def test_token_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("  abcdefghijklmnopqrstuvwxyz  \nsecond line\n")
    assert read_token_file(path) == "abcdefghijklmnopqrstuvwxyz"
    path.write_text("\n")
    with pytest.raises(InputError, match="0 characters"):
        read_token_file(path)


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("gpu-server", False),
])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


# Jobs


def test_job_runs_to_done() -> None:
    job = AutoJob("s", ["liver"])
    seen = []

    def work(running: AutoJob) -> np.ndarray:
        running.report_progress(0.5, "half")
        seen.append(running.snapshot()["progress"])
        return np.ones((2, 2, 2), dtype=np.uint8)

    run_job(job, work, lambda error: {"message": str(error)})
    assert seen == [0.5]
    assert job.status == "done"
    assert job.result is not None and job.result.sum() == 8


def test_job_cancel_stops_at_next_progress_report() -> None:
    job = AutoJob("s", ["liver"])
    started = threading.Event()
    proceed = threading.Event()

    def work(running: AutoJob) -> np.ndarray:
        started.set()
        proceed.wait(10)
        running.report_progress(0.7, "slice 7")  # raises JobCancelled
        raise AssertionError("not reached")

    thread = threading.Thread(target=run_job, args=(job, work, lambda error: {"message": str(error)}))
    thread.start()
    started.wait(10)
    assert job.cancel() is True
    proceed.set()
    thread.join(10)
    assert job.status == "cancelled"
    assert job.result is None


def test_job_failure_keeps_the_error_body() -> None:
    job = AutoJob("s", ["liver"])

    def work(running: AutoJob) -> np.ndarray:
        raise InputError("bad structure")

    run_job(job, work, lambda error: {"status": 400, "message": str(error)})
    assert job.status == "failed"
    assert job.error == {"status": 400, "message": "bad structure"}


def test_queued_job_cancel_is_immediate() -> None:
    job = AutoJob("s", ["liver"])
    assert job.cancel() is True
    assert job.status == "cancelled"
    run_job(job, lambda running: pytest.fail("a cancelled job must not run"), lambda error: {})
    assert job.status == "cancelled"


def test_wait_for_change_returns_on_update() -> None:
    job = AutoJob("s", ["liver"])
    version = job.version
    timer = threading.Timer(0.05, job.report_progress, args=(0.1, "step"))
    timer.start()
    job.wait_for_change(version, timeout_s=10)
    assert job.version == version + 1


def test_listening_socket_is_tcp() -> None:
    # asyncio turns Nagle's algorithm off only on sockets whose protocol is IPPROTO_TCP.
    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_client_error_log_is_rate_limited() -> None:
    limiter = _LogRateLimit(limit=3, window_s=3600)
    allowed = [limiter.allow("unauthorized")[0] for _ in range(5)]
    assert allowed == [True, True, True, False, False]
    assert limiter.allow("invalid_input") == (True, 0)  # other codes count separately
    limiter.window_s = -1.0  # the window has ended
    assert limiter.allow("unauthorized") == (True, 2)
