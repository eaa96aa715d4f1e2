"""Segmentation losses on full-resolution logits ``(B, 1, *S)`` against a binary target.

* ``dice_ce``: soft Dice + binary cross-entropy, equal weights (SAM-Med3D's DiceCELoss).
* ``focal_dice``: 20 x focal + 1 x Dice (SAM's and SAM-Med2D's weighting).
* ``focal_20dice``: 1 x focal + 20 x Dice (SAM-UNet's training scripts: the weighting reversed).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_WEIGHT = 20.0
FOCAL_GAMMA = 2.0
FOCAL_ALPHA = 0.25
SMOOTH = 1e-5


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample 1 - soft Dice of ``sigmoid(logits)``."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(1)
    return 1 - (2 * inter + SMOOTH) / (p.sum(1) + t.sum(1) + SMOOTH)


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample sigmoid focal loss (mean over voxels)."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    alpha = FOCAL_ALPHA * target + (1 - FOCAL_ALPHA) * (1 - target)
    return (alpha * ce * (1 - p_t) ** FOCAL_GAMMA).flatten(1).mean(1)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: str
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, hard Dice per sample, hard IoU per sample)``; loss is the batch mean."""
    loss, dice, iou = per_sample_loss(logits, target, kind)
    return loss.mean(), dice, iou


def per_sample_loss(logits: torch.Tensor, target: torch.Tensor, kind: str
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, hard Dice, hard IoU)``, each per sample ``(B,)`` (the best-of-hypotheses loss needs them apart)."""
    target = target.float().reshape(logits.shape)
    logits = logits.float()
    dice_l = soft_dice_loss(logits, target)
    if kind == "dice_ce":
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
        loss = dice_l + ce
    elif kind == "focal_dice":
        loss = FOCAL_WEIGHT * focal_loss(logits, target) + dice_l
    elif kind == "focal_20dice":
        loss = focal_loss(logits, target) + FOCAL_WEIGHT * dice_l
    else:
        raise ValueError(f"unknown loss {kind!r}")
    with torch.no_grad():
        hard = (logits > 0).float().flatten(1)
        t = target.flatten(1)
        inter = (hard * t).sum(1)
        union = hard.sum(1) + t.sum(1)
        dice = torch.where(union > 0, 2 * inter / union.clamp_min(1), torch.ones_like(inter))
        iou = torch.where(union - inter > 0, inter / (union - inter).clamp_min(1), torch.ones_like(inter))
    return loss, dice, iou
