"""SAM-Med2D's adapter: one per ViT block, parallel to the MLP (keys ``Adapter.*``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Adapter(nn.Module):
    """Channel attention (SE-like) then a stride-2 conv / transposed-conv pair, residual, LayerNorm.

    Input and output are channels-last 2D tokens ``(B, H, W, C)``; H and W must be even.
    The LayerNorm uses PyTorch's default eps 1e-5, unlike the ViT's 1e-6 (as the official code).
    """

    def __init__(self, dim: int, ratio: float = 0.25) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.norm = nn.LayerNorm(dim)
        self.channel = nn.Sequential(
            nn.Linear(dim, hidden, bias=False),
            nn.ReLU(),
            nn.Linear(hidden, dim, bias=False),
            nn.Sigmoid(),
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=4, stride=2, padding=1, bias=False),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        b, c = x.shape[:2]
        weights = self.channel(F.adaptive_avg_pool2d(x, 1).view(b, c)).view(b, c, 1, 1)
        x = x + self.spatial(weights * x)
        return self.norm(x.permute(0, 2, 3, 1))
