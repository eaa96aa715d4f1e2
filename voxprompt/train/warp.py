"""Spatial augmentation of real training ROIs: a random rotation, per-axis scaling and a smooth
elastic displacement about the ROI's centre.

Why: the soft organs have one training patient, and until stage 21 the model saw its organs only as
they lie in that patient (mirrored and zoomed isotropically). A warp shows each organ in other
poses and proportions, the cheapest stand-in for more patients. The ROI is drawn ``WARP_MARGIN``
voxels wider on every side and warped down to the model's size, so the warped ROI takes real
anatomy from around it rather than repeating its border.

The centre voxel is a fixed point of the warp (the elastic field is shifted to be zero there), so a
first click at the centre, as a session opens a first click's ROI, stays on its voxel.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..data.render import smooth_noise
from .config import AugmentConfig

WARP_MARGIN = 8  # extra ROI voxels drawn on every side of a warped sample


def rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """3x3 rotation: uniform angles in [-max_deg, max_deg] about each axis, composed."""
    out = np.eye(3)
    for axis in range(3):
        a = np.deg2rad(rng.uniform(-max_deg, max_deg))
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = np.cos(a)
        r[i, j], r[j, i] = -np.sin(a), np.sin(a)
        out = r @ out
    return out


def warp_coordinates(rng: np.random.Generator, size: int, aug: AugmentConfig) -> np.ndarray:
    """``(3, size, size, size)`` input coordinates of each output voxel in a ROI of side
    ``size + 2 * WARP_MARGIN`` (tensor-axis order); the output centre maps onto the input centre.
    A scale above 1 shows the anatomy larger (the input is sampled more densely)."""
    lo, hi = np.log(aug.warp_scale)
    scale = np.exp(rng.uniform(lo, hi, 3))
    matrix = rotation(rng, aug.warp_rotate_deg) / scale[None, :]
    c_out = size // 2
    grid = np.indices((size,) * 3, dtype=np.float32).reshape(3, -1) - c_out
    coords = (matrix.astype(np.float32) @ grid).reshape(3, size, size, size) + (c_out + WARP_MARGIN)
    if aug.warp_elastic_voxels > 0:
        cell = rng.uniform(12, 32)
        for a in range(3):
            field = smooth_noise(rng, size, cell)
            coords[a] += aug.warp_elastic_voxels * (field - field[c_out, c_out, c_out])
    return coords


def warp_roi(rng: np.random.Generator, image: np.ndarray, label: np.ndarray, click: np.ndarray, size: int,
             aug: AugmentConfig, min_voxels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warp a ROI of side ``size + 2 * WARP_MARGIN`` to side ``size``: image linear, label nearest.

    ``click``: the first click in the input ROI or -1s (left to the simulator). Only a click at the
    ROI's centre is warped (a centred sample's click): the centre is the warp's fixed point, so the
    click keeps its voxel and label. A click elsewhere, or a warped label of fewer than ``min_voxels``
    target voxels, gives the ROI's centre crop unwarped instead, so a sample never changes what it
    asks for.
    """
    out_click = np.array(click)
    if click[0] >= 0:
        out_click = out_click - WARP_MARGIN
        if not np.array_equal(out_click, np.full(3, size // 2)):
            return _centre_crop(image, label, click, size)
    coords = warp_coordinates(rng, size, aug)
    warped_label = ndimage.map_coordinates(label, coords, order=0, mode="constant", cval=0)
    if warped_label.sum() < min_voxels:
        return _centre_crop(image, label, click, size)
    warped = ndimage.map_coordinates(image, coords, order=1, mode="nearest")
    return warped.astype(np.float32), warped_label.astype(label.dtype), out_click


def _centre_crop(image: np.ndarray, label: np.ndarray, click: np.ndarray, size: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    window = (slice(WARP_MARGIN, WARP_MARGIN + size),) * 3
    out_click = np.array(click) if click[0] < 0 else np.asarray(click) - WARP_MARGIN
    return np.ascontiguousarray(image[window]), np.ascontiguousarray(label[window]), out_click
