"""Training losses: focal + Dice on the mask logits, MSE on the predicted IoU, and the MoTE balance loss.

Weights of the default recipe: ``20 * focal + Dice + IoU MSE + 0.01 * balance``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

FOCAL_WEIGHT = 20.0
DICE_WEIGHT = 1.0
IOU_WEIGHT = 1.0
BALANCE_WEIGHT = 0.01

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sigmoid focal loss, mean over all pixels; ``logits`` and ``target`` ``(B, 1, H, W)``, target in {0, 1}."""
    probability = logits.sigmoid()
    cross_entropy = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_true = probability * target + (1 - probability) * (1 - target)
    alpha = FOCAL_ALPHA * target + (1 - FOCAL_ALPHA) * (1 - target)
    return (alpha * (1 - p_true) ** FOCAL_GAMMA * cross_entropy).mean()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per item, averaged over the batch; ``smooth`` keeps an empty target defined."""
    probability = logits.sigmoid().flatten(1)
    target = target.flatten(1)
    intersection = (probability * target).sum(dim=1)
    total = probability.sum(dim=1) + target.sum(dim=1)
    return (1 - (2 * intersection + smooth) / (total + smooth)).mean()


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU ``(B,)`` of the thresholded logits with the target; 1 when both are empty."""
    prediction = (logits > 0).flatten(1)
    target = target.flatten(1) > 0.5
    intersection = (prediction & target).sum(dim=1).float()
    union = (prediction | target).sum(dim=1).float()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


@dataclass
class LossTerms:
    """The weighted total and its unweighted parts (for logs)."""

    total: torch.Tensor
    focal: float
    dice: float
    iou_mse: float
    balance: float


def segmentation_loss(
    logits: torch.Tensor, predicted_iou: torch.Tensor, target: torch.Tensor, balance: torch.Tensor
) -> LossTerms:
    """Combine the four terms for one decoder pass.

    Args:
        logits: ``(B, 1, H, W)`` low-resolution logits.
        predicted_iou: ``(B, 1)``.
        target: ``(B, 1, H, W)`` float in {0, 1}.
        balance: scalar unweighted balance loss.
    """
    focal = focal_loss(logits, target)
    dice = dice_loss(logits, target)
    iou_mse = F.mse_loss(predicted_iou[:, 0], mask_iou(logits.detach(), target))
    total = FOCAL_WEIGHT * focal + DICE_WEIGHT * dice + IOU_WEIGHT * iou_mse + BALANCE_WEIGHT * balance
    return LossTerms(total, float(focal.detach()), float(dice.detach()), float(iou_mse.detach()), float(balance.detach()))
