"""SegMoTE adapters: the MoTE decoder parameters and the PPT prompt tokens, saved as safetensors.

An adapters file holds only tensors (no pickle) plus string metadata:

- ``segmote``: JSON with the architecture ``config`` and the descriptive
  ``metadata`` (backbone name and checkpoint SHA-256, structure names, data
  sets with their licences, training command, version).

A file is bound to one backbone: :func:`load_adapters` rejects a file
trained on another backbone or on other checkpoint weights.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import ModelError
from .backbones import Backbone
from .ppt import PromptTokenizer
from .segmote_decoder import DecoderOutput, MoTEDecoder

logger = logging.getLogger(__name__)

DEFAULT_ADAPTERS = Path(__file__).resolve().parents[1] / "weights" / "segmote-lite-medsam.safetensors"

# Version of the adapters file layout; bump when keys or config fields change meaning.
FORMAT_VERSION = 1

# Prefix of the tensors of a trained copy of SAM's mask decoder (in-domain option).
DECODER_PREFIX = "mask_decoder."

# A trained decoder copy (4 M parameters for LiteMedSAM) is stored in float16.
# That halves its 16 MB, so the shipped file stays under 20 MB. Loading casts
# it back to float32. The MoTE and PPT tensors are stored in float32.
STORED_DECODER_DTYPE = torch.float16


class SegMoTEAdapters(nn.Module):
    """MoTE decoder and PPT prompt tokens for one backbone.

    Attributes:
        config: architecture numbers (token_dim, early_channels, num_blocks,
            num_expert_tokens, num_experts, bottleneck_dim, ppt_queries, structures,
            trained_decoder).
        metadata: provenance (backbone, backbone_sha256, structures, datasets with
            licences, training command, version).
        structures: the PPT classes, in label order.
        mask_decoder: a trainable copy of SAM's decoder when it was unfrozen in
            training, else None (the backbone's own frozen decoder is used).
    """

    def __init__(self, config: dict[str, Any], metadata: Optional[dict[str, Any]] = None) -> None:
        super().__init__()
        self.config = dict(config)
        self.metadata = dict(metadata or {})
        self.structures: list[str] = list(config.get("structures", []))
        self.mote = MoTEDecoder(
            token_dim=config["token_dim"],
            early_channels=config["early_channels"],
            num_blocks=config["num_blocks"],
            num_expert_tokens=config["num_expert_tokens"],
            num_experts=config["num_experts"],
            bottleneck_dim=config["bottleneck_dim"],
        )
        self.ppt = (
            PromptTokenizer(len(self.structures), config["token_dim"], config["ppt_queries"])
            if self.structures
            else None
        )
        self.mask_decoder: Optional[nn.Module] = None

    @staticmethod
    def default_config(backbone: Backbone, structures: list[str]) -> dict[str, Any]:
        """Return the default architecture for a backbone: 4 expert tokens, 4 experts, Q = 2."""
        return {
            "token_dim": backbone.mask_decoder.transformer_dim,
            "early_channels": backbone.info.early_feature_channels,
            "num_blocks": len(backbone.mask_decoder.transformer.layers),
            "num_expert_tokens": 4,
            "num_experts": 4,
            "bottleneck_dim": 64,
            "ppt_queries": 2,
            "structures": list(structures),
            "trained_decoder": False,
        }

    def warm_start(self, backbone: Backbone, noise_std: float = 0.02) -> None:
        """Initialise the expert tokens like SAM's first mask token, so training starts near SAM's output.

        Each expert token starts as SAM's first mask token plus Gaussian noise
        of std ``noise_std``, which breaks the symmetry between tokens. Each
        expert hypernetwork copies SAM's first hypernetwork, and the expert IoU
        head copies SAM's IoU head for that mask. The last layers of the experts
        and of the fused feature map start at zero. So at first the expert tokens
        skip the MLP step and the feature map equals SAM's upscaled features.
        """
        decoder = backbone.mask_decoder
        with torch.no_grad():
            first_token = decoder.mask_tokens.weight[0]
            self.mote.expert_tokens.weight.copy_(first_token + noise_std * torch.randn_like(self.mote.expert_tokens.weight))
            for network in self.mote.hypernetworks:
                network.load_state_dict(decoder.output_hypernetworks_mlps[0].state_dict())
            sam_iou = decoder.iou_prediction_head.layers
            own_iou = self.mote.iou_head.layers
            for own, sam in zip(own_iou[:-1], sam_iou[:-1]):
                own.load_state_dict(sam.state_dict())
            own_iou[-1].weight.copy_(sam_iou[-1].weight[:1])
            own_iou[-1].bias.copy_(sam_iou[-1].bias[:1])
            for router in self.mote.routers:
                for expert in router.experts:
                    nn.init.zeros_(expert.up[-1].weight)
                    nn.init.zeros_(expert.up[-1].bias)
            for last in (self.mote.features.upsample[-1], self.mote.features.refine_decoder[-1]):
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)

    def unfreeze_decoder(self, backbone: Backbone) -> None:
        """Train a copy of SAM's mask decoder too (the in-domain setting); the backbone's stays untouched."""
        self.mask_decoder = copy.deepcopy(backbone.mask_decoder).requires_grad_(True)
        self.config["trained_decoder"] = True

    def _decoder(self, backbone: Backbone) -> nn.Module:
        return self.mask_decoder if self.mask_decoder is not None else backbone.mask_decoder

    def run(
        self, backbone: Backbone, embedding: torch.Tensor, early: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> DecoderOutput:
        """Run the MoTE decoder and return every output (training uses the routings and all masks)."""
        image_pe = backbone.prompt_encoder.get_dense_pe()
        return self.mote(self._decoder(backbone), embedding, image_pe, early, sparse, dense)

    def decode_prompted(
        self, backbone: Backbone, embedding: torch.Tensor, early: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode masks from point/box prompt tokens.

        Args:
            backbone: the backbone these adapters were loaded for.
            embedding: ``(B, 256, 64, 64)`` image embedding (``B`` = 1 is broadcast).
            early: ``(B, C, h, w)`` early encoder features.
            sparse: ``(B, N, 256)`` from the backbone's prompt encoder.
            dense: ``(B, 256, 64, 64)`` from the backbone's prompt encoder.

        Returns:
            ``(logits, iou, expert)``: low-resolution logits ``(B, 1, 256, 256)``,
            predicted IoU ``(B, 1)`` and the chosen expert ``(B,)`` long.
        """
        output = self.run(backbone, embedding, early, sparse, dense)
        return output.logits, output.iou, output.expert

    def decode_auto(
        self,
        backbone: Backbone,
        embedding: torch.Tensor,
        early: torch.Tensor,
        class_index: torch.Tensor,
        dense: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode masks of named structures with no click: the learned prompt tokens replace the sparse prompt.

        Args:
            class_index: ``(B,)`` long, index into :attr:`structures`.
            dense: ``(B, 256, 64, 64)``: the "no mask" embedding in the first round,
                later the embedding of the previous round's (or slice's) logits.

        Returns:
            Same as :meth:`decode_prompted`.

        Raises:
            ModelError: these adapters have no prompt tokens.
        """
        if self.ppt is None:
            raise ModelError("these adapters were trained without named structures, so they cannot auto-segment")
        if embedding.shape[0] != class_index.shape[0]:
            embedding = embedding.expand(class_index.shape[0], -1, -1, -1)
            early = early.expand(class_index.shape[0], -1, -1, -1)
        sparse = self.ppt(embedding, class_index)
        return self.decode_prompted(backbone, embedding, early, sparse, dense)


def save_adapters(adapters: SegMoTEAdapters, path: Path | str) -> None:
    """Write adapters to a safetensors file atomically (temporary file in the same folder, then rename).

    A trained decoder copy is written in float16 (:data:`STORED_DECODER_DTYPE`), everything else in float32.
    """
    path = Path(path)
    tensors = {}
    for name, tensor in adapters.state_dict().items():
        dtype = STORED_DECODER_DTYPE if name.startswith(DECODER_PREFIX) else torch.float32
        tensors[name] = tensor.detach().to(dtype).cpu().contiguous()
    header = {"config": adapters.config, "metadata": adapters.metadata, "format_version": FORMAT_VERSION}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".partial", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata={"segmote": json.dumps(header)})
        # mkstemp creates the file readable by its owner only; adapters are shared files.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def read_adapters_header(path: Path | str) -> dict[str, Any]:
    """Return the ``{"config", "metadata", "format_version"}`` header of an adapters file.

    Raises:
        ModelError: missing, corrupt or not a SegMoTE adapters file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"adapters file not found: {path}; pass --adapters none to use the bare backbone")
    try:
        with safe_open(str(path), framework="pt") as handle:
            text = (handle.metadata() or {}).get("segmote")
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelError(f"cannot read adapters {path}: {error}; the file is corrupt or not safetensors") from None
    if not text:
        raise ModelError(f"{path} is a safetensors file without SegMoTE metadata, so it is not an adapters file")
    try:
        header = json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelError(f"adapters {path} have invalid metadata ({error}); the file is corrupt") from None
    if header.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"adapters {path} use format version {header.get('format_version')}, this SegMoTE reads version {FORMAT_VERSION}"
        )
    return header


def load_adapters(path: Path | str, backbone: Backbone) -> SegMoTEAdapters:
    """Load adapters for ``backbone`` onto the backbone's device, in eval mode, frozen.

    Raises:
        ModelError: the file is missing or corrupt, or was trained for another
            backbone name or checkpoint (SHA-256).
    """
    path = Path(path)
    header = read_adapters_header(path)
    metadata = header.get("metadata", {})
    if metadata.get("backbone") != backbone.info.name:
        raise ModelError(
            f"adapters {path} were trained for backbone {metadata.get('backbone')!r}, not {backbone.info.name!r}; "
            "choose the matching --backbone or pass --adapters none"
        )
    if metadata.get("backbone_sha256") != backbone.info.checkpoint_sha256:
        raise ModelError(
            f"adapters {path} were trained on {metadata.get('backbone')} weights with SHA-256 "
            f"{metadata.get('backbone_sha256')}, but the loaded checkpoint has {backbone.info.checkpoint_sha256}; "
            "use the matching checkpoint or pass --adapters none"
        )

    adapters = SegMoTEAdapters(header["config"], metadata)
    if adapters.config.get("trained_decoder"):
        adapters.unfreeze_decoder(backbone)
    device = next(backbone.parameters()).device
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            state = {name: handle.get_tensor(name) for name in handle.keys()}
        adapters.load_state_dict(state, strict=True)
    except (SafetensorError, OSError, RuntimeError) as error:
        first_line = str(error).splitlines()[0][:300]
        raise ModelError(f"adapters {path} do not fit their own configuration ({first_line}); the file is corrupt") from None
    adapters.requires_grad_(False)
    adapters.eval()
    logger.info("Loaded SegMoTE adapters %s (%d structures)", path, len(adapters.structures))
    return adapters.to(device)
