"""Masks from the real server equal the in-process engine's, also with eight client threads at once.

The server runs the bare LiteMedSAM backbone on the CPU; the tests run the
same engine in this process with the same prompts and compare the label
arrays for equality. Each encode takes about 1 s on a laptop CPU, so the
tests keep to a few slices.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from segmote.client import SegMoTEClient
from segmote.engine.session import Engine, VolumeSession
from segmote.engine.volume import read_volume
from segmote.protocol import parse_prompts
from test_server_harness import TORCH_THREADS, one_torch_thread, LIVER, PROMPT_SLICE_K, SPLEEN, STOMACH, ServerProcess, box_ijk, box_prompts, read_labels

THREADS = 8


# The harness fixture is imported above, so pytest finds it by name here.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def server():
    with ServerProcess(["--adapters", "none"], torch_threads=TORCH_THREADS) as process:
        yield process


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(adapters="none", device="cpu")


@pytest.fixture(scope="module")
def ct_path(shared_data: Path) -> Path:
    return shared_data / "ct_abdomen_small" / "ct.nii.gz"


@pytest.fixture(scope="module")
def local(engine: Engine, ct_path: Path) -> VolumeSession:
    """One in-process session shared by the tests, so each slice is encoded once here."""
    return VolumeSession(engine, read_volume(ct_path))


@pytest.fixture(scope="module")
def reference_labels(shared_data: Path) -> np.ndarray:
    return read_labels(shared_data)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_masks_equal_in_process_engine(server: ServerProcess, local: VolumeSession, ct_path: Path, reference_labels: np.ndarray) -> None:
    k = PROMPT_SLICE_K
    liver_box = box_ijk(reference_labels[k] == LIVER, k)
    prompts = {
        "coordinate_system": "IJK",
        "segments": [
            {"name": "liver", "view": "axial", "box": liver_box, "propagate": True, "propagate_limit": 1},
            {"name": "spleen", "view": "axial", "box": box_ijk(reference_labels[k] == SPLEEN, k)},
        ],
    }
    encoded_before = local.encoder_calls
    expected = local.label_map(parse_prompts(prompts))

    with SegMoTEClient(server.url) as client, client.open_session(ct_path) as session:
        labels = session.segment(prompts)
        assert labels.shape == expected.shape == (30, 101, 122)
        assert labels.dtype == expected.dtype
        assert np.array_equal(labels, expected)

        # The masks are real segmentations, not empty arrays that are trivially equal.
        band = slice(k - 1, k + 2)
        assert dice((labels == 1)[band], reference_labels[band] == LIVER) > 0.8
        assert set(np.flatnonzero((labels == 1).any(axis=(1, 2)))) == {k - 1, k, k + 1}
        assert dice((labels == 2)[k], reference_labels[k] == SPLEEN) > 0.8
        assert session.encoder_calls == 3

        # A refining click on the same slice reuses the cached slice and still matches.
        point = np.argwhere(reference_labels[k] == LIVER)[0]
        refine = {"coordinate_system": "IJK", "segments": [
            {"name": "liver", "view": "axial", "points": [[int(point[1]), int(point[0]), k]], "point_labels": [1]},
        ]}
        refined = session.segment(refine)
        assert np.array_equal(refined, local.label_map(parse_prompts(refine)))
        assert session.encoder_calls == 3
        assert local.encoder_calls - encoded_before <= 3


def test_shifted_box_gives_another_mask(local: VolumeSession, reference_labels: np.ndarray) -> None:
    # Negative control for the equality test: a different prompt changes the mask.
    k = PROMPT_SLICE_K
    liver = local.label_map(parse_prompts(box_prompts("liver", box_ijk(reference_labels[k] == LIVER, k))))
    spleen = local.label_map(parse_prompts(box_prompts("liver", box_ijk(reference_labels[k] == SPLEEN, k))))
    assert not np.array_equal(liver, spleen)


def test_second_click_sends_only_the_change(server: ServerProcess, ct_path: Path, reference_labels: np.ndarray) -> None:
    k = PROMPT_SLICE_K
    prompts = box_prompts("liver", box_ijk(reference_labels[k] == LIVER, k))
    with SegMoTEClient(server.url) as client, client.open_session(ct_path) as session:
        first = session.segment(prompts)
        region = session.last_regions[0]
        assert region.array.shape[0] == 1  # one slice changed, not the volume
        assert region.offset_kji[0] == k
        assert region.encoder_calls == 1

        received = session.bytes_received
        second = session.segment(prompts)
        region = session.last_regions[0]
        assert np.array_equal(first, second)
        assert 0 in region.array.shape  # nothing changed
        assert region.encoder_calls == 1  # the slice was not encoded again
        assert session.bytes_received - received < 1500
        assert session.describe()["encoder_calls"] == 1


def eight_prompts(reference_labels: np.ndarray) -> list[dict]:
    """Eight different boxes on one slice, one per session."""
    k = PROMPT_SLICE_K
    liver = reference_labels[k] == LIVER
    (i0, j0, _), (i1, j1, _) = box_ijk(liver, k)
    middle_i, middle_j = (i0 + i1) // 2, (j0 + j1) // 2
    boxes = [
        box_ijk(liver, k),
        box_ijk(liver, k, margin=6),
        [[i0, j0, k], [middle_i, j1, k]],
        [[middle_i, j0, k], [i1, j1, k]],
        [[i0, j0, k], [i1, middle_j, k]],
        [[i0, middle_j, k], [i1, j1, k]],
        box_ijk(reference_labels[k] == SPLEEN, k),
        box_ijk(reference_labels[k] == STOMACH, k),
    ]
    return [box_prompts(f"structure_{number}", box) for number, box in enumerate(boxes)]


def test_eight_threads_on_eight_sessions(server: ServerProcess, local: VolumeSession, ct_path: Path, reference_labels: np.ndarray) -> None:
    all_prompts = eight_prompts(reference_labels)
    volume = local.volume
    expected = [local.label_map(parse_prompts(prompts)) for prompts in all_prompts]
    # Every thread expects a different mask, so a mix-up between sessions would show.
    for a in range(THREADS):
        assert expected[a].any()
        for b in range(a + 1, THREADS):
            assert not np.array_equal(expected[a], expected[b])

    client = SegMoTEClient(server.url)
    results: list = [None] * THREADS
    errors: list = []
    start = threading.Barrier(THREADS)

    def work(number: int) -> None:
        try:
            # Half the threads upload the file, half the array with its grid.
            source = ct_path if number % 2 == 0 else (volume.array, volume.grid)
            start.wait()
            with client.open_session(source) as session:
                results[number] = session.segment(all_prompts[number])
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append((number, error))

    threads = [threading.Thread(target=work, args=(number,)) for number in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    client.close()

    assert not errors, errors
    for number in range(THREADS):
        assert np.array_equal(results[number], expected[number]), f"thread {number}"
