"""Auto-segmentation jobs on the real server: result, progress, cancel, and errors.

No trained adapters ship with the repository yet, so the tests build
adapters with the real architecture, warm-started from LiteMedSAM's decoder
and not trained. Their prompt tokens are set to LiteMedSAM's embedding of one
foreground point, so that auto-segmentation yields a non-empty mask (for the
first structure, which wins the overlap with the second). The job's label map
must equal the in-process engine's with the same file.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from segmote.client import JobCancelledError, RemoteInputError, SegMoTEClient
from segmote.engine.session import Engine, VolumeSession
from segmote.engine.volume import read_volume, volume_from_array
from segmote.model.adapters import SegMoTEAdapters, save_adapters
from test_server_harness import TORCH_THREADS, one_torch_thread, PROMPT_SLICE_K, ServerProcess, error_of, http_request

STRUCTURES = ["liver", "spleen"]
SLICES = 4  # axial slices of the test volume; auto encodes each once

# The harness fixture is imported above, so pytest finds it by name here.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def adapters_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    backbone = Engine.load(adapters="none", device="cpu").backbone
    metadata = {"backbone": backbone.info.name, "backbone_sha256": backbone.info.checkpoint_sha256, "version": "untrained-test"}
    adapters = SegMoTEAdapters(SegMoTEAdapters.default_config(backbone, STRUCTURES), metadata)
    adapters.warm_start(backbone)
    with torch.no_grad():
        # Every output token of the tokenizer becomes the sparse embedding of a
        # foreground point at model pixel (150, 100).
        point = (torch.tensor([[[150.0, 100.0]]]), torch.tensor([[1]]))
        sparse, _ = backbone.prompt_encoder(points=point, boxes=None, masks=None)
        adapters.ppt.output_norm.weight.zero_()
        adapters.ppt.output_norm.bias.copy_(sparse[0, 0])
    path = tmp_path_factory.mktemp("adapters") / "untrained.safetensors"
    save_adapters(adapters, path)
    return path


@pytest.fixture(scope="module")
def server(adapters_path: Path):
    with ServerProcess(["--adapters", str(adapters_path)], torch_threads=TORCH_THREADS) as process:
        yield process


@pytest.fixture(scope="module")
def volume_source(shared_data: Path) -> tuple[np.ndarray, dict]:
    """Four axial slices of ct_abdomen_small around the liver, with their geometry."""
    volume = read_volume(shared_data / "ct_abdomen_small" / "ct.nii.gz")
    first = PROMPT_SLICE_K - 1
    origin = volume.grid.ijk_to_lps(np.array([0.0, 0.0, first]))
    direction = [value for row in volume.grid.direction_lps for value in row]
    geometry = {"origin_lps": tuple(origin), "spacing_ijk": volume.grid.spacing_ijk, "direction_lps": direction, "modality": "CT"}
    return np.ascontiguousarray(volume.array[first : first + SLICES]), geometry


def test_auto_job_equals_in_process(server: ServerProcess, adapters_path: Path, volume_source: tuple) -> None:
    array, geometry = volume_source
    engine = Engine.load(adapters=str(adapters_path), device="cpu")
    local = VolumeSession(
        engine, volume_from_array(array, geometry["origin_lps"], geometry["spacing_ijk"], geometry["direction_lps"], "CT")
    )
    expected = local.auto(STRUCTURES)
    assert (expected == 1).sum() > 100  # a real mask, so the comparison below is not of two empty arrays

    reports: list[tuple[float, str]] = []
    with SegMoTEClient(server.url) as client, client.open_session(volume_source) as session:
        labels = session.auto(STRUCTURES, progress=lambda fraction, message: reports.append((fraction, message)))
        assert session.describe()["encoder_calls"] == SLICES

    assert labels.shape == expected.shape == (SLICES, 101, 122)
    assert labels.dtype == expected.dtype
    assert np.array_equal(labels, expected)
    assert reports, "no progress was reported"
    fractions = [fraction for fraction, _ in reports]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0


def test_auto_job_can_be_cancelled(server: ServerProcess, volume_source: tuple) -> None:
    cancel = threading.Event()

    def on_progress(fraction: float, message: str) -> None:
        if fraction > 0:
            cancel.set()  # cancel once the first slice is done

    with SegMoTEClient(server.url) as client, client.open_session(volume_source) as session:
        with pytest.raises(JobCancelledError):
            session.auto(STRUCTURES, progress=on_progress, cancel=cancel)
        encoded = session.describe()["encoder_calls"]
        assert 1 <= encoded < SLICES
        job_id = session.describe()["jobs"][-1]
        status, _, body = http_request(server.url, "GET", f"/v1/sessions/{session.id}/auto/{job_id}")
        assert status == 200
        assert json.loads(body)["status"] == "cancelled"

        # The result of a cancelled job does not exist.
        status, _, body = http_request(server.url, "GET", f"/v1/sessions/{session.id}/auto/{job_id}/result")
        assert status == 409
        assert "cancelled" in error_of(body)["message"]


def test_unknown_structure_lists_known_ones(server: ServerProcess, volume_source: tuple) -> None:
    with SegMoTEClient(server.url) as client, client.open_session(volume_source) as session:
        with pytest.raises(RemoteInputError, match="liver, spleen"):
            session.auto(["pancreas"])


def test_health_reports_adapters(server: ServerProcess) -> None:
    status, _, body = http_request(server.url, "GET", "/v1/health")
    assert status == 200
    model = json.loads(body)["model"]
    assert model["structures"] == STRUCTURES
    assert model["adapters"]["version"] == "untrained-test"


def test_unknown_job_gets_404(server: ServerProcess, volume_source: tuple) -> None:
    with SegMoTEClient(server.url) as client, client.open_session(volume_source) as session:
        status, _, body = http_request(server.url, "GET", f"/v1/sessions/{session.id}/auto/{'0' * 16}")
        assert status == 404
        assert error_of(body)["field"] == "job_id"
