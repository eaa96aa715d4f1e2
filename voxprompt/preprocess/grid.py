"""The virtual 1.5 mm grid of torchio's ``Resample`` followed by ``ToCanonical`` (RAS+).

Nothing here allocates voxel data: the grid is described by its shape and a 4x4 affine mapping a
canonical index (axis0, axis1, axis2) = (R/x, A/y, S/z for an axis-aligned image) to world RAS mm.
"""
from __future__ import annotations

import numpy as np

from ..io.image import LPS_TO_RAS, Image


def _parse_triplet(value, name: str, kind=float) -> tuple:
    vals = (value,) * 3 if np.isscalar(value) else tuple(value)
    if len(vals) != 3 or any(v <= 0 for v in vals):
        from ..errors import UsageError

        raise UsageError(f"{name} must be a positive number or three of them, got {value!r}")
    return tuple(kind(v) for v in vals)


def resampled_grid_lps(image: Image, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Size (x, y, z) and 4x4 affine (sitk index i, j, k -> LPS) of torchio's Resample(spacing).

    torchio semantics: size = floor(old_size * old_spacing / new_spacing) (singletons kept), same
    direction, and the same physical centre as the original grid.
    """
    new_spacing = np.asarray(_parse_triplet(spacing, "spacing"), dtype=float)
    old_spacing = np.asarray(image.spacing, dtype=float)
    old_size = np.asarray(image.size_xyz)
    direction = image.direction
    origin = np.asarray(image.origin, dtype=float)
    last = origin + direction @ ((old_size - 1) * old_spacing)
    center = (last + origin) / 2
    new_size = np.floor(old_size * old_spacing / new_spacing)
    new_size[old_size == 1] = 1
    new_origin = center - direction @ ((new_size - 1) / 2 * new_spacing)
    aff = np.eye(4)
    aff[:3, :3] = direction @ np.diag(new_spacing)
    aff[:3, 3] = new_origin
    return new_size.astype(int), aff


def io_orientation(affine: np.ndarray) -> np.ndarray:
    """nibabel-compatible (out_axis, flip) per input axis for the closest RAS+ reorientation."""
    rzs = affine[:3, :3]
    zooms = np.sqrt((rzs * rzs).sum(axis=0))
    zooms[zooms == 0] = 1
    u, s, vt = np.linalg.svd(rzs / zooms)
    keep = s > s.max() * 3 * np.finfo(s.dtype).eps
    r = u[:, keep] @ vt[keep]
    ornt = np.zeros((3, 2), dtype=int)
    for in_ax in range(3):
        col = r[:, in_ax]
        out_ax = int(np.argmax(np.abs(col)))
        ornt[in_ax] = out_ax, 1 if col[out_ax] > 0 else -1
        r[out_ax, :] = 0
    return ornt


def canonical_grid(image: Image, spacing=1.5) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and 4x4 affine (canonical index -> RAS mm) of the resampled grid after ToCanonical."""
    size, aff_lps = resampled_grid_lps(image, spacing)
    aff_ras = LPS_TO_RAS @ aff_lps
    ornt = io_orientation(aff_ras)
    m = np.zeros((4, 4))  # canonical index -> resampled (i, j, k) index
    m[3, 3] = 1
    shape = [0, 0, 0]
    for in_ax, (out_ax, flip) in enumerate(ornt):
        m[in_ax, out_ax] = flip
        m[in_ax, 3] = size[in_ax] - 1 if flip < 0 else 0
        shape[out_ax] = int(size[in_ax])
    return tuple(shape), aff_ras @ m
