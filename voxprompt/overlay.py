"""PNG overlays: three orthogonal slices through a point with a mask drawn on them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import InputError
from .figures import draw_mask, pyplot, save_figure
from .io.image import Image


CT_SOFT_TISSUE = (-160.0, 240.0)  # W 400 / L 40 HU


def _window(arr: np.ndarray) -> tuple[float, float]:
    """Display range: a soft-tissue window for CT in HU (air below -500), else the 1-99th percentiles."""
    if arr.size and float(arr.min()) < -500 and float(arr.max()) > 100:
        return CT_SOFT_TISSUE
    lo, hi = np.percentile(arr, [1, 99]) if arr.size else (0.0, 1.0)
    return float(lo), float(hi if hi > lo else lo + 1)


def save_overlay(image: Image, mask_zyx: np.ndarray, out_path: str | os.PathLike,
                 point_zyx: Optional[Sequence[int]] = None, title: str = "") -> Path:
    """Write axial / coronal / sagittal slices (array order, through ``point_zyx``) with the mask.

    Slices are shown in array orientation (row 0 at the top axially, slice 0 at the bottom
    otherwise; no left-right flip); pixel aspect follows the
    spacing. ``point_zyx`` defaults to the mask's centre of mass, or the volume centre.
    """
    plt = pyplot()

    arr = image.array
    mask = np.asarray(mask_zyx) != 0
    if mask.shape != arr.shape:
        raise InputError(f"overlay mask shape {mask.shape} does not match the image {arr.shape}")
    if point_zyx is None:
        nz = np.argwhere(mask)
        point_zyx = nz.mean(axis=0).round().astype(int) if len(nz) else np.asarray(arr.shape) // 2
    z, y, x = (int(v) for v in point_zyx)
    sx, sy, sz = image.spacing
    views = [  # (name, image, mask, aspect = row / column spacing, marker (col, row), row origin)
        (f"axial z={z}", arr[z], mask[z], sy / sx, (x, y), "upper"),
        (f"coronal y={y}", arr[:, y, :], mask[:, y, :], sz / sx, (x, z), "lower"),
        (f"sagittal x={x}", arr[:, :, x], mask[:, :, x], sz / sy, (y, z), "lower"),
    ]
    vmin, vmax = _window(arr[z])
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (name, im, m, aspect, (c, r), origin) in zip(axes, views):
        ax.imshow(im, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest", origin=origin)
        draw_mask(ax, m, aspect=aspect, origin=origin)
        ax.plot([c], [r], marker="+", color="cyan", markersize=12, mew=2)
        ax.set_title(name)
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, Path(out_path), dpi=80)


__all__ = ["save_overlay"]
