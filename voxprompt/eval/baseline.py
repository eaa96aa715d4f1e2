"""Classical, non-learned interactive baseline: scikit-image's random walker seeded by clicks.

Positive clicks become label-1 seed balls, negative clicks label-2 balls, and the border of a
crop around the clicks (away from positive clicks) is an automatic label-2 background seed.
The walker runs on that crop with robustly normalised intensities; if the result touches an
inner crop edge the margin doubles (up to ``max_expansions`` times).

**Box mode** (a :class:`~voxprompt.eval.clicks.Box3D`, e.g. the CVPR 2025 initial box, taken as
the 3D box ``[z_min..z_max] x [y_min..y_max] x [x_min..x_max]`` as the model sessions take it), a
GrabCut-like classical rule:

* object seed: a ball at the centre of the box's rectangle on its middle slice ``z_mid``
  (``(z_mid, (y_min + y_max) // 2, (x_min + x_max) // 2)``), plus the positive clicks; the centre
  seed is dropped once a negative click lies within ``2 * seed_radius + 1`` voxels of it;
* background seed: the one-voxel shell just outside the box (``box_shell_gap`` voxels away from
  it; the faces that lie inside the image), plus the negative clicks and the crop border as without
  a box; the box first grows to hold every positive click (a click outside the box says the box was
  too small), and shell and border voxels near a positive click (closer than
  ``max(margin / 2, seed_radius + 2)``) stay unseeded;
* crop: the box and the clicks plus ``margin`` on every side.

The box alone (no click yet) already gives a mask: the box step of the CVPR 2025 protocol.
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
    box_shell_gap: int = 0      # box mode: voxels between the box and its background shell

    def __post_init__(self) -> None:
        if (self.margin < 1 or self.seed_radius < 0 or self.max_expansions < 0
                or self.smooth_sigma < 0 or self.beta <= 0 or self.box_shell_gap < 0):
            raise UsageError(f"invalid RandomWalkerConfig {self}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise UsageError(f"percentiles need 0 <= lo < hi <= 100, got {self.percentiles}")


@dataclass(frozen=True)
class _CropBox:
    """A box in crop coordinates: ``lo`` / ``hi`` (exclusive) corners and the object seed ``centre``."""

    lo: np.ndarray
    hi: np.ndarray
    centre: np.ndarray


def _box_corners(box: Box3D, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The box's (lo, exclusive hi) corners clipped to the image, and its centre seed voxel."""
    lo = np.maximum(np.array([box.z_min, box.y_min, box.x_min], dtype=int), 0)
    hi = np.minimum(np.array([box.z_max, box.y_max, box.x_max], dtype=int) + 1, shape)
    if np.any(hi <= lo):
        raise InputError(f"box {box} does not overlap an image of shape {shape}")
    centre = np.array([box.z_mid, (box.y_min + box.y_max) // 2, (box.x_min + box.x_max) // 2], dtype=int)
    return lo, hi, np.clip(centre, lo, hi - 1)


def _seeds(shape: tuple[int, ...], clicks: list[tuple[np.ndarray, int]], cfg: RandomWalkerConfig,
           inner_faces: list[tuple[int, int]], box: _CropBox | None = None) -> np.ndarray:
    """Seed labels in the crop: 1 positive, 2 negative / background, 0 unknown."""
    seeds = np.zeros(shape, dtype=np.int32)
    # background seed: inner crop faces (faces on the image border may hold the object)
    border = np.zeros(shape, dtype=bool)
    for axis, side in inner_faces:
        idx = [slice(None)] * len(shape)
        idx[axis] = 0 if side == 0 else shape[axis] - 1
        border[tuple(idx)] = True
    if box is not None:
        # the one-voxel shell just outside the box, ``box_shell_gap`` voxels away (clipped to the crop)
        g = cfg.box_shell_gap
        outer = tuple(slice(max(int(a) - g - 1, 0), min(int(b) + g + 1, n)) for a, b, n in zip(box.lo, box.hi, shape))
        shell = np.zeros(shape, dtype=bool)
        shell[outer] = True
        shell[tuple(slice(max(int(a) - g, 0), min(int(b) + g, n)) for a, b, n in zip(box.lo, box.hi, shape))] = False
        border |= shell
        negatives = [p for p, lab in clicks if lab != 1]
        if not any(np.abs(p - box.centre).max() <= 2 * cfg.seed_radius + 1 for p in negatives):
            draw_seed_balls(seeds, [(box.centre, 1)], cfg.seed_radius)
    draw_seed_balls(seeds, [(p, 2) for p, lab in clicks if lab != 1], cfg.seed_radius)
    pos = draw_seed_balls(seeds, [(p, 1) for p, lab in clicks if lab == 1], cfg.seed_radius)  # win on overlap
    if border.any() and (pos.any() or box is not None):
        far = (ndimage.distance_transform_edt(~pos) > max(cfg.margin / 2.0, cfg.seed_radius + 2)
               if pos.any() else True)
        seeds[border & far & (seeds == 0)] = 2
    return seeds


def random_walker_segment(
    image: object,
    clicks: Sequence[Click],
    spacing: Sequence[float] | None = None,
    config: RandomWalkerConfig | None = None,
    box: Box3D | None = None,
) -> np.ndarray:
    """Boolean mask of the object marked by ``clicks`` (indices in the image's axis order).

    Without a box and without a positive click the result is empty. Background seeds: negative
    clicks plus the crop faces that lie inside the image (all crop faces if the crop spans the whole
    image), minus voxels near positive clicks. With ``box`` (3D images only): the box rule of the
    module docstring.
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
    box_lo = box_hi = centre = None
    if box is not None:
        if img.ndim != 3:
            raise InputError(f"a 3D box needs a 3D image, got shape {img.shape}")
        box_lo, box_hi, centre = _box_corners(box, img.shape)
        for p, lab in pts:  # the box grows to hold the positive clicks
            if lab == 1:
                box_lo, box_hi = np.minimum(box_lo, p), np.maximum(box_hi, p + 1)
    elif not any(lab == 1 for _, lab in pts):
        return out
    extent = [p for p, _ in pts] + ([box_lo, box_hi - 1] if box is not None else [])
    coords = np.array(extent)
    margin = cfg.margin
    for attempt in range(cfg.max_expansions + 1):
        lo = np.maximum(coords.min(axis=0) - margin, 0)
        hi = np.minimum(coords.max(axis=0) + margin + 1, img.shape)
        crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        faces = [(ax, s) for ax in range(img.ndim) for s in (0, 1)
                 if (s == 0 and lo[ax] > 0) or (s == 1 and hi[ax] < img.shape[ax])]
        # a crop spanning the whole image: its image-border faces become the background seed
        seed_faces = faces or [(ax, s) for ax in range(img.ndim) for s in (0, 1)]
        crop_box = None if box is None else _CropBox(box_lo - lo, box_hi - lo, centre - lo)
        seeds = _seeds(tuple(int(n) for n in hi - lo), [(p - lo, lab) for p, lab in pts], cfg,
                       seed_faces, crop_box)
        if not (seeds == 1).any():  # box mode: a negative click on the box centre and no positive click yet
            return out
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

    A box (the ``cvpr25`` protocol with ``use_box=True``) runs the box mode of
    :func:`random_walker_segment`; ``use_box=False`` gives the clicks-only walker.
    """
    def predict(clicks: list[Click], box: Box3D | None = None) -> np.ndarray:
        return random_walker_segment(image, clicks, spacing, config, box)

    return predict
