"""SegMoTE adapters files: safetensors round trip, backbone binding, corrupt files, the shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from segmote.errors import ModelError
from segmote.model.adapters import (
    DEFAULT_ADAPTERS,
    SegMoTEAdapters,
    load_adapters,
    read_adapters_header,
    save_adapters,
)
from segmote.model.backbones import build_backbone

MAX_SHIPPED_BYTES = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_backbone("lite-medsam")


def make_adapters(backbone, structures=("liver", "spleen")) -> SegMoTEAdapters:
    metadata = {"backbone": backbone.info.name, "backbone_sha256": backbone.info.checkpoint_sha256, "version": "test"}
    adapters = SegMoTEAdapters(SegMoTEAdapters.default_config(backbone, list(structures)), metadata)
    adapters.warm_start(backbone)
    # Move every parameter away from its initial value, so a load that kept
    # the initialisation instead of the file's tensors would be caught.
    with torch.no_grad():
        for parameter in adapters.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    # Frozen like loaded adapters: torch's attention takes another (equally
    # valid, not bit-identical) kernel when parameters require gradients.
    return adapters.eval().requires_grad_(False)


def random_inputs(backbone, batch: int = 2):
    generator = torch.Generator().manual_seed(1)
    embedding = torch.randn(batch, 256, 64, 64, generator=generator)
    early = torch.randn(batch, backbone.info.early_feature_channels, 128, 128, generator=generator)
    boxes = torch.tensor([[40.0, 50.0, 120.0, 140.0], [10.0, 20.0, 200.0, 90.0]])[:batch]
    sparse, dense = backbone.prompt_encoder(None, boxes, None)
    return embedding, early, sparse, dense


def test_round_trip_identical_outputs(backbone, tmp_path: Path):
    adapters = make_adapters(backbone)
    path = tmp_path / "adapters.safetensors"
    save_adapters(adapters, path)
    loaded = load_adapters(path, backbone)

    embedding, early, sparse, dense = random_inputs(backbone)
    with torch.no_grad():
        before = adapters.decode_prompted(backbone, embedding, early, sparse, dense)
        after = loaded.decode_prompted(backbone, embedding, early, sparse, dense)
        auto_before = adapters.decode_auto(backbone, embedding, early, torch.tensor([0, 1]), dense)
        auto_after = loaded.decode_auto(backbone, embedding, early, torch.tensor([0, 1]), dense)
    for expected, actual in zip(before + auto_before, after + auto_after):
        assert torch.equal(expected, actual)
    assert loaded.structures == ["liver", "spleen"]
    assert loaded.metadata["version"] == "test"
    assert not any(parameter.requires_grad for parameter in loaded.parameters())


def test_round_trip_negative_control(backbone, tmp_path: Path):
    # A differently initialised adapter must give different logits, or the round-trip check proves nothing.
    path = tmp_path / "adapters.safetensors"
    save_adapters(make_adapters(backbone), path)
    loaded = load_adapters(path, backbone)
    other = make_adapters(backbone)
    embedding, early, sparse, dense = random_inputs(backbone)
    with torch.no_grad():
        assert not torch.equal(
            loaded.decode_prompted(backbone, embedding, early, sparse, dense)[0],
            other.decode_prompted(backbone, embedding, early, sparse, dense)[0],
        )


def test_file_is_plain_safetensors(backbone, tmp_path: Path):
    path = tmp_path / "adapters.safetensors"
    save_adapters(make_adapters(backbone), path)
    raw = path.read_bytes()
    header_length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_length])
    assert "__metadata__" in header
    assert b"\x80\x04" not in raw[:2]  # not a pickle stream
    segmote = json.loads(header["__metadata__"]["segmote"])
    assert segmote["metadata"]["backbone"] == "lite-medsam"
    assert segmote["config"]["num_expert_tokens"] == 4


def test_wrong_backbone_name_rejected(backbone, tmp_path: Path):
    adapters = make_adapters(backbone)
    adapters.metadata["backbone"] = "sam-vit-b"
    path = tmp_path / "adapters.safetensors"
    save_adapters(adapters, path)
    with pytest.raises(ModelError, match="sam-vit-b"):
        load_adapters(path, backbone)


def test_wrong_checkpoint_rejected(backbone, tmp_path: Path):
    adapters = make_adapters(backbone)
    adapters.metadata["backbone_sha256"] = "0" * 64
    path = tmp_path / "adapters.safetensors"
    save_adapters(adapters, path)
    with pytest.raises(ModelError, match="SHA-256"):
        load_adapters(path, backbone)


def test_truncated_file_rejected(backbone, tmp_path: Path):
    path = tmp_path / "adapters.safetensors"
    save_adapters(make_adapters(backbone), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelError, match="corrupt"):
        load_adapters(path, backbone)


def test_missing_file_rejected(backbone, tmp_path: Path):
    with pytest.raises(ModelError, match="not found"):
        load_adapters(tmp_path / "absent.safetensors", backbone)


def test_shipped_adapters_load(backbone):
    assert DEFAULT_ADAPTERS.is_file(), f"shipped adapters missing at {DEFAULT_ADAPTERS}"
    assert DEFAULT_ADAPTERS.stat().st_size <= MAX_SHIPPED_BYTES
    metadata = read_adapters_header(DEFAULT_ADAPTERS)["metadata"]
    for key in ("backbone", "backbone_sha256", "structures", "datasets", "training_command", "version"):
        assert key in metadata, key
    assert "ct_abdomen_dicom" not in metadata["datasets"]
    assert "research use" in metadata["terms"]
    adapters = load_adapters(DEFAULT_ADAPTERS, backbone)
    for name in ("liver", "spleen", "stomach", "aorta"):
        assert name in adapters.structures


def test_decoder_copy_stored_float16(backbone, tmp_path: Path):
    # The in-domain option stores a trained copy of SAM's decoder in float16:
    # the file must stay within the shipping budget, and outputs must stay
    # close to the float32 ones (the rounding is the only difference).
    adapters = make_adapters(backbone)
    adapters.unfreeze_decoder(backbone)
    with torch.no_grad():
        for parameter in adapters.mask_decoder.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    adapters.eval().requires_grad_(False)
    path = tmp_path / "adapters.safetensors"
    save_adapters(adapters, path)
    assert path.stat().st_size <= MAX_SHIPPED_BYTES
    with safe_open(str(path), framework="pt") as handle:
        dtypes = {name: handle.get_slice(name).get_dtype() for name in handle.keys()}
    assert {dtype for name, dtype in dtypes.items() if name.startswith("mask_decoder.")} == {"F16"}
    assert {dtype for name, dtype in dtypes.items() if not name.startswith("mask_decoder.")} == {"F32"}

    loaded = load_adapters(path, backbone)
    assert loaded.mask_decoder is not None
    assert all(parameter.dtype == torch.float32 for parameter in loaded.parameters())
    embedding, early, sparse, dense = random_inputs(backbone)
    with torch.no_grad():
        before = adapters.decode_prompted(backbone, embedding, early, sparse, dense)[0]
        after = loaded.decode_prompted(backbone, embedding, early, sparse, dense)[0]
        bare = make_adapters(backbone).decode_prompted(backbone, embedding, early, sparse, dense)[0]
    # Rounding changes the logits far less than a different decoder does.
    assert (after - before).abs().max() < 0.1 * (bare - before).abs().max()
