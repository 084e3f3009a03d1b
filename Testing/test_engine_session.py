"""VolumeSession on real CT: embedding cache, refinement, propagation, label maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segmote.engine.metrics import dice
from segmote.engine.session import FeatureCache, SliceFeatures, VolumeSession
from segmote.protocol import parse_prompts

from engine_cases import TOTAL_LABELS, box_prompt_ijk, largest_axial_slice, load_small_ct

# 3-D Dice after propagation from one box on the largest slice, measured with
# benchmarks/bench_engine.py on ct_abdomen_small; the floors allow 0.02.
PROPAGATION_MEASURED = {"liver": 0.889, "kidney_right": 0.872}


@pytest.fixture(scope="module")
def small_ct(shared_data):
    return load_small_ct(shared_data)


@pytest.fixture(scope="module")
def shared_session(small_ct, bare_engine):
    """One session for the tests that do not count encoder calls, so each slice is encoded once."""
    volume, _ = small_ct
    return VolumeSession(bare_engine, volume)


def test_second_prompt_same_slice_not_reencoded(small_ct, bare_engine):
    volume, labels = small_ct
    session = VolumeSession(bare_engine, volume)
    mask = labels == TOTAL_LABELS["liver"]
    k = largest_axial_slice(mask)
    first = parse_prompts(box_prompt_ijk(mask, k, "liver"))
    session.segment(first.segments[0], "IJK")
    assert session.encoder_calls == 1

    rows, cols = np.nonzero(mask[k])
    click = {"coordinate_system": "IJK", "segments": [
        {"name": "liver", "points": [[int(cols.mean()), int(rows.mean()), k]], "point_labels": [1]}]}
    second = parse_prompts(click)
    result = session.segment(second.segments[0], "IJK")
    assert session.encoder_calls == 1
    assert session.cache.hits >= 1
    assert result.mask[k].any()


def test_point_prompt_bare_lite_medsam_warns(small_ct, shared_session, caplog):
    """LiteMedSAM was trained with boxes only: a lone click gives a nearly empty mask, and a warning is logged."""
    volume, labels = small_ct
    session = shared_session
    mask = labels == TOTAL_LABELS["liver"]
    k = largest_axial_slice(mask)
    rows, cols = np.nonzero(mask[k])
    centre = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    prompts = parse_prompts({"coordinate_system": "IJK", "segments": [
        {"name": "liver", "points": [[int(cols[centre]), int(rows[centre]), k]], "point_labels": [1]}]})
    with caplog.at_level("WARNING"):
        result = session.segment(prompts.segments[0], "IJK")
    value = dice(result.mask[k], mask[k])
    print(f"liver one-click Dice {value:.3f} (bare LiteMedSAM)")
    assert value < 0.2
    assert "trained with boxes only" in caplog.text


@pytest.mark.parametrize("name", sorted(PROPAGATION_MEASURED))
def test_propagation_dice(small_ct, shared_session, name):
    volume, labels = small_ct
    session = shared_session
    mask = labels == TOTAL_LABELS[name]
    k = largest_axial_slice(mask)
    prompts = parse_prompts(box_prompt_ijk(mask, k, name, propagate=True))
    result = session.segment(prompts.segments[0], "IJK")
    value = dice(result.mask, mask)
    print(f"{name} propagated 3-D Dice {value:.3f} over {len(result.slices)} slices")
    assert len(result.slices) > 1
    assert value >= PROPAGATION_MEASURED[name] - 0.02


def test_propagation_limit(small_ct, shared_session):
    volume, labels = small_ct
    session = shared_session
    mask = labels == TOTAL_LABELS["liver"]
    k = largest_axial_slice(mask)
    data = box_prompt_ijk(mask, k, "liver", propagate=True)
    data["segments"][0]["propagate_limit"] = 2
    prompts = parse_prompts(data)
    result = session.segment(prompts.segments[0], "IJK")
    touched = sorted(index for _, index in result.slices)
    assert touched == [index for index in range(k - 2, k + 3) if 0 <= index < volume.grid.shape_kji[0]]
    assert set(np.flatnonzero(result.mask.any(axis=(1, 2)))) <= set(touched)


def test_label_map_values_follow_segment_order(small_ct, shared_session):
    volume, labels = small_ct
    session = shared_session
    segments = []
    for name in ("spleen", "liver"):
        mask = labels == TOTAL_LABELS[name]
        k = largest_axial_slice(mask)
        segments += box_prompt_ijk(mask, k, name)["segments"]
    label_map = session.label_map(parse_prompts({"coordinate_system": "IJK", "segments": segments}))
    assert set(np.unique(label_map)) == {0, 1, 2}
    assert dice(label_map == 1, labels == TOTAL_LABELS["spleen"]) > 0.0
    spleen_k = largest_axial_slice(labels == TOTAL_LABELS["spleen"])
    assert dice(label_map[spleen_k] == 1, labels[spleen_k] == TOTAL_LABELS["spleen"]) > 0.85


def test_feature_cache_evicts_least_recent():
    def item() -> SliceFeatures:
        return SliceFeatures(torch.zeros(256), torch.zeros(256), None, None)  # 2 KiB each

    cache = FeatureCache(max_bytes=5000)
    cache.put(("axial", 0), item())
    cache.put(("axial", 1), item())
    assert cache.get(("axial", 0)) is not None  # 0 is now the most recent
    cache.put(("axial", 2), item())
    assert len(cache) == 2
    assert cache.get(("axial", 1)) is None
    assert cache.get(("axial", 0)) is not None
    assert cache.bytes == 4096
