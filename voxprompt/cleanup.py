"""Mask clean-up: keep the connected parts a prompt asked for and fill their enclosed holes.

A model deciding on a coarse grid, followed by the boundary refinement, can leave specks and
islands far from the object (a liver mask of 100 connected components) and cavities inside it.
:func:`clean_mask` keeps the **26-connected** components of a mask that contain a seed (a positive
click, a box centre) or an anchor voxel (the object's existing mask that must not be cut), and fills
the holes they enclose. 26-connectivity (faces, edges and corners) is the conservative choice: a
thin or oblique structure (a vessel, a tapering organ tip) whose voxels touch only along an edge or
at a corner after resampling stays one component, so clean-up never cuts a real structure at a
diagonal step; the price is that a speck touching the object at a corner is kept. Holes are the
background's 6-connected components that do not reach the array's border, the complementary
connectivity of 26 (so a hole is exactly what a 26-connected object encloses).

:class:`~voxprompt.session.Session` applies it after the boundary refinement (``clean``; on by
default for the default model, off for the official ones: :func:`resolve_clean`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .errors import InputError, UsageError
from .masks import bbox_of

__all__ = ["CONNECTIVITY", "clean_mask", "resolve_clean"]

CONNECTIVITY = 26  # voxels of the object are connected through faces, edges and corners
COARSE_MIN_VOXELS = 8_000_000  # larger blocks find candidate components on a 2x coarser grid first
_OBJECT = np.ones((3, 3, 3), dtype=bool)  # 26-connected structuring element


def resolve_clean(setting: bool | None, model_cfg: object) -> bool:
    """Whether a session cleans its masks: ``True`` / ``False`` as given; ``None`` follows the model's
    stored settings, like the boundary refinement (:func:`voxprompt.refine.resolve_refine`): on when the
    weights store a refinement band (``refine_band_mm > 0``, the post-processed default model), off for
    models that store none (the official ones: published behaviour)."""
    if setting is None:
        return float(getattr(model_cfg, "refine_band_mm", 0.0) or 0.0) > 0
    if isinstance(setting, (bool, np.bool_)):
        return bool(setting)
    raise UsageError(f"clean must be None or a bool, got {type(setting).__name__}")


def clean_mask(mask: np.ndarray, seeds: Sequence[Sequence[int]] = (), anchor: np.ndarray | None = None,
               spacing: Sequence[float] | None = None, fill_holes: bool = True,
               negatives: Sequence[Sequence[int]] = ()) -> np.ndarray:
    """The components of ``mask`` that were asked for, with their enclosed holes filled.

    ``mask``: 3D array (nonzero = object) in any axis order, shape ``(A, B, C)``; every other
    argument uses the same axes. ``seeds``: voxel indices ``(a, b, c)`` of positive prompts (clicks,
    box centres); indices outside the array are ignored. ``anchor``: optional bool array of
    ``mask``'s shape; components holding an anchor voxel are kept whatever the seeds (the object's
    mask just outside the block being replaced, so a multi-ROI object is not cut). ``spacing``: mm
    per axis, for the fallback below (default 1 mm).

    Kept: every 26-connected component that holds a seed or an anchor voxel. When no seed lies in
    the mask (a box whose centre misses the object) the component nearest to a seed (Euclidean, in
    mm) is kept as well, so a positive prompt never empties the mask. With no seed at all, nothing
    is removed. ``fill_holes`` then fills the background components (6-connected) that the kept
    set encloses, i.e. that do not reach the array's border, except those holding a voxel of
    ``negatives`` (negative clicks: a cavity the user carved out stays open). Returns a new bool array of
    ``mask``'s shape. Works on the mask's bounding box only: the cost follows the object's
    extent, not the array's.
    """
    m = np.asarray(mask) != 0
    if m.ndim != 3:
        raise InputError(f"clean_mask needs a 3D mask, got shape {m.shape}")
    if anchor is not None and np.shape(anchor) != m.shape:
        raise InputError(f"clean_mask: anchor shape {np.shape(anchor)} differs from the mask shape {m.shape}")
    out = np.zeros(m.shape, dtype=bool)
    box = bbox_of(m)
    if box is None:
        return out
    crop = m[box]  # m is a private array: the crop may be written
    lo = np.array([s.start for s in box])
    pts = [np.floor(np.asarray(p, dtype=float) + 0.5).astype(int) for p in seeds]
    pts = [p - lo for p in pts if p.shape == (3,) and np.all(p >= 0) and np.all(p < m.shape)]
    if pts:
        held = np.empty((0, 3), dtype=np.intp)
        if anchor is not None:  # anchor voxels in the mask: their components are kept like a seed's
            both = np.asarray(anchor, dtype=bool)[box] & crop
            where = bbox_of(both)
            if where is not None:
                held = np.argwhere(both[where]) + [w.start for w in where]
        crop = _seeded_components(crop, pts, held, spacing)
    if fill_holes:
        kept = bbox_of(crop)  # holes lie inside the kept set's box: fill there only
        if kept is not None:
            start = lo + [k.start for k in kept]
            neg = [np.floor(np.asarray(p, dtype=float) + 0.5).astype(int) - start for p in negatives]
            crop[kept] = _filled(crop[kept], [p for p in neg if p.shape == (3,)])
    out[box] = crop
    return out


def _seeded_components(crop: np.ndarray, pts: list, held: np.ndarray,
                       spacing: Sequence[float] | None) -> np.ndarray:
    """The components of ``crop`` holding a seed of ``pts`` or a voxel of ``held`` (``(N, 3)``, all
    in the mask); the one nearest to the seeds as well when no seed hits the mask."""
    hits = [p for p in pts if np.all(p >= 0) and np.all(p < crop.shape) and crop[tuple(p)]]
    if not hits:  # no seed lies in the mask: its voxel nearest to one becomes the seed
        hits = [_nearest_voxel(crop, pts, spacing)]
    hits = np.concatenate([np.asarray(hits, dtype=np.intp).reshape(-1, 3), held])
    if crop.size < COARSE_MIN_VOXELS:
        return _components_with(crop, hits)
    # a large block: find the candidate components on a 2x coarser grid first (a coarse component holds
    # whole fine components), then label exactly only inside the candidates' box
    labels, n = ndimage.label(_halved(crop), structure=_OBJECT)
    keep = np.zeros(n + 1, dtype=bool)
    keep[labels[tuple((hits // 2).T)]] = True
    keep[0] = False
    if keep[1:].all():
        return crop  # every coarse component is kept, so is every component
    cells = _chosen(labels, keep)
    cbox = bbox_of(cells)
    box = tuple(slice(2 * c.start, min(2 * c.stop, size)) for c, size in zip(cbox, crop.shape))
    up = cells[cbox]
    for ax in range(3):
        up = np.repeat(up, 2, axis=ax)
    lo = np.array([b.start for b in box])
    sub = crop[box] & up[tuple(slice(0, b.stop - b.start) for b in box)]
    inside = np.all((hits >= lo) & (hits < lo + sub.shape), axis=1)
    out = np.zeros(crop.shape, dtype=bool)
    out[box] = _components_with(sub, hits[inside] - lo)
    return out


def _components_with(crop: np.ndarray, hits: np.ndarray) -> np.ndarray:
    """The components of ``crop`` holding a voxel of ``hits`` (``(N, 3)`` indices, all in the mask)."""
    labels, n = ndimage.label(crop, structure=_OBJECT)
    if n <= 1:
        return crop
    keep = np.zeros(n + 1, dtype=bool)
    keep[labels[tuple(hits.T)]] = True
    keep[0] = False
    if keep[1:].all():
        return crop
    return _chosen(labels, keep)


def _chosen(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``keep[labels]``; a few comparisons when few labels are kept (faster than a lookup per voxel)."""
    chosen = np.flatnonzero(keep)
    if len(chosen) == 0 or len(chosen) > 8:
        return keep[labels]
    out = labels == chosen[0]
    for k in chosen[1:]:
        out |= labels == k
    return out


def _halved(mask: np.ndarray) -> np.ndarray:
    """Logical OR over 2x2x2 blocks (odd sizes: the last block is partial)."""
    out = np.zeros(tuple((n + 1) // 2 for n in mask.shape), dtype=bool)
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                part = mask[a::2, b::2, c::2]
                out[:part.shape[0], :part.shape[1], :part.shape[2]] |= part
    return out


def _nearest_voxel(crop: np.ndarray, pts: list, spacing: Sequence[float] | None) -> np.ndarray:
    """The mask voxel nearest (in mm) to any of ``pts`` (ties: any). Searches cubes of growing radius
    around the points: a voxel outside every cube of radius ``r`` is farther than ``r`` times the
    smallest spacing from each point, so a nearer one found inside is the nearest."""
    sp = np.ones(3) if spacing is None else np.asarray(spacing, dtype=float)
    shape = np.asarray(crop.shape)
    r = 8
    while True:
        best, best_d = None, np.inf
        for p in pts:
            lo, hi = np.maximum(p - r, 0), np.minimum(p + r + 1, shape)
            if np.any(hi <= lo):
                continue
            idx = np.argwhere(crop[tuple(slice(a, b) for a, b in zip(lo, hi))]) + lo
            if len(idx):
                d = (((idx - p) * sp) ** 2).sum(axis=1)
                i = int(np.argmin(d))
                if d[i] < best_d:
                    best, best_d = idx[i], float(d[i])
        covers = all(np.all(p - r <= 0) and np.all(p + r + 1 >= shape) for p in pts)
        if best is not None and (best_d <= (r * sp.min()) ** 2 or covers):
            return best
        r *= 4


def _filled(crop: np.ndarray, open_at: list) -> np.ndarray:
    """``crop`` with the background components (6-connected) set that miss the array's border and
    hold no voxel of ``open_at``."""
    bg, n = ndimage.label(~crop)
    if n == 0:
        return crop
    faces = [bg.take(i, axis=ax).ravel() for ax in range(3) for i in (0, -1)]
    faces += [bg[tuple(p)].reshape(1) for p in open_at if np.all(p >= 0) and np.all(p < crop.shape)]
    outside = np.unique(np.concatenate(faces))
    outside = outside[outside > 0]
    if len(outside) == n:
        return crop  # every background component reaches the border: no hole
    if len(outside) > 8:
        hole = np.ones(n + 1, dtype=bool)
        hole[outside] = False
        hole[0] = False
        return crop | hole[bg]
    out = bg != outside[0] if len(outside) else np.ones(crop.shape, dtype=bool)  # a few comparisons beat
    for k in outside[1:]:                                                          # a lookup over every voxel
        out &= bg != k
    return out
