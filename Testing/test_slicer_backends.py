"""The module's two backends on the real abdominal CT: in-process and a real server on 127.0.0.1 give the same mask.

The box prompt is built the way the module builds it (a Slicer axial view,
markups in RAS) and placed around the reference liver on one slice. The
model is LiteMedSAM without adapters on the CPU, in this process and in a
``python -m segmote.server`` subprocess. Takes about a minute on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from segmote.engine.volume import read_volume
from segmote.errors import InputError, SegMoTEError
from segmote.geometry import lps_to_ras
from segmote.wire import PATH_VERSION
from SegMoTELib.backends import InProcessBackend, RemoteBackend
from SegMoTELib.prompts import markups_to_prompts
from SegMoTELib.viewgeometry import ViewPlane, view_plane

LIVER = 5
SLICE_K = 15
# LiteMedSAM with a box 3 voxels larger than the liver reached Dice 0.962 on this slice (CPU).
MINIMUM_DICE = 0.90
SERVER_START_SECONDS = 180


@pytest.fixture(scope="module")
def ct(shared_data):
    """The small abdominal CT (30 x 101 x 122 voxels, 3 mm) and its liver mask (K, J, I)."""
    volume = read_volume(shared_data / "ct_abdomen_small" / "ct.nii.gz")
    liver = read_volume(shared_data / "ct_abdomen_small" / "labels.nii.gz").array == LIVER
    return volume, liver


@pytest.fixture(scope="module")
def box_prompts(ct):
    """Prompts JSON for a box around the liver on axial slice 15, placed in a Slicer axial view."""
    volume, liver = ct
    grid = volume.grid
    rows, cols = np.nonzero(liver[SLICE_K])
    corners_ijk = np.array([[cols.min() - 3, rows.min() - 3, SLICE_K], [cols.max() + 3, rows.max() + 3, SLICE_K]], float)
    corners_ras = lps_to_ras(grid.ijk_to_lps(corners_ijk))
    slice_to_ras = np.eye(4)
    slice_to_ras[:3, :3] = [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    slice_to_ras[:3, 3] = corners_ras.mean(axis=0)
    plane = view_plane(slice_to_ras, grid)
    assert plane.slice_index == SLICE_K
    return markups_to_prompts("liver", plane, grid, box_ras=corners_ras)


@pytest.fixture(scope="module")
def in_process():
    import torch

    torch.set_num_threads(1)
    return InProcessBackend(adapters="none", device="cpu")


@pytest.fixture(scope="module")
def server_url():
    """A SegMoTE server subprocess on a free port of 127.0.0.1, stopped after the tests."""
    environment = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "segmote.server", "--host", "127.0.0.1", "--port", "0", "--adapters", "none",
         "--device", "cpu", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
    )
    url = None
    lines = []

    def read_output():
        nonlocal url
        for line in process.stdout:
            lines.append(line)
            if "listening on" in line and url is None:
                url = line.strip().rsplit(" ", 1)[-1]
                ready.set()
        ready.set()

    ready = threading.Event()
    threading.Thread(target=read_output, daemon=True).start()
    try:
        ready.wait(SERVER_START_SECONDS)
        if url is None:
            pytest.fail("the SegMoTE server did not start:\n" + "".join(lines[-20:]))
        yield url
    finally:
        process.terminate()
        process.wait(30)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def test_in_process_box_segments_liver(ct, box_prompts, in_process):
    volume, liver = ct
    session = in_process.open_session(volume.array, volume.grid, "CT")

    mask = session.segment(box_prompts)

    assert mask.dtype == bool
    assert mask.shape == volume.array.shape
    assert dice(mask[SLICE_K], liver[SLICE_K]) >= MINIMUM_DICE
    assert mask.sum() == mask[SLICE_K].sum(), "a prompt without propagation changed other slices"
    # Negative control: the liver of another slice is not what was segmented here.
    assert dice(mask[SLICE_K], liver[SLICE_K - 8]) < dice(mask[SLICE_K], liver[SLICE_K])


def test_in_process_info_names_model(in_process):
    info = in_process.info()

    assert info.model == "lite-medsam"
    assert info.device == "cpu"
    assert info.version
    assert in_process.structures() == []


def test_in_process_auto_without_adapters_is_explained(ct, in_process):
    volume, _ = ct
    session = in_process.open_session(volume.array, volume.grid, "CT")

    with pytest.raises(InputError, match="adapters"):
        session.auto(["liver"], None, None)


def test_remote_matches_in_process(ct, box_prompts, in_process, server_url):
    volume, liver = ct
    remote = RemoteBackend(server_url)
    local_mask = in_process.open_session(volume.array, volume.grid, "CT").segment(box_prompts)

    session = remote.open_session(volume.array, volume.grid, "CT")
    try:
        remote_mask = session.segment(box_prompts)
    finally:
        session.close()

    assert remote_mask.shape == local_mask.shape
    assert dice(remote_mask, local_mask) >= 0.99
    assert dice(remote_mask[SLICE_K], liver[SLICE_K]) >= MINIMUM_DICE


def test_remote_result_covers_latest_prompt_only(ct, box_prompts, server_url):
    """Two prompts for one segment name on different slices: the second result holds only its own slice."""
    volume, liver = ct
    grid = volume.grid
    other_k = SLICE_K - 3
    rows, cols = np.nonzero(liver[other_k])
    corners_ijk = np.array([[cols.min() - 3, rows.min() - 3, other_k], [cols.max() + 3, rows.max() + 3, other_k]], float)
    plane = ViewPlane(view="axial", axis_ijk=2, slice_index=other_k, angle_degrees=0.0)
    other_prompts = markups_to_prompts("liver", plane, grid, box_ras=lps_to_ras(grid.ijk_to_lps(corners_ijk)))
    session = RemoteBackend(server_url).open_session(volume.array, grid, "CT")
    try:
        first = session.segment(box_prompts)
        second = session.segment(other_prompts)
    finally:
        session.close()

    assert first[SLICE_K].any()
    assert second[other_k].any()
    assert not second[SLICE_K].any(), "the second result repeats the first prompt's slice"
    assert second.sum() == second[other_k].sum()


def test_remote_info_reports_model_device_version(server_url):
    info = RemoteBackend(server_url).info()

    assert info.model == "lite-medsam"
    assert info.device == "cpu"
    assert info.version
    assert "lite-medsam" in info.text()


class _OtherVersionHandler(BaseHTTPRequestHandler):
    """A stand-in server that speaks another API version."""

    def do_GET(self):  # noqa: N802 - http.server's method name
        body = json.dumps({"api_version": 999, "server_version": "9.9.9"}).encode()
        self.send_response(200 if self.path.startswith(PATH_VERSION) else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_version_mismatch_is_explicit():
    server = HTTPServer(("127.0.0.1", 0), _OtherVersionHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        backend = RemoteBackend(f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(SegMoTEError, match="API version 999"):
            backend.info()
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_server_is_reported():
    with pytest.raises(SegMoTEError):
        RemoteBackend("http://127.0.0.1:9").info()


def test_empty_server_url_is_rejected():
    with pytest.raises(InputError, match="URL"):
        RemoteBackend("  ")
