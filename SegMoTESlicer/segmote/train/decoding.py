"""Batched decoder calls shared by training, validation and the benchmark.

Prompts live in the low-resolution frame (see :mod:`segmote.train.prompts`);
these helpers scale them to the encoder input and call either the bare SAM
decoder or the SegMoTE adapters.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..engine.predictor import choose_output
from ..model.adapters import SegMoTEAdapters
from ..model.backbones import Backbone
from ..model.segmote_decoder import DecoderOutput
from .prompts import to_model_coordinates

# Logit value of a binary mask used as a dense prompt (inside +, outside -).
SEED_LOGIT_MAGNITUDE = 8.0


def embed_prompts(
    backbone: Backbone,
    batch_size: int,
    points: Optional[list[list[np.ndarray]]] = None,
    labels: Optional[list[list[int]]] = None,
    boxes: Optional[list[np.ndarray]] = None,
    mask_logits: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed prompts given in the low-resolution frame with the backbone's prompt encoder.

    Args:
        points: per item, a list of ``(x, y)`` clicks (the same count for every item).
        labels: per item, 1 (foreground) or 0 (background) per click.
        boxes: per item, ``(4,)`` as ``x0, y0, x1, y1``.
        mask_logits: ``(B, 1, 256, 256)`` dense prompt, or None for "no mask".

    Returns:
        ``(sparse (B, N, D), dense (B, D, h, w))``.
    """
    device = backbone.pixel_mean.device
    size = backbone.info.image_size
    point_input = None
    if points:
        coords = torch.as_tensor(np.stack([to_model_coordinates(np.stack(p), size) for p in points]), device=device)
        point_input = (coords, torch.as_tensor(np.array(labels), dtype=torch.int64, device=device))
    box_input = None
    if boxes is not None:
        box_xyxy = to_model_coordinates(np.stack(boxes).reshape(-1, 2), size).reshape(-1, 4)
        box_input = torch.as_tensor(box_xyxy, device=device)
    sparse, dense = backbone.prompt_encoder(point_input, box_input, mask_logits)
    if sparse.shape[0] != batch_size:
        sparse = sparse.expand(batch_size, -1, -1)
    if dense.shape[0] != batch_size:
        dense = dense.expand(batch_size, -1, -1, -1)
    return sparse, dense


def decode_base(
    backbone: Backbone, embedding: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor, box_given: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the bare SAM decoder on one prompt per image, choosing outputs as the engine does.

    With a box, SAM's single-mask output is kept. With points alone, the
    multimask outputs are computed and :func:`segmote.engine.predictor.choose_output`
    picks one, so the benchmark's base is the engine's ``--adapters none``.

    Returns:
        ``(logits (B, 1, 256, 256), iou (B, 1))``.
    """
    image_pe = backbone.prompt_encoder.get_dense_pe()
    logits, iou = [], []
    for item in range(sparse.shape[0]):
        masks, scores = backbone.mask_decoder(
            embedding[item : item + 1], image_pe, sparse[item : item + 1], dense[item : item + 1], not box_given
        )
        choice = choose_output(scores[0], box_given)
        logits.append(masks[:, choice : choice + 1])
        iou.append(scores[:, choice : choice + 1])
    return torch.cat(logits), torch.cat(iou)


def decode_adapters(
    adapters: SegMoTEAdapters,
    backbone: Backbone,
    embedding: torch.Tensor,
    early: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
) -> DecoderOutput:
    """Run the SegMoTE decoder on a batch (one prompt per image)."""
    return adapters.run(backbone, embedding, early, sparse, dense)


def seed_logits(masks: torch.Tensor) -> torch.Tensor:
    """Turn bool masks ``(B, 256, 256)`` into dense-prompt logits ``(B, 1, 256, 256)`` of +-8."""
    return (masks.float() * 2.0 - 1.0).unsqueeze(1) * SEED_LOGIT_MAGNITUDE
