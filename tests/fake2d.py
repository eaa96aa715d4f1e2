"""A deterministic stand-in 2D model for propagation and protocol tests."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class BrightInBox(nn.Module):
    """Segments bright pixels (normalised input > 0) inside the box, or within 8 px of a positive
    point; low-res size = input size, so masks are exact. ``score`` is its constant "IoU"."""

    spatial_dims = 2

    def __init__(self, size: int = 64, score: float | None = 0.9, name: str = "fake-2d") -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.img_size = self.low_res_size = size
        self.name, self.score, self.cfg = name, score, None
        self.calls = 0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1, keepdim=True) + 0 * self.w

    def decode(self, emb, points=None, boxes=None, mask_input=None, multimask=False):
        self.calls += 1
        bright = emb[0, 0] > 0
        keep = torch.zeros_like(bright)
        if boxes is not None:
            x0, y0, x1, y1 = boxes.reshape(-1)[:4].tolist()
            keep[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
        if points is not None:
            for (x, y), lab in zip(points[0][0].tolist(), points[1][0].tolist()):
                if lab == 1:
                    keep[max(0, int(y) - 8):int(y) + 9, max(0, int(x) - 8):int(x) + 9] = True
        logits = ((bright & keep).float() * 2 - 1) * 5
        n = 3 if multimask else 1
        iou = None if self.score is None else torch.full((1, n), float(self.score))
        return logits[None, None].repeat(1, n, 1, 1), iou


def tube_volume(depth: int = 30, size: int = 64, z0: int = 5, z1: int = 25, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """A noisy volume with a bright tube along axis 0 (slices z0..z1-1) drifting 0.8 px per slice."""
    zz, yy, xx = np.indices((depth, size, size))
    cx = 20 + 0.8 * zz
    tube = ((xx - cx) ** 2 + (yy - size // 2) ** 2 <= 36) & (zz >= z0) & (zz < z1)
    vol = np.random.default_rng(seed).normal(0, 5, tube.shape) + 100 * tube
    return vol.astype(np.float32), tube
