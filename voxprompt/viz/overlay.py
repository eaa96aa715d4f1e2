"""PNG overlays: three orthogonal slices through a point with a mask and the clicks drawn on them.

Views follow the radiological convention by default: the volume is turned to the patient's axes
(from its direction cosines) so that the axial and coronal views show the patient's left on the
image's right, anterior up (axial) and superior up (coronal, sagittal; sagittal has anterior on the
left). ``neurological=True`` shows the patient's left on the image's left. Orientation letters sit at
the image edges; every click is drawn (green + positive, red - negative; faded when it lies off the
shown slice).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.image import Image
from .figures import draw_mask, pyplot, save_figure

CT_SOFT_TISSUE = (-160.0, 240.0)  # W 400 / L 40 HU


def _window(arr: np.ndarray) -> tuple[float, float]:
    """Display range: a soft-tissue window for CT in HU (air below -500), else the 1-99th percentiles."""
    if arr.size and float(arr.min()) < -500 and float(arr.max()) > 100:
        return CT_SOFT_TISSUE
    lo, hi = np.percentile(arr, [1, 99]) if arr.size else (0.0, 1.0)
    return float(lo), float(hi if hi > lo else lo + 1)


def patient_axes(direction: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]] | None:
    """How to turn a (z, y, x) array to (S, P, L) order, every axis growing toward S, P, L (LPS):
    ``(perm, flip)`` for ``np.flip(arr.transpose(perm), [a for a in range(3) if flip[a]])``; None when
    the direction cosines do not pick a distinct world axis per index axis (then array order is shown)."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)  # column a: LPS direction of index axis a (i, j, k)
    world = [int(np.argmax(np.abs(d[:, a]))) for a in range(3)]
    if sorted(world) != [0, 1, 2]:
        return None
    perm, flip = [0, 0, 0], [False, False, False]
    for a, w in enumerate(world):  # index axis a (numpy axis 2 - a) -> world axis w (numpy axis 2 - w)
        perm[2 - w] = 2 - a
        flip[2 - w] = d[w, a] < 0
    return tuple(perm), tuple(flip)


def _to_patient(arr: np.ndarray, turn) -> np.ndarray:
    if turn is None:
        return arr
    perm, flip = turn
    return np.flip(arr.transpose(perm), [a for a in range(3) if flip[a]])


def _point_to_patient(p: Sequence[int], shape_zyx: Sequence[int], turn) -> tuple[int, int, int]:
    p = [int(v) for v in p]
    if turn is None:
        return tuple(p)
    perm, flip = turn
    out = [p[perm[a]] for a in range(3)]
    return tuple(shape_zyx[perm[a]] - 1 - out[a] if flip[a] else out[a] for a in range(3))


def save_overlay(image: Image, mask_zyx: np.ndarray, out_path: str | os.PathLike,
                 point_zyx: Sequence[int] | None = None, title: str = "",
                 clicks: Sequence[tuple[Sequence[int], bool]] | None = None,
                 neurological: bool = False) -> Path:
    """Write axial / coronal / sagittal slices through ``point_zyx`` with the mask and ``clicks``.

    ``point_zyx`` and ``clicks`` (``((z, y, x), positive)``) are array indices; ``point_zyx`` defaults
    to the first click, the mask's centre of mass, or the volume centre. Pixel aspect follows the
    spacing. Radiological convention unless ``neurological`` (see the module doc).
    """
    plt = pyplot()

    arr = image.array
    mask = np.asarray(mask_zyx) != 0
    if mask.shape != arr.shape:
        raise InputError(f"overlay mask shape {mask.shape} does not match the image {arr.shape}")
    clicks = [(tuple(int(v) for v in c), bool(pos)) for c, pos in (clicks or [])]
    if point_zyx is None and clicks:
        point_zyx = clicks[0][0]
    if point_zyx is None:
        nz = np.argwhere(mask)
        point_zyx = nz.mean(axis=0).round().astype(int) if len(nz) else np.asarray(arr.shape) // 2
    turn = patient_axes(image.direction)
    shape = arr.shape
    a, m = _to_patient(arr, turn), _to_patient(mask, turn)
    z, y, x = _point_to_patient(point_zyx, shape, turn)
    pts = [(_point_to_patient(c, shape, turn), pos) for c, pos in clicks]
    sp = np.asarray(image.spacing[::-1], dtype=float)  # mm per numpy axis (z, y, x)
    if turn is not None:
        sp = sp[list(turn[0])]
    sz, sy, sx = sp
    # (name, image, mask, aspect, click -> (col, row, on slice), row origin, letters (left, right, top, bottom))
    lr = ("L", "R") if neurological else ("R", "L")
    views = [
        ("axial", a[z], m[z], sy / sx, lambda p: (p[2], p[1], p[0] == z), "upper", (*lr, "A", "P")),
        ("coronal", a[:, y, :], m[:, y, :], sz / sx, lambda p: (p[2], p[0], p[1] == y), "lower",
         (*lr, "S", "I")),
        ("sagittal", a[:, :, x], m[:, :, x], sz / sy, lambda p: (p[1], p[0], p[2] == x), "lower",
         ("A", "P", "S", "I")),
    ]
    if turn is None:  # oblique beyond telling: array order, no letters
        views = [v[:6] + (None,) for v in views]
    vmin, vmax = _window(a[z])
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (name, im, mm, aspect, where, origin, letters) in zip(axes, views):
        flip_lr = neurological and name in ("axial", "coronal") and turn is not None
        if flip_lr:
            im, mm = im[:, ::-1], mm[:, ::-1]
        ax.imshow(im, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest", origin=origin)
        draw_mask(ax, mm, aspect=aspect, origin=origin)
        width = im.shape[1]
        for p, pos in pts:
            c, r, on = where(p)
            c = width - 1 - c if flip_lr else c
            ax.plot([c], [r], marker="+" if pos else "_", color="lime" if pos else "red",
                    markersize=12, mew=2.5, alpha=1.0 if on else 0.35)
        if not pts:
            c, r, _ = where((z, y, x))
            ax.plot([width - 1 - c if flip_lr else c], [r], marker="+", color="cyan", markersize=12, mew=2)
        if letters is not None:
            style = dict(color="yellow", fontsize=11, fontweight="bold", transform=ax.transAxes)
            left, right, top, bottom = letters
            ax.text(0.02, 0.5, left, ha="left", va="center", **style)
            ax.text(0.98, 0.5, right, ha="right", va="center", **style)
            ax.text(0.5, 0.98, top, ha="center", va="top", **style)
            ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
        ax.set_title(name)
        ax.set_axis_off()
    ijk = ",".join(str(int(v)) for v in list(point_zyx)[::-1])
    convention = ("neurological: patient left on image left" if neurological
                  else "radiological: patient left on image right")
    fig.suptitle(f"{title + '  ' if title else ''}through IJK {ijk}  ({convention})")
    fig.tight_layout()
    return save_figure(fig, Path(out_path), dpi=80)


__all__ = ["patient_axes", "save_overlay"]
