"""SAM-Med2D's simulated interaction for training 2D models (``train.py``), one ``forward`` per batch.

Round 1: for the whole batch, a box (probability ``box_prob``; the largest component's box
translated by up to ``box_jitter`` pixels, ``get_boxes_from_mask``) or one uniform foreground
point. The image encoder runs with gradients (only its trainable parts learn). Rounds 2..K use the
embedding detached, as the official loop: ``n`` points (``n`` drawn from ``point_choices``)
uniform in the current error region (1 if missed, 0 if extra) *replace* the previous prompts, the
box is dropped and the previous low-res mask is fed back the model's way (SAM-Med2D: sigmoid); with
K >= 3 and ``mask_only_last`` the last round sends the mask alone. Multimask outputs keep the
candidate with the highest predicted IoU. Loss per round: ``loss`` on the mask upsampled to the
input size plus ``iou_loss_weight`` x MSE(predicted IoU, true IoU) (models with an IoU head);
averaged over rounds. All prompts are in the model frame (pixel ``(x, y)``).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..eval.clicks import sam_med2d_box
from ..preprocess.image2d import Policy2D
from .config import Train2DConfig
from .losses import segmentation_loss

Embedding = torch.Tensor | dict


def jittered_box(mask: np.ndarray, rng: np.random.Generator, max_shift: int) -> list[float]:
    """SAM-Med2D's training box: the largest component's XYXY box translated by one random offset
    per axis in ``[-m, m)``, ``m = min(max_shift, int(0.5 * min(w, h)))``; clipped to the image."""
    x0, y0, x1, y1 = sam_med2d_box(mask)
    m = min(max_shift, int(0.5 * min(x1 - x0, y1 - y0)))
    dx, dy = (int(rng.integers(-m, m)) if m > 0 else 0 for _ in range(2))
    h, w = mask.shape
    box = [min(max(x0 + dx, 0), w), min(max(y0 + dy, 0), h), min(max(x1 + dx, 0), w), min(max(y1 + dy, 0), h)]
    if box[2] <= box[0] or box[3] <= box[1]:
        box = [x0, y0, x1, y1]
    return [float(v) for v in box]


def random_points(region: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniform (row, col) pixels of ``region`` (with replacement)."""
    idx = np.flatnonzero(region)
    pick = idx[rng.integers(idx.size, size=n)]
    return np.stack(np.unravel_index(pick, region.shape), axis=1)


def error_points(pred: np.ndarray, gt: np.ndarray, n: int, rng: np.random.Generator) -> tuple[list, list]:
    """``n`` points uniform in ``pred != gt`` as ((x, y), label 1 missed / 0 extra); no error:
    foreground points, positive."""
    error = pred != gt
    rc = random_points(error if error.any() else gt, n, rng)
    return [[float(c), float(r)] for r, c in rc], [int(gt[r, c]) for r, c in rc]


class ClickLoop2D(nn.Module):
    """Wraps a 2D model so one ``forward`` runs SAM-Med2D's simulated interaction on a batch."""

    def __init__(self, model: nn.Module, policy: Policy2D, opts: Train2DConfig, click_steps: int, loss: str,
                 iou_loss_weight: float = 1.0) -> None:
        super().__init__()
        self.model, self.policy, self.opts = model, policy, opts
        self.click_steps, self.loss, self.iou_loss_weight = click_steps, loss, iou_loss_weight
        default = 1.0 if policy.name == "sam-unet" else 0.5
        self.box_prob = default if opts.box_prob is None else opts.box_prob

    def _decode(self, emb: Embedding, points: tuple | None, boxes: torch.Tensor | None,
                mask_input: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        n_points = 0 if points is None else points[0].shape[1]
        multimask = self.policy.wants_multimask(n_points, boxes is not None)
        low, iou = self.model.decode(emb, points=points, boxes=boxes, mask_input=mask_input, multimask=multimask)
        if low.shape[1] > 1:  # keep the candidate with the highest predicted IoU (official train.py)
            pick = iou.argmax(dim=1)
            rows = torch.arange(low.shape[0], device=low.device)
            low, iou = low[rows, pick][:, None], iou[rows, pick][:, None]
        return low, iou

    def forward(self, image: torch.Tensor, gt: torch.Tensor, rng: np.random.Generator,
                autocast: Callable[[], object]) -> tuple[torch.Tensor, dict[str, float]]:
        size, dev = self.model.img_size, image.device
        gt_np = gt.bool().cpu().numpy()[:, 0]
        with autocast():
            emb = self.model.encode(image)
        total = image.new_zeros(())
        stats: dict[str, float] = {}
        pred_np = np.zeros_like(gt_np)
        prev: torch.Tensor | None = None
        for step in range(self.click_steps):
            points, boxes, feed = None, None, None
            if step == 0:
                if rng.random() < self.box_prob:
                    boxes = torch.tensor([jittered_box(g, rng, self.opts.box_jitter) for g in gt_np], device=dev)
                else:
                    xy = [[[float(c), float(r)] for r, c in random_points(g, 1, rng)] for g in gt_np]
                    points = (torch.tensor(xy, device=dev), torch.ones((len(xy), 1), dtype=torch.int64, device=dev))
            else:
                emb = _detach(emb)
                feed = self.policy.feedback(prev)
                mask_only = self.opts.mask_only_last and self.click_steps >= 3 and step == self.click_steps - 1
                if not mask_only:
                    n = int(self.opts.point_choices[int(rng.integers(len(self.opts.point_choices)))])
                    drawn = [error_points(p, g, n, rng) for p, g in zip(pred_np, gt_np)]
                    points = (torch.tensor([d[0] for d in drawn], device=dev),
                              torch.tensor([d[1] for d in drawn], dtype=torch.int64, device=dev))
            with autocast():
                low, iou = self._decode(emb, points, boxes, feed)
            up = F.interpolate(low.float(), size=(size, size), mode="bilinear", align_corners=False)
            seg_loss, dice, true_iou = segmentation_loss(up, gt, self.loss)
            total = total + seg_loss
            if iou is not None:
                total = total + self.iou_loss_weight * F.mse_loss(iou.float()[:, 0], true_iou)
            prev = low.detach().float()
            pred_np = (up.detach() > 0).cpu().numpy()[:, 0]
            stats[f"dice_{step + 1}"] = float(dice.mean())
        stats["dice"] = stats[f"dice_{self.click_steps}"]
        return total / self.click_steps, stats


def _detach(emb: Embedding) -> Embedding:
    if isinstance(emb, dict):
        return {k: v.detach() for k, v in emb.items()}
    return emb.detach()


__all__ = ["ClickLoop2D", "error_points", "jittered_box", "random_points"]
