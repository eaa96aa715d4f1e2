"""A simulated scribbler: the CVPR 2025 click protocol's user drawing scribbles or lassos instead of clicking.

Each step looks where the click protocol would click (:func:`~voxprompt.eval.clicks.cvpr25_next_click`:
the centre of the largest error component, FN and FP together; positive when that voxel belongs to
the target) and draws on the slice through that voxel, across ``axis`` (0 = z, axial, by default), the
**cross-section** there: the 8-connected 2D component holding the voxel of that 3D error component,
its holes filled. Deterministic (no random numbers):

* :func:`next_scribble`: the cross-section's medial core: its skeleton (scikit-image) where it is at
  least half as deep (in-plane EDT, mm) as its deepest pixel; the click voxel alone when that is empty.
* :func:`next_lasso`: the cross-section's outline (marching squares at level 0.5, so it passes half way
  between pixel centres and its filled polygon is the cross-section), simplified to within
  :data:`LASSO_TOLERANCE` voxels (Douglas-Peucker), as a polygon of array indices on that slice.

:func:`run_stroke_protocol` runs ``n_steps`` of one kind of user (``click``, ``scribble`` or ``lasso``)
through an engine ``predict_fn(interaction) -> mask`` and scores Dice and NSD after each step;
:func:`session_stroke_fn` is such an engine over a 3D :class:`~voxprompt.session.Session`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from voxprompt.errors import InputError, UsageError
from voxprompt.eval.clicks import Click, cvpr25_next_click
from voxprompt.eval.metrics import as_mask, as_spacing, auc_trapezoid, dice, nsd
from voxprompt.masks import distance_inside, largest_component

logger = logging.getLogger(__name__)

USERS = ("click", "scribble", "lasso")
LASSO_TOLERANCE = 1.0  # voxels: how far the simulated lasso's polygon may stray from the exact outline
NSD_TOLERANCE_MM = 2.0  # as the CVPR 2025 protocol


@dataclass(frozen=True, eq=False)
class Scribble:
    """A simulated scribble: ``voxels`` ``(N, 3)`` array indices, ``label`` 1 (positive) or 0."""

    voxels: np.ndarray
    label: int


@dataclass(frozen=True, eq=False)
class Lasso:
    """A simulated lasso: ``polygon`` ``(M, 3)`` real array indices on one slice, ``label`` 1 or 0."""

    polygon: np.ndarray
    label: int


Interaction = Click | Scribble | Lasso


def error_cross_section(pred: object, gt: object, axis: int = 0,
                        spacing: Sequence[float] | None = None) -> tuple[Click, np.ndarray] | None:
    """The click protocol's next click and the cross-section the scribbler draws on (module docstring):
    a 2D bool array, the slice through the click across ``axis`` (the other axes in order). ``spacing``
    (mm per axis) is for nothing but the click's EDT, which is in voxels when None (as the scorer's).
    None when the prediction is perfect."""
    p, g = as_mask(pred, "pred"), as_mask(gt, "gt")
    if p.shape != g.shape or p.ndim != 3:
        raise InputError(f"pred {p.shape} and gt {g.shape} must be 3D masks of one shape")
    if not 0 <= axis < 3:
        raise UsageError(f"axis must be 0, 1 or 2, got {axis}")
    click = cvpr25_next_click(p, g, spacing)
    if click is None:
        return None
    component = largest_component(p != g)  # the one the click lies in (the same size tie-break)
    plane = np.take(component, click.index[axis], axis=axis)
    at = tuple(v for ax, v in enumerate(click.index) if ax != axis)
    labels, _ = ndimage.label(plane, structure=np.ones((3, 3), bool))
    section = ndimage.binary_fill_holes(labels == labels[at])
    return click, section


def _to_volume(rows_cols: np.ndarray, axis: int, index: int) -> np.ndarray:
    """2D (row, col) coordinates of a slice -> 3D array indices (``axis`` set to ``index``)."""
    out = np.empty((len(rows_cols), 3), dtype=rows_cols.dtype)
    out[:, axis] = index
    out[:, [ax for ax in range(3) if ax != axis]] = rows_cols
    return out


def next_scribble(pred: object, gt: object, axis: int = 0, spacing: Sequence[float] | None = None) -> Scribble | None:
    """The simulated scribble (module docstring); ``spacing`` (mm per axis) weighs the in-plane depth."""
    from skimage.morphology import skeletonize

    found = error_cross_section(pred, gt, axis)
    if found is None:
        return None
    click, section = found
    sp = as_spacing(spacing, 3)
    depth = distance_inside(section, [s for ax, s in enumerate(sp) if ax != axis])
    core = skeletonize(section) & (depth >= 0.5 * depth.max())
    pixels = np.argwhere(core)
    if not len(pixels):
        return Scribble(np.asarray([click.index], dtype=np.int64), click.label)
    return Scribble(_to_volume(pixels.astype(np.int64), axis, click.index[axis]), click.label)


def next_lasso(pred: object, gt: object, axis: int = 0, tolerance: float = LASSO_TOLERANCE) -> Lasso | None:
    """The simulated lasso (module docstring)."""
    from skimage.measure import approximate_polygon, find_contours

    found = error_cross_section(pred, gt, axis)
    if found is None:
        return None
    click, section = found
    contours = find_contours(np.pad(section, 1).astype(np.float64), 0.5)

    def area(c: np.ndarray) -> float:
        return 0.5 * abs(float(np.dot(c[:, 0], np.roll(c[:, 1], -1)) - np.dot(c[:, 1], np.roll(c[:, 0], -1))))

    outline = max(contours, key=area) - 1.0  # the outer one (holes are filled); back from the padding
    if tolerance > 0:
        outline = approximate_polygon(outline, tolerance)
    if np.allclose(outline[0], outline[-1]):
        outline = outline[:-1]  # a closed contour repeats its first vertex
    return Lasso(_to_volume(outline, axis, click.index[axis]).astype(np.float64), click.label)


@dataclass
class StrokeResult:
    """Dice and NSD after each step of one run, and what was drawn."""

    user: str
    interactions: list = field(default_factory=list)
    dice: list[float] = field(default_factory=list)
    nsd: list[float] = field(default_factory=list)

    @property
    def dsc_auc(self) -> float:
        return auc_trapezoid(self.dice)

    @property
    def nsd_auc(self) -> float:
        return auc_trapezoid(self.nsd)

    @property
    def final_dice(self) -> float:
        return self.dice[-1]


def run_stroke_protocol(predict_fn: Callable[[Interaction], object], gt: object, user: str = "scribble",
                        n_steps: int = 5, spacing: Sequence[float] | None = None, axis: int = 0,
                        tolerance_mm: float = NSD_TOLERANCE_MM) -> StrokeResult:
    """``n_steps`` interactions of one ``user`` (``click``: the CVPR 2025 click; ``scribble``; ``lasso``),
    each drawn on the previous prediction (empty at first), scored by Dice and NSD at ``tolerance_mm``
    (``spacing``: mm per array axis). A perfect prediction gets no interaction; its scores repeat."""
    if user not in USERS:
        raise UsageError(f"unknown simulated user {user!r}; choose one of {', '.join(USERS)}")
    if not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise UsageError(f"n_steps must be a positive integer, got {n_steps!r}")
    g = as_mask(gt, "gt")
    if not g.any():
        raise InputError("the ground truth is empty: nothing to segment")
    result = StrokeResult(user)
    prev = np.zeros_like(g)
    for step in range(n_steps):
        if user == "click":
            act: Interaction | None = cvpr25_next_click(prev, g)
        elif user == "scribble":
            act = next_scribble(prev, g, axis, spacing)
        else:
            act = next_lasso(prev, g, axis)
        if act is not None:
            result.interactions.append(act)
            prev = as_mask(predict_fn(act), "predict_fn output")
            if prev.shape != g.shape:
                raise InputError(f"predict_fn returned shape {prev.shape}, expected the GT shape {g.shape}")
        result.dice.append(dice(prev, g))
        result.nsd.append(nsd(prev, g, spacing, tolerance_mm))
        logger.debug("%s step %d: Dice %.4f", user, step + 1, result.dice[-1])
    return result


def session_stroke_fn(session: Any) -> Callable[[Interaction], np.ndarray]:
    """An engine over a 3D Session (its image set): a click is ``add_point``, a scribble ``add_scribble``,
    a lasso ``add_lasso``, each with the session's rules; returns the current object's mask."""
    def step(act: Interaction) -> np.ndarray:
        if isinstance(act, Scribble):
            session.add_scribble(act.voxels, positive=bool(act.label))
        elif isinstance(act, Lasso):
            session.add_lasso(act.polygon, positive=bool(act.label))
        else:
            session.add_point(act.index, positive=bool(act.label))
        return session.mask

    return step


__all__ = ["LASSO_TOLERANCE", "Lasso", "Scribble", "StrokeResult", "USERS", "error_cross_section", "next_lasso",
           "next_scribble", "run_stroke_protocol", "session_stroke_fn"]
