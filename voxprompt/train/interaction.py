"""Iterative prompt simulation during training, as the evaluation protocols click.

One image embedding per sample, then ``click_steps`` decoder passes: the first click lies in
the target, each later click in the current error (the centre of the largest error component,
as the CVPR 2025 protocol, or a uniform error voxel, as SAM-Med3D's), and the previous low-res
logits are fed back as ``mask_input`` (detached, as the official training loop does). The loss is
averaged over the passes. With ``mask_prior_prob`` a sample starts instead from a mask prior of the
kind a session feeds (:mod:`.priors`), its first click on that prior's error. With
``multimask_first`` the first pass of a sample without a prior also trains the decoder's multimask
outputs, SAM's answer to an ambiguous single click (part, organ, region): only the best of them gets
the loss, and the IoU head learns each one's IoU, by which a session chooses among them. With
``box_prob`` a sample without a prior starts from the prompt a session makes of the CVPR 2025 box
(``Session.add_box`` with ``box_negatives``): a positive click at the box's centre and negative clicks
just beyond its faces, so that the model learns what those negatives say about the object's extent.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..eval.clicks import cvpr25_initial_box, cvpr25_next_click, sam_med3d_random_click
from ..session.roi_predictor import mask_prior_logits
from ..session.strokes import box_centre, box_negatives
from .losses import per_sample_loss, segmentation_loss
from .priors import degraded_prior


def next_clicks(pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator, mode: str) -> list[tuple]:
    """One click per sample of a batch ``(B, *S)``: ``[(index, label), ...]``."""
    out = []
    for p, g in zip(pred, gt):
        use_centre = mode == "cvpr25" or (mode == "mixed" and rng.random() < 0.5)
        click = cvpr25_next_click(p, g) if use_centre else None
        if click is None:
            click = sam_med3d_random_click(p, g, rng)
        out.append((click.index, click.label))
    return out


# ROI voxels beyond a box face where a training box's negative click goes: a session puts them 2 voxels of
# the image beyond (BOX_NEGATIVE_MARGIN), which on a CT of 0.7-3 mm is about one voxel of a 2.75 mm ROI
BOX_MARGIN = 1


def box_prompt(gt: np.ndarray, rng: np.random.Generator, margin: int = BOX_MARGIN) -> list[tuple]:
    """The clicks ``Session.add_box`` (with ``box_negatives``) makes of the CVPR 2025 box of ``gt`` ``(D, H, W)``,
    perturbed as the challenge does: ``[(index, 1), (index, 0), ...]``, the positive click at the box's
    centre (at the target's centre click when the box's centre misses it, as ``box_search`` would find a
    voxel inside), then one negative click ``margin`` voxels beyond each in-plane face."""
    box = cvpr25_initial_box(gt, rng)
    lo = np.array([box.z_mid, box.y_min, box.x_min])
    hi = np.array([box.z_mid + 1, box.y_max + 1, box.x_max + 1])
    centre = box_centre(lo, hi)
    seed = tuple(int(v) for v in centre)
    if not gt[seed]:
        seed = cvpr25_next_click(np.zeros_like(gt), gt).index
    negatives = box_negatives(lo, hi, centre, gt.shape, margin)
    return [(seed, 1)] + [(tuple(int(v) for v in q), 0) for q in negatives]


class ClickLoop(nn.Module):
    """Wraps a promptable 3D model so one ``forward`` runs a whole simulated interaction.

    Wrapping it in DistributedDataParallel synchronises every parameter used in any pass.
    """

    def __init__(self, model: nn.Module, click_steps: int, click_mode: str, loss: str,
                 iou_loss_weight: float = 1.0, mask_prior_prob: float = 0.0,
                 multimask_first: bool = False, first_click_weight: float = 1.0, box_prob: float = 0.0) -> None:
        super().__init__()
        if not first_click_weight > 0:
            raise ValueError(f"first_click_weight must be > 0, got {first_click_weight}")
        if not 0 <= box_prob <= 1:
            raise ValueError(f"box_prob must be in [0, 1], got {box_prob}")
        self.model = model
        self.click_steps, self.click_mode, self.loss = click_steps, click_mode, loss
        self.iou_loss_weight = iou_loss_weight
        self.mask_prior_prob = float(mask_prior_prob)
        self.multimask_first = bool(multimask_first)
        self.first_click_weight = float(first_click_weight)
        self.box_prob = float(box_prob)

    def forward(self, image: torch.Tensor, gt: torch.Tensor, rng: np.random.Generator,
                autocast: Callable[[], object], first: np.ndarray | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss averaged over the click passes, the first weighted by ``first_click_weight`` (the one
        answer a user gets from a single click); ``first`` (B, 3) gives positive first clicks (rows of
        -1: simulated like the later ones)."""
        m = self.model
        size, low = m.img_size, m.low_res_size
        gt_np = gt.bool().cpu().numpy()[:, 0]
        pred_np = np.zeros_like(gt_np)
        coords: list[list] = [[] for _ in range(len(gt_np))]
        labels: list[list] = [[] for _ in range(len(gt_np))]
        prev = torch.zeros((image.shape[0], 1) + (low,) * 3, device=image.device)
        primed = self._prime(prev, pred_np, gt_np, rng)
        boxed = self._boxed(gt_np, primed, rng)
        with autocast():
            emb = m.encode(image)
        total = image.new_zeros(())
        stats: dict[str, float] = {}
        for step in range(self.click_steps):
            for b, (idx, lab) in enumerate(next_clicks(pred_np, gt_np, rng, self.click_mode)):
                if step == 0 and b in boxed:
                    coords[b].extend(c for c, _ in boxed[b])
                    labels[b].extend(v for _, v in boxed[b])
                    continue
                if step == 0 and first is not None and first[b][0] >= 0 and b not in primed:
                    idx, lab = tuple(int(i) for i in first[b]), 1
                coords[b].append(idx)
                labels[b].append(lab)
            if step == 0 and boxed:  # pad to the longest prompt with "not a point" (label -1)
                n = max(len(c) for c in coords)
                for c, v in zip(coords, labels):
                    c.extend([(0,) * (image.dim() - 2)] * (n - len(c)))
                    v.extend([-1] * (n - len(v)))
            pts = (torch.tensor(coords, dtype=torch.float32, device=image.device),
                   torch.tensor(labels, dtype=torch.int64, device=image.device))
            with autocast():
                logits, iou = m.decode(emb, points=pts, mask_input=prev, multimask=False)
            up = F.interpolate(logits.float(), size=(size,) * 3, mode="trilinear", align_corners=False)
            seg_loss, dice, true_iou = segmentation_loss(up, gt, self.loss)
            iou_loss = F.mse_loss(iou.float()[:, 0], true_iou)
            weight = self.first_click_weight if step == 0 else 1.0
            total = total + weight * (seg_loss + self.iou_loss_weight * iou_loss)
            if step == 0 and self.multimask_first:
                total = total + self._multimask(emb, pts, prev, gt, primed, autocast, stats)
            prev = logits.detach().float()
            pred_np = (up.detach() > 0).cpu().numpy()[:, 0]
            stats[f"dice_{step + 1}"] = float(dice.mean())
        stats["dice"] = stats[f"dice_{self.click_steps}"]
        return total / (self.click_steps - 1 + self.first_click_weight), stats

    def _multimask(self, emb: torch.Tensor, pts: tuple, prev: torch.Tensor, gt: torch.Tensor, primed: set[int],
                   autocast: Callable[[], object], stats: dict[str, float]) -> torch.Tensor:
        """The first pass's multimask loss: per sample without a prior, the best output's segmentation
        loss plus the IoU head's error on every output (SAM's ambiguity-aware loss); 0 when all are primed.
        ``stats["dice_1_best_of"]``: the best output's Dice (over every sample when all are primed)."""
        keep = torch.tensor([b not in primed for b in range(gt.shape[0])], device=gt.device)
        m = self.model
        with autocast():
            logits, iou = m.decode(emb, points=pts, mask_input=prev, multimask=True)
        up = F.interpolate(logits.float(), size=(m.img_size,) * 3, mode="trilinear", align_corners=False)
        per = [per_sample_loss(up[:, k:k + 1], gt, self.loss) for k in range(up.shape[1])]
        losses = torch.stack([p[0] for p in per], 1)  # (B, M)
        true_iou = torch.stack([p[2] for p in per], 1)
        best_dice = torch.stack([p[1] for p in per], 1).max(1).values
        stats["dice_1_best_of"] = float(best_dice[keep].mean() if keep.any() else best_dice.mean())
        iou_loss = ((iou.float() - true_iou) ** 2).mean(1)
        per_sample = losses.min(1).values + self.iou_loss_weight * iou_loss
        return (per_sample * keep).sum() / keep.sum().clamp_min(1)

    def _boxed(self, gt_np: np.ndarray, primed: set[int], rng: np.random.Generator) -> dict[int, list[tuple]]:
        """The samples (without a prior) that start from a box's prompt (:func:`box_prompt`), by index.
        Draws nothing when the probability is 0."""
        if self.box_prob <= 0:
            return {}
        return {b: box_prompt(gt_np[b], rng) for b in range(len(gt_np))
                if rng.random() < self.box_prob and b not in primed}

    def _prime(self, prev: torch.Tensor, pred_np: np.ndarray, gt_np: np.ndarray,
               rng: np.random.Generator) -> set[int]:
        """Start some samples from a mask prior (in place: ``prev`` logits, ``pred_np`` the mask the
        first click corrects); the indices of those samples. Draws nothing when the probability is 0."""
        primed: set[int] = set()
        if self.mask_prior_prob <= 0:
            return primed
        low = prev.shape[-1]
        for b in range(len(gt_np)):
            if rng.random() < self.mask_prior_prob:
                m = degraded_prior(gt_np[b], rng)
                prev[b] = mask_prior_logits(m, low)[0].to(prev)
                pred_np[b] = m
                primed.add(b)
        return primed
