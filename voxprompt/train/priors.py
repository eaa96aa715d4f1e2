"""Mask priors for training: the masks a session feeds a ROI as its ``mask_input``.

A session hands the decoder a binary mask as +/- logits on the low-res grid
(:func:`voxprompt.session.roi_predictor.mask_prior_logits`) whenever a ROI starts from a mask it
did not predict itself: auto-zoom's zoomed-out passes and tiles, the click after an expansion,
``add_mask`` and strokes. A model trained only on its own previous logits ignores or
misreads such priors (given the ground truth as the prior, stage 12 returned Dice 0.5-0.8).
:func:`degraded_prior` draws the kinds of masks those paths produce from a sample's label, so that
training sees them with the clicks a user would then give.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

KINDS = ("exact", "cut", "coarse", "morph", "blobs")


def _cut(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The part of ``gt`` on one side of a random plane through one of its voxels (an earlier ROI's
    view of a large object)."""
    pts = np.argwhere(gt)
    centre = pts[rng.integers(len(pts))].astype(float)
    normal = rng.normal(size=3)
    normal /= np.linalg.norm(normal) + 1e-9
    grid = np.indices(gt.shape, dtype=np.float32).reshape(3, -1).T
    side = ((grid - centre) @ normal).reshape(gt.shape) <= 0
    return gt & side


def _coarse(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``gt`` seen on a grid 2-4 times coarser, shifted by up to a coarse voxel (a zoomed-out ROI's mask)."""
    f = int(rng.integers(2, 5))
    shift = rng.integers(0, f, size=3)
    padded = np.pad(gt, [(int(s), (-(n + int(s))) % f) for s, n in zip(shift, gt.shape)])
    blocks = padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f, padded.shape[2] // f, f)
    coarse = blocks.mean(axis=(1, 3, 5)) > 0.5
    up = coarse.repeat(f, 0).repeat(f, 1).repeat(f, 2)
    return up[tuple(slice(int(s), int(s) + n) for s, n in zip(shift, gt.shape))]


def _morph(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``gt`` grown or shrunk by 1-3 voxels (a boundary off by a few millimetres)."""
    it = int(rng.integers(1, 4))
    op = ndimage.binary_dilation if rng.random() < 0.5 else ndimage.binary_erosion
    return op(gt, iterations=it)


def _blobs(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``gt`` with 1-3 balls added or removed near its boundary (a leak, a bite)."""
    out = gt.copy()
    surface = gt & ~ndimage.binary_erosion(gt)
    pts = np.argwhere(surface if surface.any() else gt)
    grid = np.indices(gt.shape, dtype=np.float32)
    for _ in range(int(rng.integers(1, 4))):
        c = pts[rng.integers(len(pts))]
        r = float(rng.uniform(2, max(3.0, min(gt.shape) / 6)))
        ball = sum((grid[a] - c[a]) ** 2 for a in range(3)) <= r * r
        out = out | ball if rng.random() < 0.5 else out & ~ball
    return out


def degraded_prior(gt: np.ndarray, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """A bool mask like one a session would feed as a prior for the label ``gt`` (bool, ROI shape).

    ``kind`` (one of :data:`KINDS`; None draws one): ``exact`` the label itself, ``cut`` the part on
    one side of a plane, ``coarse`` a 2-4x coarser copy, ``morph`` grown or shrunk by 1-3 voxels,
    ``blobs`` with balls added or removed. An empty label gives an empty mask.
    """
    g = np.asarray(gt, dtype=bool)
    if not g.any():
        return g.copy()
    kind = KINDS[int(rng.integers(len(KINDS)))] if kind is None else kind
    if kind == "exact":
        return g.copy()
    fn = {"cut": _cut, "coarse": _coarse, "morph": _morph, "blobs": _blobs}.get(kind)
    if fn is None:
        raise ValueError(f"unknown prior kind {kind!r}; one of {KINDS}")
    return np.asarray(fn(g, rng), dtype=bool)


__all__ = ["KINDS", "degraded_prior"]
