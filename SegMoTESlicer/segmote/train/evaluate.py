"""Validation metrics: Dice of box, click and automatic segmentation on cached slices.

Dice is computed in the 256 x 256 low-resolution decoder frame against the
cached masks. Every prompt is deterministic (exact box, deepest interior
click, corrective clicks at the deepest pixel of the largest error region),
so the bare backbone and SegMoTE see the same prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..model.adapters import SegMoTEAdapters
from ..model.backbones import Backbone
from .cache import CachedSlice
from .data import Target
from .decoding import decode_adapters, decode_base, embed_prompts
from .prompts import box_from_mask, central_point, corrective_click

EVALUATION_BATCH = 8


def dice_score(prediction: np.ndarray, target: np.ndarray) -> float:
    """Dice of two bool masks; 1.0 when both are empty."""
    total = prediction.sum() + target.sum()
    return 1.0 if total == 0 else float(2.0 * (prediction & target).sum() / total)


@dataclass
class PromptedResult:
    """Per-target results of one prompted evaluation.

    Attributes:
        dice: ``(n_targets, rounds)``: Dice after the first prompt and after each corrective click.
        iou_predicted: ``(n_targets,)`` predicted IoU of the first prompt's mask.
        experts: ``(n_targets,)`` chosen expert (-1 for the bare backbone).
    """

    dice: np.ndarray
    iou_predicted: np.ndarray
    experts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))


def _batch_tensors(slices: list[CachedSlice], targets: list[Target]) -> tuple[torch.Tensor, torch.Tensor]:
    embedding = torch.stack([slices[t.slice_index].embedding for t in targets]).float()
    early = torch.stack([slices[t.slice_index].early for t in targets]).float()
    return embedding, early


@torch.no_grad()
def evaluate_prompted(
    backbone: Backbone,
    adapters: Optional[SegMoTEAdapters],
    slices: list[CachedSlice],
    targets: list[Target],
    first_prompt: str = "box",
    corrective_clicks: int = 0,
) -> PromptedResult:
    """Segment each target from a box or one interior click, then corrective clicks.

    Args:
        adapters: None evaluates the bare backbone.
        first_prompt: ``"box"`` or ``"click"``.
        corrective_clicks: clicks added after the first prompt, each fed the previous logits.
    """
    device = backbone.pixel_mean.device
    dice_rows, iou_rows, expert_rows = [], [], []
    for start in range(0, len(targets), EVALUATION_BATCH):
        batch = targets[start : start + EVALUATION_BATCH]
        B = len(batch)
        embedding, early = _batch_tensors(slices, batch)
        embedding, early = embedding.to(device), early.to(device)
        masks = [t.mask.numpy() for t in batch]
        boxes = [box_from_mask(m) for m in masks] if first_prompt == "box" else None
        points: list[list[np.ndarray]] = [[] for _ in batch]
        labels: list[list[int]] = [[] for _ in batch]
        if first_prompt == "click":
            for item, mask in enumerate(masks):
                points[item].append(central_point(mask))
                labels[item].append(1)

        previous = None
        batch_dice = np.zeros((B, corrective_clicks + 1))
        for round_index in range(corrective_clicks + 1):
            sparse, dense = embed_prompts(
                backbone, B, points if points[0] else None, labels if points[0] else None, boxes, previous
            )
            if adapters is None:
                logits, iou = decode_base(backbone, embedding, sparse, dense, box_given=boxes is not None)
                experts = torch.full((B,), -1)
            else:
                output = decode_adapters(adapters, backbone, embedding, early, sparse, dense)
                logits, iou, experts = output.logits, output.iou, output.expert
            predictions = (logits[:, 0] > 0).cpu().numpy()
            for item in range(B):
                batch_dice[item, round_index] = dice_score(predictions[item], masks[item])
            if round_index == 0:
                iou_rows.append(iou[:, 0].cpu().numpy())
                expert_rows.append(experts.cpu().numpy())

            # Add one corrective click per item; a perfect mask gets a confirming click inside.
            for item in range(B):
                click = corrective_click(predictions[item], masks[item])
                if click is None:
                    click = (central_point(masks[item]), 1)
                points[item].append(click[0])
                labels[item].append(click[1])
            previous = logits
        dice_rows.append(batch_dice)
    return PromptedResult(np.concatenate(dice_rows), np.concatenate(iou_rows), np.concatenate(expert_rows))


@torch.no_grad()
def evaluate_auto(
    backbone: Backbone,
    adapters: SegMoTEAdapters,
    slices: list[CachedSlice],
    targets: list[Target],
    rounds: int = 3,
) -> np.ndarray:
    """Segment each automatic target with its learned prompt tokens and no seed; return Dice per target."""
    device = backbone.pixel_mean.device
    scores = []
    for start in range(0, len(targets), EVALUATION_BATCH):
        batch = targets[start : start + EVALUATION_BATCH]
        embedding, early = _batch_tensors(slices, batch)
        class_index = torch.tensor([t.class_index for t in batch], device=device)
        logits = auto_rounds(backbone, adapters, embedding.to(device), early.to(device), class_index, None, rounds)[-1][0]
        predictions = (logits[:, 0] > 0).cpu().numpy()
        scores.extend(dice_score(predictions[i], batch[i].mask.numpy()) for i in range(len(batch)))
    return np.array(scores)


def auto_rounds(
    backbone: Backbone,
    adapters: SegMoTEAdapters,
    embedding: torch.Tensor,
    early: torch.Tensor,
    class_index: torch.Tensor,
    seed: Optional[torch.Tensor],
    rounds: int,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Run progressive automatic segmentation; return ``(logits, iou, expert)`` of every round.

    Args:
        seed: ``(B, 1, 256, 256)`` logits used as the first round's dense prompt
            (a neighbouring slice's mask), or None for "no mask".
    """
    B = class_index.shape[0]
    previous = seed
    results = []
    for _ in range(rounds):
        _, dense = embed_prompts(backbone, B, mask_logits=previous)
        logits, iou, expert = adapters.decode_auto(backbone, embedding, early, class_index, dense)
        results.append((logits, iou, expert))
        previous = logits
    return results

