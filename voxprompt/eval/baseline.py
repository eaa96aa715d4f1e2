"""Classical, non-learned interactive baseline: scikit-image's random walker seeded by clicks.

Positive clicks become label-1 seed balls, negative clicks label-2 balls, and the border of a
crop around the clicks (away from positive clicks) is an automatic label-2 background seed.
The walker runs on that crop with robustly normalised intensities; if the result touches an
inner crop edge the margin doubles (up to ``max_expansions`` times).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from voxprompt.errors import InputError, UsageError
from voxprompt.eval.clicks import Box3D, Click
from voxprompt.eval.metrics import as_spacing
from voxprompt.refine import draw_seed_balls, normalise_window, solve_random_walker

logger = logging.getLogger(__name__)

__all__ = ["RandomWalkerConfig", "random_walker_segment", "random_walker_predict_fn"]


@dataclass(frozen=True)
class RandomWalkerConfig:
    """Settings of :func:`random_walker_segment` (all sizes in voxels)."""

    margin: int = 16            # crop margin around the clicks' bounding box
    seed_radius: int = 2        # radius of the seed ball drawn at each click
    beta: float = 500.0         # random-walker edge penalty (skimage's default is 130)
    smooth_sigma: float = 1.0   # Gaussian pre-smoothing of the crop (voxels; 0 = none)
    tol: float = 1e-3           # conjugate-gradient tolerance
    percentiles: tuple[float, float] = (0.5, 99.5)  # intensity window mapped to [0, 1]
    max_expansions: int = 2     # margin doublings when the mask touches an inner crop edge

    def __post_init__(self) -> None:
        if (self.margin < 1 or self.seed_radius < 0 or self.max_expansions < 0
                or self.smooth_sigma < 0 or self.beta <= 0):
            raise UsageError(f"invalid RandomWalkerConfig {self}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise UsageError(f"percentiles need 0 <= lo < hi <= 100, got {self.percentiles}")


def _seeds(shape: tuple[int, ...], clicks: list[tuple[np.ndarray, int]], cfg: RandomWalkerConfig,
           inner_faces: list[tuple[int, int]]) -> np.ndarray:
    """Seed labels in the crop: 1 positive, 2 negative / background, 0 unknown."""
    seeds = np.zeros(shape, dtype=np.int32)
    # background seed: inner crop faces (faces on the image border may hold the object)
    border = np.zeros(shape, dtype=bool)
    for axis, side in inner_faces:
        idx = [slice(None)] * len(shape)
        idx[axis] = 0 if side == 0 else shape[axis] - 1
        border[tuple(idx)] = True
    draw_seed_balls(seeds, [(p, 2) for p, lab in clicks if lab != 1], cfg.seed_radius)
    pos = draw_seed_balls(seeds, [(p, 1) for p, lab in clicks if lab == 1], cfg.seed_radius)  # win on overlap
    if pos.any() and border.any():
        far = ndimage.distance_transform_edt(~pos) > max(cfg.margin / 2.0, cfg.seed_radius + 2)
        seeds[border & far & (seeds == 0)] = 2
    return seeds


def random_walker_segment(
    image: object,
    clicks: Sequence[Click],
    spacing: Sequence[float] | None = None,
    config: RandomWalkerConfig | None = None,
) -> np.ndarray:
    """Boolean mask of the object marked by ``clicks`` (indices in the image's axis order).

    Without a positive click the result is empty. Background seeds: negative clicks plus the
    crop faces that lie inside the image (all crop faces if the crop spans the whole image),
    minus voxels near positive clicks.
    """
    cfg = config or RandomWalkerConfig()
    img = np.asarray(image)
    if img.ndim not in (2, 3) or not np.issubdtype(img.dtype, np.number):
        raise InputError(f"image must be a numeric 2D or 3D array, got {img.dtype} {img.shape}")
    sp = as_spacing(spacing, img.ndim)
    pts = []
    for c in clicks:
        idx = np.asarray(c.index, dtype=int)
        if idx.shape != (img.ndim,) or np.any(idx < 0) or np.any(idx >= img.shape):
            raise InputError(f"click {c.index} does not fit an image of shape {img.shape}")
        pts.append((idx, int(c.label)))
    out = np.zeros(img.shape, dtype=bool)
    if not any(lab == 1 for _, lab in pts):
        return out
    coords = np.array([p for p, _ in pts])
    margin = cfg.margin
    for attempt in range(cfg.max_expansions + 1):
        lo = np.maximum(coords.min(axis=0) - margin, 0)
        hi = np.minimum(coords.max(axis=0) + margin + 1, img.shape)
        crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        faces = [(ax, s) for ax in range(img.ndim) for s in (0, 1)
                 if (s == 0 and lo[ax] > 0) or (s == 1 and hi[ax] < img.shape[ax])]
        # a crop spanning the whole image: its image-border faces become the background seed
        seed_faces = faces or [(ax, s) for ax in range(img.ndim) for s in (0, 1)]
        seeds = _seeds(tuple(int(n) for n in hi - lo), [(p - lo, lab) for p, lab in pts], cfg,
                       seed_faces)
        if not (seeds == 2).any():
            raise InputError("no background seed: add a negative click or use a smaller margin")
        data = normalise_window(img[crop], cfg.percentiles, cfg.smooth_sigma)
        labels = solve_random_walker(data, seeds, cfg.beta, cfg.tol, sp)
        mask = labels == 1
        # the face itself is seeded background, so look at the two outermost layers
        touches = any(np.take(mask, [0, 1] if s == 0 else [-2, -1], axis=ax).any()
                      for ax, s in faces)
        logger.debug("random walker crop %s (margin %d): %d voxels, touches edge: %s",
                     [(c.start, c.stop) for c in crop], margin, int(mask.sum()), touches)
        if not touches or attempt == cfg.max_expansions:
            break
        margin *= 2
    out[crop] = mask
    return out


def random_walker_predict_fn(
    image: object, spacing: Sequence[float] | None = None, config: RandomWalkerConfig | None = None
) -> Callable[[list[Click], Box3D | None], np.ndarray]:
    """A ``predict_fn(clicks, box)`` for :func:`voxprompt.eval.protocol.run_click_protocol`.

    The box is ignored (the baseline uses clicks only), so run the ``cvpr25`` protocol with
    ``use_box=False``.
    """
    def predict(clicks: list[Click], box: Box3D | None = None) -> np.ndarray:
        return random_walker_segment(image, clicks, spacing, config)

    return predict
