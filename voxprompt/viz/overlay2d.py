"""PNG overlay of a 2D mask on its image, with the prompts drawn."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from .figures import draw_mask, pyplot, save_figure


def save_overlay_2d(rgb: np.ndarray, mask: np.ndarray, out_path: str | os.PathLike,
                    points: Sequence[tuple[Sequence[float], bool]] = (),
                    box: Sequence[float] | None = None, title: str = "") -> Path:
    """Write the (H, W, 3) uint8 image with the mask in colour, points (+ green, - red) and the box.

    Points are ``((x, y), positive)``; the box is XYXY, in original pixels.
    """
    plt = pyplot()
    from matplotlib.patches import Rectangle

    m = np.asarray(mask) != 0
    if m.shape != tuple(rgb.shape[:2]):
        raise InputError(f"overlay mask shape {m.shape} does not match the image {tuple(rgb.shape[:2])}")
    h, w = m.shape
    fig, ax = plt.subplots(figsize=(6, 6 * h / max(w, 1) + 0.4))
    ax.imshow(rgb, interpolation="nearest")
    draw_mask(ax, m)
    for (x, y), positive in points:
        ax.plot([x], [y], marker="+" if positive else "x", color="lime" if positive else "red",
                markersize=12, mew=2)
    if box is not None:
        x0, y0, x1, y1 = box
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="cyan", lw=1.5))
    if title:
        ax.set_title(title)
    ax.set_axis_off()
    fig.tight_layout()
    return save_figure(fig, Path(out_path), dpi=80)


__all__ = ["save_overlay_2d"]
