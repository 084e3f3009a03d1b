"""Run a real Orthanc PACS with authentication inside a private network namespace and push to it.

Orthanc 1.10 cannot bind to the loopback interface only, so the test runs this
file as a script under ``unshare --net`` (a new network namespace whose only
interface is its own loopback): nothing outside the namespace can reach the
server. The script brings ``lo`` up, writes an Orthanc configuration into the
work folder, starts Orthanc, pushes files with ``segmote push`` (STOW-RS, then
C-STORE after clearing the server), downloads what Orthanc stored, stops
Orthanc by PID, and writes ``results.json``. The test compares the downloads.

Needs the Debian packages orthanc, orthanc-dicomweb and iproute2, and root (or
CAP_SYS_ADMIN) for ``unshare --net``.

Usage: ``unshare --net python orthanc_helpers.py WORK_FOLDER`` where WORK_FOLDER
contains ``inputs.json``: {"files": [...], "user": "...", "password_file": "..."}.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import selectors
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HTTP_PORT = 8042
DICOM_PORT = 4242
ORTHANC_AET = "ORTHANC"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
# Orthanc 1.10 with an empty database starts in about a second on one core.
STARTUP_TIMEOUT_SECONDS = 60
REQUEST_TIMEOUT_SECONDS = 30
# Orthanc 1.10 logs this (at warning level) once both the DICOM and the HTTP servers listen.
STARTED_MESSAGE = "HTTP server listening on port"


def write_config(folder: Path, user: str, password: str) -> Path:
    """Write an Orthanc configuration with HTTP basic authentication, DICOMweb and a C-STORE SCP."""
    config = {
        "Name": "SegMoTE test PACS",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": HTTP_PORT,
        "DicomPort": DICOM_PORT,
        "DicomAet": ORTHANC_AET,
        "DicomCheckCalledAet": True,
        "RemoteAccessAllowed": True,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {user: password},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 1,
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def start_orthanc(config: Path, log_path: Path) -> subprocess.Popen:
    """Start Orthanc and return once its log reports that it has started.

    Raises:
        RuntimeError: Orthanc exited or did not start within the timeout.
    """
    process = subprocess.Popen(["Orthanc", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    log = open(log_path, "w")
    while time.monotonic() < deadline:
        if not selector.select(timeout=deadline - time.monotonic()):
            break
        line = process.stdout.readline()
        if not line:
            log.close()
            raise RuntimeError(f"Orthanc exited with status {process.wait()}; see {log_path}")
        log.write(line)
        if STARTED_MESSAGE in line:
            # A thread keeps reading the log, so Orthanc cannot block on a full pipe.
            threading.Thread(target=_copy_lines, args=(process.stdout, log), daemon=True).start()
            return process
    log.close()
    stop_orthanc(process)
    raise RuntimeError(f"Orthanc did not start within {STARTUP_TIMEOUT_SECONDS} s; see {log_path}")


def _copy_lines(source, log) -> None:
    with log:
        for line in source:
            log.write(line)


def stop_orthanc(process: subprocess.Popen) -> None:
    """Stop the Orthanc process started here, by its PID."""
    process.terminate()
    try:
        process.wait(timeout=REQUEST_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def rest(method: str, path: str, user: str, password: str) -> tuple[int, bytes]:
    """Call Orthanc's REST API on the namespace's loopback; return the status and body."""
    request = urllib.request.Request(f"http://127.0.0.1:{HTTP_PORT}{path}", method=method)
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def download_all(target: Path, user: str, password: str) -> list[str]:
    """Save every instance Orthanc stores into ``target``; return the Orthanc instance ids."""
    target.mkdir(parents=True, exist_ok=True)
    status, body = rest("GET", "/instances", user, password)
    assert status == 200, f"GET /instances returned {status}"
    ids = json.loads(body)
    for instance in ids:
        status, data = rest("GET", f"/instances/{instance}/file", user, password)
        assert status == 200, f"GET /instances/{instance}/file returned {status}"
        (target / f"{instance}.dcm").write_bytes(data)
    return ids


def delete_all(user: str, password: str) -> None:
    """Delete every patient (and so every instance) from Orthanc."""
    _, body = rest("GET", "/patients", user, password)
    for patient in json.loads(body):
        rest("DELETE", f"/patients/{patient}", user, password)


def run_push(arguments: list[str]) -> dict:
    """Run ``segmote push`` through its argparse front end in this process; return exit code and output."""
    from segmote.dicom.commands import add_push_parser
    from segmote.errors import InputError

    parser = argparse.ArgumentParser(prog="segmote")
    add_push_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["push"] + arguments)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        try:
            code = args.func(args)
        except InputError as error:
            code, output = 2, io.StringIO(str(error))
    return {"exit_code": code, "output": output.getvalue()}


def run_scenario(work: Path) -> dict:
    """Start Orthanc, push by STOW-RS and C-STORE, download the stored instances, stop Orthanc."""
    inputs = json.loads((work / "inputs.json").read_text())
    user, password_file = inputs["user"], inputs["password_file"]
    password = Path(password_file).read_text().strip()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=REQUEST_TIMEOUT_SECONDS)

    process = start_orthanc(write_config(work, user, password), work / "orthanc.log")
    results: dict = {"orthanc_pid": process.pid}
    try:
        results["anonymous_status"] = rest("GET", "/system", "", "")[0]
        dicomweb = f"http://127.0.0.1:{HTTP_PORT}/dicom-web"

        # Wrong password: every file must fail, named, and nothing be stored.
        wrong = work / "wrong_password.txt"
        wrong.write_text("not-the-password\n")
        wrong.chmod(0o600)
        results["stow_wrong_password"] = run_push(inputs["files"] + ["--dicomweb", dicomweb, "--user", user, "--password-file", str(wrong)])
        results["stored_after_wrong_password"] = len(json.loads(rest("GET", "/instances", user, password)[1]))

        results["stow"] = run_push(inputs["files"] + ["--dicomweb", dicomweb, "--user", user, "--password-file", password_file])
        results["stow_ids"] = download_all(work / "stow", user, password)

        delete_all(user, password)
        results["stored_after_delete"] = len(json.loads(rest("GET", "/instances", user, password)[1]))
        results["cstore"] = run_push(inputs["files"] + ["--dimse", "127.0.0.1", str(DICOM_PORT), "--called-aet", ORTHANC_AET])
        results["cstore_ids"] = download_all(work / "cstore", user, password)

        # A wrong called AE title is rejected by Orthanc (DicomCheckCalledAet).
        results["cstore_wrong_aet"] = run_push(inputs["files"][:1] + ["--dimse", "127.0.0.1", str(DICOM_PORT), "--called-aet", "NOBODY", "--timeout", "10"])
    finally:
        stop_orthanc(process)
    results["orthanc_exit_code"] = process.returncode
    return results


if __name__ == "__main__":
    work_folder = Path(sys.argv[1])
    (work_folder / "results.json").write_text(json.dumps(run_scenario(work_folder), indent=2))
