"""Sending DICOM files to a PACS by DICOMweb STOW-RS (HTTP) or DIMSE C-STORE (pynetdicom).

Every file gets its own status; a failed file is named and the others are
still sent. Every network call has a timeout. Credentials are read from files
only (a bearer token file, or a user name plus a password file), never taken
from the command line, and never logged.

This module imports no torch; STOW-RS uses only the standard library.
"""

from __future__ import annotations

import base64
import json
import logging
import stat
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import urlparse

import pydicom

from ..errors import InputError
from .scan import has_dicom_marker

logger = logging.getLogger(__name__)

# Seconds allowed for connecting and for each response; one PACS round trip for a
# 20 MB instance on a local network takes well under this.
DEFAULT_TIMEOUT_SECONDS = 30.0

# DICOM JSON tags of the STOW-RS response (PS3.18 Store Instances Response Module).
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"


@dataclass
class Credentials:
    """HTTP credentials read from files; at most one of ``token`` and ``user``/``password`` is set."""

    token: Optional[str] = None
    user: Optional[str] = None
    password: Optional[str] = None

    def authorization_header(self) -> Optional[str]:
        """Return the HTTP Authorization header value, or None without credentials."""
        if self.token is not None:
            return f"Bearer {self.token}"
        if self.user is not None:
            pair = f"{self.user}:{self.password or ''}".encode("utf-8")
            return "Basic " + base64.b64encode(pair).decode("ascii")
        return None


@dataclass
class PushResult:
    """The outcome of sending one file."""

    path: Path
    sop_instance_uid: Optional[str]
    ok: bool
    status: str  # "stored", a DIMSE/HTTP status, or the reason of the failure


def read_secret_file(path: Path, kind: str) -> str:
    """Read a token or password from a file: the first line, surrounding white space removed.

    Raises:
        InputError: the file is missing, unreadable or empty.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(f"cannot read the {kind} file {path}: {error.strerror}; pass a readable file") from None
    lines = text.strip().splitlines()
    if not lines or not lines[0].strip():
        raise InputError(f"the {kind} file {path} is empty; write the {kind} on its first line")
    if path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
        logger.warning("The %s file %s is readable by other users; restrict it with chmod 600", kind, path)
    return lines[0].strip()


def read_credentials(token_file: Optional[Path], user: Optional[str], password_file: Optional[Path]) -> Credentials:
    """Build :class:`Credentials` from a token file, or a user name and a password file.

    Raises:
        InputError: both a token and a user given, a password file without a user
            or the reverse, or an unreadable file.
    """
    if token_file is not None and (user is not None or password_file is not None):
        raise InputError("pass either --token-file or --user with --password-file, not both")
    if token_file is not None:
        return Credentials(token=read_secret_file(token_file, "token"))
    if (user is None) != (password_file is None):
        raise InputError("--user and --password-file go together; pass both, or neither")
    if user is not None:
        return Credentials(user=user, password=read_secret_file(password_file, "password"))
    return Credentials()


def collect_files(paths: Sequence[Path]) -> list[Path]:
    """Expand files and folders (searched recursively) into the DICOM files to send, in sorted order.

    Raises:
        InputError: a path that does not exist, a named file that is not DICOM, or no DICOM file at all.
    """
    files: list[Path] = []
    for path in (Path(p) for p in paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and has_dicom_marker(p)))
        elif path.is_file():
            if not has_dicom_marker(path):
                raise InputError(f"{path} is not a DICOM file (no DICM marker at byte 128); pass DICOM files or folders")
            files.append(path)
        else:
            raise InputError(f"file or folder not found: {path}")
    if not files:
        raise InputError(f"no DICOM files found in {', '.join(str(p) for p in paths)}; pass DICOM files or folders")
    return files


def push_dicomweb(
    files: Sequence[Path],
    url: str,
    credentials: Credentials = Credentials(),
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> list[PushResult]:
    """Store each file with one STOW-RS request to ``<url>/studies``.

    Args:
        files: DICOM Part 10 files, sent as they are (any transfer syntax).
        url: the DICOMweb service root, for example ``http://pacs:8042/dicom-web``.
        credentials: sent as an Authorization header.
        timeout_seconds: limit for connecting and for each response.

    Raises:
        InputError: ``url`` is not an http(s) URL.
    """
    endpoint = _stow_endpoint(url)
    if credentials.authorization_header() and urlparse(endpoint).scheme == "http" and urlparse(endpoint).hostname not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("Sending credentials over unencrypted HTTP to %s; use https", urlparse(endpoint).hostname)
    results = []
    for path in files:
        result = _stow_one(path, endpoint, credentials, timeout_seconds)
        _log_result(result)
        results.append(result)
    return results


def _stow_endpoint(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InputError(f"invalid DICOMweb URL {url!r}: expected http(s)://host[:port]/path-to-dicomweb-root")
    return url.rstrip("/") + "/studies"


def _stow_one(path: Path, endpoint: str, credentials: Credentials, timeout_seconds: float) -> PushResult:
    try:
        payload = path.read_bytes()
        uid = _sop_instance_uid(path)
    except (OSError, pydicom.errors.InvalidDicomError, AttributeError) as error:
        return PushResult(path, None, False, f"cannot read the file: {error}")

    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
        + payload
        + f"\r\n--{boundary}--\r\n".encode("ascii")
    )
    request = urllib.request.Request(endpoint, data=body, method="POST")
    request.add_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={boundary}')
    request.add_header("Accept", "application/dicom+json")
    authorization = credentials.authorization_header()
    if authorization:
        request.add_header("Authorization", authorization)

    try:
        with urllib.request.urlopen(request, timeout=timeout_seconds) as response:
            status, text = response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode("utf-8", "replace")
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        return PushResult(path, uid, False, f"request failed: {reason}")
    return _stow_result(path, uid, status, text)


def _stow_result(path: Path, uid: str, status: int, text: str) -> PushResult:
    """Read one STOW-RS response: the instance counts as stored only when the server lists it as referenced."""
    try:
        body = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        body = {}
    failed = _sequence_uids(body, FAILED_SOP_SEQUENCE)
    referenced = _sequence_uids(body, REFERENCED_SOP_SEQUENCE)
    if status in (200, 202) and uid in referenced and uid not in failed:
        return PushResult(path, uid, True, f"stored (HTTP {status})")
    if status == 401 or status == 403:
        return PushResult(path, uid, False, f"HTTP {status}: not authorised; check the token or user and password files")
    first_line = text.strip().splitlines()[0][:200] if text.strip() else ""
    reason = failed.get(uid) or first_line
    return PushResult(path, uid, False, f"HTTP {status}: not stored{': ' + str(reason) if reason else ''}")


def _sequence_uids(body: object, tag: str) -> dict[str, str]:
    """Return SOP Instance UID -> failure reason (or "") for a sequence of a DICOM JSON response."""
    if not isinstance(body, dict) or tag not in body:
        return {}
    items = body[tag].get("Value", []) if isinstance(body[tag], dict) else []
    uids = {}
    for item in items:
        uid_values = item.get(REFERENCED_SOP_INSTANCE_UID, {}).get("Value", [])
        reason_values = item.get(FAILURE_REASON, {}).get("Value", [])
        if uid_values:
            uids[str(uid_values[0])] = f"failure reason {reason_values[0]:#06x}" if reason_values else ""
    return uids


def _sop_instance_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def _log_result(result: PushResult) -> None:
    if result.ok:
        logger.info("Sent %s (%s): %s", result.path, result.sop_instance_uid, result.status)
    else:
        logger.error("Failed to send %s (%s): %s", result.path, result.sop_instance_uid, result.status)


def push_dimse(
    files: Sequence[Path],
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = "SEGMOTE",
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> list[PushResult]:
    """Store each file by C-STORE over one association (re-established if it drops).

    The presentation contexts offer each file's own transfer syntax (the shared CT
    is JPEG 2000 lossless, sent as it is), plus both uncompressed syntaxes for
    files that are uncompressed or deflated, which pynetdicom can re-encode.

    Raises:
        InputError: an invalid AE title or port.
    """
    from .dimse import DimseSender

    sender = DimseSender(host, port, called_aet, calling_aet, timeout_seconds, files)
    results = []
    try:
        for path in files:
            result = sender.send(path)
            _log_result(result)
            results.append(result)
    finally:
        sender.close()
    return results
