"""Deterministic click and box simulators of the published interactive protocols.

Every click is a :class:`Click` ``(index, label)``: ``index`` is a tuple of ints in the array's
own axis order (``(z, y, x)`` for a ``(D, H, W)`` volume, ``(row, col)`` in 2D), ``label`` is
1 (positive / foreground) or 0 (negative / background). Randomness always comes from a caller
supplied ``numpy.random.Generator``; the CVPR 2025 simulator needs none.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from voxprompt.errors import InputError, UsageError
from voxprompt.eval.metrics import as_mask, as_spacing
from voxprompt.masks import distance_inside

logger = logging.getLogger(__name__)

__all__ = [
    "Click", "Box3D", "cvpr25_next_click", "cvpr25_initial_box", "sam_med3d_random_click",
    "ritm_click", "sam_med2d_points", "sam_med2d_box", "jitter_click",
]

# The CVPR 2025 scorer breaks ties between equally central voxels with np.random.seed(42).
_CVPR25_TIE_SEED = 42


class Click(NamedTuple):
    """One simulated click: voxel ``index`` (array axis order) and ``label`` (1 pos, 0 neg)."""

    index: tuple[int, ...]
    label: int


@dataclass(frozen=True)
class Box3D:
    """CVPR 2025 initial box: a 2D box on slice ``z_mid`` of axis 0 plus the object's z range.

    Axis 0 is z (slices), axis 1 is y (rows), axis 2 is x (columns). All bounds are voxel
    indices and **inclusive** (as in the challenge's ``boxes`` entries).
    """

    z_min: int
    z_max: int
    z_mid: int
    y_min: int
    x_min: int
    y_max: int
    x_max: int

    def as_cvpr_dict(self) -> dict[str, int]:
        """The key names of the challenge's ``boxes`` npz entry."""
        return {"z_min": self.z_min, "z_max": self.z_max, "z_mid": self.z_mid,
                "z_mid_x_min": self.x_min, "z_mid_y_min": self.y_min,
                "z_mid_x_max": self.x_max, "z_mid_y_max": self.y_max}


def _pair(pred: object, gt: object) -> tuple[np.ndarray, np.ndarray]:
    p, g = as_mask(pred, "pred"), as_mask(gt, "gt")
    if p.shape != g.shape:
        raise InputError(f"pred shape {p.shape} differs from gt shape {g.shape}")
    return p, g


def _uniform_voxel(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, ...]:
    flat = np.flatnonzero(mask)
    k = int(flat[rng.integers(flat.size)])
    return tuple(int(i) for i in np.unravel_index(k, mask.shape))


def _full_structure(ndim: int) -> np.ndarray:
    return ndimage.generate_binary_structure(ndim, ndim)


def cvpr25_next_click(
    pred: object, gt: object, spacing: Sequence[float] | None = None
) -> Click | None:
    """Next click of the CVPR 2025 interactive 3D protocol (``CVPR25_iter_eval.py``).

    Error = ``pred != gt`` (FN and FP together, as the official scorer does). Its largest
    connected component (full connectivity, 26 in 3D; size ties -> first in raster order) is
    clicked at the voxel of maximum EDT (array border = background). Ties between equally
    central voxels are broken like the scorer: ``RandomState(42)`` picks among them in C order.
    Label 1 if that voxel is in ``gt`` (under-segmentation), else 0. ``spacing=None`` uses voxel
    units like the scorer; a spacing makes the EDT anisotropic. Returns None if there is no error.
    """
    p, g = _pair(pred, gt)
    error = p != g
    if not error.any():
        return None
    labels, n = ndimage.label(error, structure=_full_structure(error.ndim))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = int(np.argmax(sizes))
    box = ndimage.find_objects(labels, max_label=largest)[largest - 1]
    component = labels[box] == largest
    dist = distance_inside(component, as_spacing(spacing, component.ndim))
    centres = np.argwhere(dist == dist.max())
    pick = centres[np.random.RandomState(_CVPR25_TIE_SEED).choice(len(centres))]
    index = tuple(int(c + b.start) for c, b in zip(pick, box))
    label = int(g[index])
    logger.debug("cvpr25 click %s label %d (component %d of %d, %d voxels)",
                 index, label, largest, n, sizes[largest])
    return Click(index, label)


def cvpr25_initial_box(
    gt: object, rng: np.random.Generator | None = None, max_shift: int = 5
) -> Box3D:
    """CVPR 2025 step-0 box of a 3D mask (axis 0 = z), as the challenge's ``get_boxes.py``.

    ``z_mid`` is the median z of the foreground voxels (the z of voxel ``n // 2`` in C order),
    not the midpoint of the z range. The 2D box is the tight bounding box on that slice. With
    ``rng`` the 2D box grows by ``randint(0, max_shift + 1) * size / 256`` voxels per in-plane
    axis (clipped), like the challenge's one-off perturbation; without it, no perturbation.
    """
    g = as_mask(gt, "gt")
    if g.ndim != 3:
        raise InputError(f"cvpr25_initial_box needs a 3D mask, got {g.ndim}D")
    counts = g.sum(axis=(1, 2))
    total = int(counts.sum())
    if total == 0:
        raise InputError("cannot build a box from an empty mask")
    zs = np.flatnonzero(counts)
    z_mid = int(np.searchsorted(np.cumsum(counts), total // 2, side="right"))
    rows = np.flatnonzero(g[z_mid].any(axis=1))
    cols = np.flatnonzero(g[z_mid].any(axis=0))
    y_min, y_max, x_min, x_max = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    if rng is not None:
        shift = int(rng.integers(0, max_shift + 1))
        h, w = g.shape[1:]
        sy, sx = int(shift * h / 256), int(shift * w / 256)
        y_min, y_max = max(0, y_min - sy), min(h - 1, y_max + sy)
        x_min, x_max = max(0, x_min - sx), min(w - 1, x_max + sx)
    return Box3D(int(zs[0]), int(zs[-1]), z_mid, y_min, x_min, y_max, x_max)


def sam_med3d_random_click(pred: object, gt: object, rng: np.random.Generator) -> Click:
    """SAM-Med3D "random" click: a uniform voxel of FN ∪ FP, label 1 if it is FN.

    An empty prediction therefore gives a uniform GT voxel (the official first click). No error
    -> a uniform GT voxel, positive (official fallback). Raises :class:`InputError` when both
    masks are empty (nothing to click; the official code raises on any empty GT).
    """
    p, g = _pair(pred, gt)
    fn = g & ~p
    error = fn | (p & ~g)
    if error.any():
        index = _uniform_voxel(error, rng)
        return Click(index, int(fn[index]))
    if not g.any():
        raise InputError("cannot place a click: ground truth and prediction are both empty")
    return Click(_uniform_voxel(g, rng), 1)


def ritm_click(
    pred: object, gt: object, rng: np.random.Generator, spacing: Sequence[float] | None = None
) -> Click:
    """SAM-Med3D's RITM-style click (``get_next_click3D_torch_ritm``).

    EDTs of FN and of FP (zero-padded by 1, so the border is background); the error type with
    the larger maximum wins (ties -> FP, as official); a uniform voxel among those with
    distance > half that maximum; label 1 if it is FN. No error -> a uniform GT voxel, positive
    (the official code clicks the array centre as negative there; we use the "random" fallback).
    """
    p, g = _pair(pred, gt)
    fn, fp = g & ~p, p & ~g
    if not (fn.any() or fp.any()):
        return sam_med3d_random_click(p, g, rng)
    sp = as_spacing(spacing, fn.ndim)
    fn_dt, fp_dt = distance_inside(fn, sp), distance_inside(fp, sp)
    fn_max, fp_max = float(fn_dt.max()), float(fp_dt.max())
    dist = fn_dt if fn_max > fp_max else fp_dt
    index = _uniform_voxel(dist > max(fn_max, fp_max) / 2.0, rng)
    return Click(index, int(fn[index]))


def sam_med2d_points(mask2d: object, n: int, rng: np.random.Generator) -> list[Click]:
    """SAM-Med2D non-iterative points (``init_point_sampling``), indices as ``(row, col)``.

    ``n == 1``: one uniform foreground pixel (label 1), or a background pixel (label 0) if the
    mask is empty. ``n > 1``: ``n // 2`` foreground + ``n - n // 2`` background pixels, drawn with
    replacement, then shuffled; a class absent from the mask contributes no points (as official).
    """
    m = as_mask(mask2d, "mask2d")
    if m.ndim != 2:
        raise InputError(f"sam_med2d_points needs a 2D mask, got {m.ndim}D")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise UsageError(f"number of points must be a positive integer, got {n!r}")
    if n == 1:
        if m.any():
            return [Click(_uniform_voxel(m, rng), 1)]
        return [Click(_uniform_voxel(~m, rng), 0)]
    clicks: list[Click] = []
    for region, count, label in ((m, n // 2, 1), (~m, n - n // 2, 0)):
        flat = np.flatnonzero(region)
        if flat.size == 0:
            continue
        for k in flat[rng.integers(flat.size, size=count)]:
            clicks.append(Click(tuple(int(i) for i in np.unravel_index(int(k), m.shape)), label))
    order = rng.permutation(len(clicks))
    return [clicks[i] for i in order]


def sam_med2d_box(mask2d: object) -> tuple[int, int, int, int]:
    """SAM-Med2D test box: ``(x_min, y_min, x_max, y_max)`` of the largest 8-connected component.

    ``x`` is the column and ``y`` the row; max coordinates are exclusive (skimage ``regionprops``
    convention). Size ties -> first component in raster order. No test-time noise.
    """
    m = as_mask(mask2d, "mask2d")
    if m.ndim != 2:
        raise InputError(f"sam_med2d_box needs a 2D mask, got {m.ndim}D")
    if not m.any():
        raise InputError("cannot build a box from an empty mask")
    labels, _ = ndimage.label(m, structure=_full_structure(2))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = int(np.argmax(sizes))
    rows, cols = ndimage.find_objects(labels, max_label=largest)[largest - 1]
    return (cols.start, rows.start, cols.stop, rows.stop)


def jitter_click(
    click: Click,
    region: object,
    rng: np.random.Generator,
    sigma_vox: float | Sequence[float],
    max_tries: int = 20,
) -> Click:
    """Human-like noise: move ``click`` by rounded Gaussian noise (``sigma_vox`` per axis).

    The moved click must stay inside ``region`` (e.g. the error mask it was drawn from, or the
    GT) and in the same connected component of it, judged within a window of ±(4σ+1) voxels.
    Up to ``max_tries`` draws; otherwise the original click is returned. The label is kept.
    """
    r = as_mask(region, "region")
    idx = np.asarray(click.index, dtype=int)
    if idx.shape != (r.ndim,):
        raise InputError(f"click index {click.index} does not fit a {r.ndim}D region")
    if np.any(idx < 0) or np.any(idx >= r.shape):
        raise InputError(f"click index {click.index} lies outside the region of shape {r.shape}")
    sigma = np.broadcast_to(np.asarray(sigma_vox, dtype=float), (r.ndim,))
    if np.any(sigma < 0) or not np.all(np.isfinite(sigma)):
        raise InputError(f"sigma_vox must be finite and >= 0, got {sigma_vox}")
    if not r[tuple(idx)] or not np.any(sigma > 0):
        return click
    radius = np.ceil(4 * sigma).astype(int) + 1
    lo = np.maximum(idx - radius, 0)
    hi = np.minimum(idx + radius + 1, r.shape)
    window = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    labels, _ = ndimage.label(r[window], structure=_full_structure(r.ndim))
    own = labels[tuple(idx - lo)]
    for _ in range(max_tries):
        new = idx + np.rint(rng.normal(0.0, sigma)).astype(int)
        local = new - lo
        if np.all(local >= 0) and np.all(new < hi) and labels[tuple(local)] == own:
            return Click(tuple(int(i) for i in new), click.label)
    logger.debug("jitter_click kept %s after %d rejected draws", click.index, max_tries)
    return click

