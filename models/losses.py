"""Losses for imbalanced binary segmentation (landslides are a few % of pixels).

All losses take one logit map ``(N, H, W)`` (see :func:`models.networks.landslide_logit`),
a target ``(N, H, W)`` with 1 = landslide, 0 = background, and an optional boolean
``valid`` mask of the same shape: pixels outside it (unknown labels, padding) do not count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DiceBCELoss", "FocalDiceLoss", "dice_loss", "focal_loss", "make_loss"]


def _valid(target: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return torch.ones_like(target, dtype=torch.float32)
    return valid.to(torch.float32)


def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    smooth: float = 1.0,
) -> torch.Tensor:
    """Soft Dice loss ``1 - (2·Σpt + s) / (Σp + Σt + s)`` over the whole batch."""
    w = _valid(target, valid)
    p = torch.sigmoid(logits.float()) * w
    t = target.float() * w
    inter = (p * t).sum()
    return 1.0 - (2.0 * inter + smooth) / (p.sum() + t.sum() + smooth)


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    gamma: float = 2.0,
    alpha: float = 0.25,
) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017), averaged over valid pixels."""
    w = _valid(target, valid)
    t = target.float()
    logits = logits.float()
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * t + (1 - p) * (1 - t)
    a_t = alpha * t + (1 - alpha) * (1 - t)
    loss = a_t * (1 - p_t) ** gamma * ce
    return (loss * w).sum() / w.sum().clamp_min(1.0)


class DiceBCELoss(nn.Module):
    """``bce_weight · BCE + (1 - bce_weight) · Dice``; BCE averaged over valid pixels.

    ``pos_weight`` (optional) up-weights landslide pixels in the BCE term.
    """

    def __init__(self, bce_weight: float = 0.5, pos_weight: float | None = None) -> None:
        super().__init__()
        self.bce_weight = float(bce_weight)
        self.pos_weight = pos_weight

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        w = _valid(target, valid)
        pw = None
        if self.pos_weight is not None:
            pw = torch.tensor(self.pos_weight, device=logits.device, dtype=torch.float32)
        bce = F.binary_cross_entropy_with_logits(
            logits.float(), target.float(), reduction="none", pos_weight=pw
        )
        bce = (bce * w).sum() / w.sum().clamp_min(1.0)
        return self.bce_weight * bce + (1 - self.bce_weight) * dice_loss(logits, target, valid)


class FocalDiceLoss(nn.Module):
    """``focal_weight · focal + (1 - focal_weight) · Dice``."""

    def __init__(self, focal_weight: float = 0.5, gamma: float = 2.0, alpha: float = 0.25):
        super().__init__()
        self.focal_weight = float(focal_weight)
        self.gamma = gamma
        self.alpha = alpha

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        f = focal_loss(logits, target, valid, self.gamma, self.alpha)
        return self.focal_weight * f + (1 - self.focal_weight) * dice_loss(logits, target, valid)


def make_loss(name: str) -> nn.Module:
    """``"dice_bce"`` (default) or ``"focal_dice"``."""
    if name == "dice_bce":
        return DiceBCELoss()
    if name == "focal_dice":
        return FocalDiceLoss()
    raise ValueError(f"unknown loss {name!r}; choose 'dice_bce' or 'focal_dice'")
