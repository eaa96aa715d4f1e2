"""Binary masks as arrays: bounding boxes (and how well a mask fills one), connected components, the
deepest voxel and the voxels deeper than a distance.

Plain numpy/scipy, no model or image geometry: every layer may use these (sessions, data, eval, train).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

Slices = tuple[slice, ...]  # a box of an array, one slice per axis
BALL_ELEMENTS = 64  # footprints up to this size erode faster than an exact distance transform of the array


def bbox_of(diff: np.ndarray) -> Slices | None:
    """Slices bounding the nonzero entries of ``diff`` (None when there are none).

    One pass over the array for the first axis, the others only within its extent: the cost follows
    the array's size once, not once per axis."""
    a = np.asarray(diff)
    first = np.flatnonzero(a.any(axis=tuple(range(1, a.ndim))))
    if first.size == 0:
        return None
    sl = [slice(int(first[0]), int(first[-1]) + 1)]
    sub = a[sl[0]]
    for ax in range(1, a.ndim):
        other = tuple(i for i in range(a.ndim) if i != ax)
        nz = np.flatnonzero(sub.any(axis=other))
        sl.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(sl)


def within(outer: Slices, inner: Slices) -> Slices:
    """``inner`` (slices of the block ``array[outer]``) as slices of ``array`` itself."""
    return tuple(slice(o.start + i.start, o.start + i.stop) for o, i in zip(outer, inner))


def union_box(a: Slices | None, b: Slices | None) -> Slices | None:
    """Smallest box containing two boxes (either may be None)."""
    if a is None or b is None:
        return a if b is None else b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def box_fit(mask: np.ndarray, lo: Sequence[float], hi: Sequence[float]) -> float:
    """How well ``mask`` fills a box: the IoU of the mask's bounding box with the box whose edges are
    ``lo`` .. ``hi`` (continuous coordinates of ``mask``'s axes, voxel i spanning i - 0.5 .. i + 0.5);
    0 for an empty mask. A tight box prompt names the object whose extent it is: a mask leaking out
    of the box or filling only part of it scores lower."""
    box = bbox_of(np.asarray(mask) != 0)
    if box is None:
        return 0.0
    lo_b, hi_b = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    lo_m = np.array([s.start - 0.5 for s in box])
    hi_m = np.array([s.stop - 0.5 for s in box])
    inter = float(np.prod(np.clip(np.minimum(hi_b, hi_m) - np.maximum(lo_b, lo_m), 0.0, None)))
    union = float(np.prod(np.clip(hi_b - lo_b, 0.0, None)) + np.prod(hi_m - lo_m)) - inter
    return inter / union if union > 0 else 0.0


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest fully connected component of a mask (8-connected in 2D, 26 in 3D; ties: first in
    raster order)."""
    labels, n = ndimage.label(mask, structure=np.ones((3,) * np.ndim(mask), bool))
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def component_at(mask: np.ndarray, index: Sequence[int]) -> np.ndarray:
    """The fully connected component of ``mask`` holding voxel ``index`` (26-connected in 3D, 8 in 2D),
    or an empty mask when that voxel is not in it (or lies outside the array)."""
    idx = tuple(int(i) for i in index)
    if any(not 0 <= i < n for i, n in zip(idx, mask.shape)) or not mask[idx]:
        return np.zeros(mask.shape, dtype=bool)
    labels, _ = ndimage.label(mask, structure=np.ones((3,) * np.ndim(mask), bool))
    return labels == labels[idx]


def distance_inside(mask: np.ndarray, spacing: Sequence[float] | None = None,
                    edge_is_background: bool = True) -> np.ndarray:
    """Exact Euclidean distance of each mask voxel to the nearest background voxel (0 outside the mask).

    ``edge_is_background``: whether the space beyond the array counts as background (an object cut by
    the array's edge is shallow there), as the CVPR 2025 click protocol and the sessions' automatic
    clicks want; False measures to background voxels inside the array only. ``spacing``: per axis.
    """
    m = np.asarray(mask, dtype=bool)
    if not edge_is_background:
        return ndimage.distance_transform_edt(m, sampling=spacing)
    dist = ndimage.distance_transform_edt(np.pad(m, 1), sampling=spacing)
    return dist[(slice(1, -1),) * m.ndim]


def deepest_voxel(mask: np.ndarray, spacing: Sequence[float] | None = None,
                  edge_is_background: bool = True) -> np.ndarray | None:
    """Index (int array) of the mask voxel farthest from the background, first in raster order among
    equals (:func:`distance_inside`), or None for an empty mask."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return None
    dist = distance_inside(m, spacing, edge_is_background)
    return np.asarray(np.unravel_index(int(np.argmax(dist)), m.shape), dtype=int)


def _ball_half(spacing: np.ndarray, radius: float) -> np.ndarray:
    """Voxels per axis from the centre to the edge of :func:`ball_footprint`'s box (one beyond the ball)."""
    return np.floor(radius / spacing).astype(int) + 1


def ball_footprint(spacing: Sequence[float], radius: float) -> np.ndarray:
    """The offsets no longer than ``radius`` (mm; ``spacing`` mm per axis) as a boolean footprint centred
    on its middle voxel, each length computed as scipy's ``distance_transform_edt`` computes distances."""
    sp = np.asarray(spacing, dtype=np.float64)
    half = _ball_half(sp, radius)
    offsets = np.indices(tuple(2 * half + 1)).reshape(sp.size, -1) - half[:, None]
    d = offsets.astype(np.float64) * sp[:, None]
    return (np.sqrt(np.add.reduce(d * d, axis=0)) <= radius).reshape(tuple(2 * half + 1))


def deeper_than(mask: np.ndarray, spacing: Sequence[float], distance: float) -> np.ndarray:
    """Voxels of ``mask`` farther than ``distance`` (mm) from every voxel of the array outside it: exactly
    ``distance_transform_edt(mask, sampling=spacing) > distance`` (beyond the array is not background).

    A short distance is an erosion by :func:`ball_footprint` (a few voxels' width costs a fraction of the
    exact transform on a large array); a long one, or a mask with no background voxel, the transform."""
    m = np.asarray(mask, dtype=bool)
    sp = np.asarray(spacing, dtype=np.float64)
    exact = m.all() or int(np.prod(2 * _ball_half(sp, distance) + 1)) > 16 * BALL_ELEMENTS
    foot = None if exact else ball_footprint(sp, distance)
    if foot is None or int(foot.sum()) > BALL_ELEMENTS:
        return ndimage.distance_transform_edt(m, sampling=sp) > distance
    return ndimage.binary_erosion(m, structure=foot, border_value=1)


def reaches_depth(mask: np.ndarray, spacing: Sequence[float], distance: float) -> bool:
    """True when some voxel of ``mask`` lies farther than ``distance`` (mm) from every voxel of the array
    outside it (``distance_transform_edt(mask, sampling=spacing).max() > distance``), proved at one
    candidate; False when that candidate fails, which need not mean that no voxel does.

    The candidate is the deepest voxel of the deepest block of the mask on a grid of blocks about
    ``distance`` wide (cheap on a large array): callers fall back to the exact transform on False."""
    m = np.asarray(mask, dtype=bool)
    sp = np.asarray(spacing, dtype=np.float64)
    if not m.any() or m.all():
        return False
    k = np.maximum(1, np.floor(distance / sp)).astype(int)
    pad = [(0, int(-n % f)) for n, f in zip(m.shape, k)]
    blocks = np.pad(m, pad, constant_values=False)
    shape = [x for n, f in zip(blocks.shape, k) for x in (n // f, int(f))]
    inside = blocks.reshape(shape).all(axis=tuple(range(1, 2 * m.ndim, 2)))
    if not inside.any():
        return False
    block = np.unravel_index(int(np.argmax(ndimage.distance_transform_edt(inside, sampling=sp * k))), inside.shape)
    # the block and a margin that holds every voxel within ``distance`` of it: depths there are exact
    # up to ``distance`` for the block's voxels
    half = _ball_half(sp, distance)
    near = tuple(slice(int(max(0, b * f - h)), int(min(n, (b + 1) * f + h)))
                 for b, f, h, n in zip(block, k, half, m.shape))
    if m[near].all():  # no background within reach of the block
        return True
    depth = ndimage.distance_transform_edt(m[near], sampling=sp)
    own = tuple(slice(int(b * f - s.start), int(min((b + 1) * f, n) - s.start))
                for b, f, s, n in zip(block, k, near, m.shape))
    return bool(depth[own].max() > distance)
