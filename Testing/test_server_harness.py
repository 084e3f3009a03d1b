"""Starting a real SegMoTE server for tests, and the prompts they share (this file contains no tests).

The server runs in a child process started with ``python -m segmote.server
--port 0``. It prints ``SegMoTE server listening on URL`` once its socket is
bound, so the tests know where to connect without polling.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import urlsplit

import numpy as np
import pytest
import SimpleITK as sitk

LISTENING_PREFIX = "SegMoTE server listening on "

# Seconds to wait for the model to load and the socket to be bound.
STARTUP_TIMEOUT_SECONDS = 120

# TotalSegmentator "total" table values used by the tests.
LIVER, SPLEEN, STOMACH = 5, 1, 6

# The axial slice of ct_abdomen_small with the largest liver area (2083 voxels).
PROMPT_SLICE_K = 24

# One torch thread on both sides: the same thread count keeps float sums in
# the same order, and on a shared machine with few cores one thread was
# several times faster per click than two.
TORCH_THREADS = 1


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run the test process's torch on :data:`TORCH_THREADS` threads for one module."""
    import torch  # imported here, so the harness itself stays torch-free

    previous = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    yield
    torch.set_num_threads(previous)


class ServerProcess:
    """A server child process; use as a context manager so it is always stopped."""

    def __init__(self, options: Sequence[str], torch_threads: Optional[int] = None) -> None:
        environment = dict(os.environ)
        if torch_threads is not None:
            # Same thread count as the test process, so float reductions run in the same order.
            environment["OMP_NUM_THREADS"] = str(torch_threads)
        # The log goes to a file because an unread pipe would block the server once full.
        self._log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "segmote.server", "--port", "0", "--device", "cpu", *options],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=environment,
        )
        self._final_log: Optional[str] = None
        self.url = self._read_url()

    def _read_url(self) -> str:
        assert self.process.stdout is not None
        # readline blocks until the line arrives or the process exits (EOF).
        line = self.process.stdout.readline()
        if not line.startswith(LISTENING_PREFIX):
            self.stop()
            raise RuntimeError(f"the server did not start: stdout {line!r}, stderr {self.stderr_text[-2000:]!r}")
        return line[len(LISTENING_PREFIX):].strip()

    @property
    def stderr_text(self) -> str:
        """The server's log so far."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    def stop(self) -> str:
        """Stop the server (SIGTERM, then SIGKILL after 20 s) and return its log."""
        if self._final_log is not None:
            return self._final_log
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._final_log = self.stderr_text
        self.process.stdout.close()  # type: ignore[union-attr]
        self._log.close()
        return self._final_log

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_labels(shared_data: Path) -> np.ndarray:
    """The reference label map of ct_abdomen_small, numpy ``(K, J, I)``."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / "ct_abdomen_small" / "labels.nii.gz")))


def box_ijk(mask_ji: np.ndarray, k: int, margin: int = 2) -> list[list[int]]:
    """Box prompt ``[[i0, j0, k], [i1, j1, k]]`` around a slice mask ``(J, I)``, grown by ``margin`` voxels."""
    rows, cols = np.nonzero(mask_ji)
    return [[int(cols.min()) - margin, int(rows.min()) - margin, k], [int(cols.max()) + margin, int(rows.max()) + margin, k]]


def box_prompts(name: str, box: list[list[int]], **extra: object) -> dict:
    """A prompts dictionary (IJK) with one axial box segment."""
    return {"coordinate_system": "IJK", "segments": [{"name": name, "view": "axial", "box": box, **extra}]}


def write_token(folder: Path, token: str) -> Path:
    """Write a token file and return its path."""
    path = folder / "token.txt"
    path.write_text(token + "\n")
    return path


def http_request(
    url: str, method: str, path: str, body: Optional[bytes] = None, headers: Optional[dict] = None
) -> tuple[int, dict, bytes]:
    """Send one raw HTTP request; return (status, headers with lower-case names, body)."""
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def error_of(body: bytes) -> dict:
    """The ``error`` object of an error response body."""
    return json.loads(body)["error"]
