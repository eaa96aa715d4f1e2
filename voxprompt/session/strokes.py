"""Scribbles and lassos for point/box/mask models: their geometry and the rules that turn them into prompts.

A **scribble** is a set of voxels (array indices, the session's axis order) the user painted on the
object (positive) or on what is not the object (negative). A **lasso** is a closed polygon drawn on one
slice, filled (:func:`lasso_region`), or an already filled region (what nnInteractive clients send).
No model here takes either directly (SAM-Med3D has points and a mask prompt only), so each becomes
points and masks by a documented rule, chosen per session (``Session(scribble_rule=..., lasso_rule=...)``,
or per call) and measured with a simulated scribbler (``benchmarks/scribbles.py``, docs/evaluation.md):

Scribble rules (:data:`SCRIBBLE_RULES`):

* ``"points"`` (default): up to ``k`` (:data:`STROKE_POINTS`) of its voxels spread along it by
  farthest-point sampling (in mm) from its centre voxel (the one nearest its centroid), all sent as
  clicks of one model step.
* ``"sequential"``: the same points, one model step each (each step's logits fed to the next), one undo step.
* ``"centre"``: one click at its centre voxel.

Lasso rules (:data:`LASSO_RULES`); the region's *deepest voxel* is the one farthest from its edge, in
the plane of a one-slice lasso:

* ``"points"`` (default): up to ``k`` clicks spread over the region's core (voxels at least half the
  deepest depth inside) by farthest-point sampling from the deepest voxel, in one model step; no mask
  prompt.
* ``"mask"``: the object's mask with the region added (positive) or cut out (negative)
  becomes the mask prompt (the previous logits of the ROI), plus one click at the deepest voxel. A
  one-slice region is thickened to half a low-res cell either side of its slice first
  (:func:`lasso_slab`): one slice alone would read as background in the model's coarse mask prompt.
* ``"box"``: ``"mask"`` plus the negative clicks ``add_box`` puts just outside the region's bounding box
  (in-plane faces only for a one-slice lasso); a negative lasso is ``"mask"``.

The defaults are the rules with the highest DSC AUC on the validation targets (``benchmarks/scribbles.py``,
5 steps: scribble ``points`` 2.69, ``sequential`` 2.59, ``centre`` 2.51; lasso ``points`` 2.52, ``mask``
2.49, ``box`` 1.64; clicks 2.38).

Wherever a session uses an object's clicks (boundary refinement seeds, auto-zoom, the confidence
warning), a stroke counts as the clicks its rule made; the clean-up keeps the components that hold any
voxel of a positive stroke and leaves open the holes that hold a voxel of a negative one.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import PromptError, UsageError
from ..masks import distance_inside

SCRIBBLE_RULES = ("points", "sequential", "centre")
LASSO_RULES = ("mask", "box", "points")
DEFAULT_SCRIBBLE_RULE = "points"  # benchmarks/scribbles.py on the validation targets (docs/evaluation.md)
DEFAULT_LASSO_RULE = "points"
STROKE_POINTS = 5  # k: clicks a "points" / "sequential" rule makes of one stroke at most
KINDS = ("scribble", "lasso")

Click = tuple[tuple[int, ...], int]  # (array index, label 1 / 0)


@dataclass(frozen=True, eq=False)
class Stroke:
    """A scribble or lasso as a session records it (the ``data`` of a ``("scribble" | "lasso", data)`` prompt).

    ``voxels``: ``(N, 3)`` int64 array indices, unique, in C order, read-only (a lasso: its filled
    region). ``rule``: the conversion rule it was given with; ``clicks``: the clicks that rule made
    (array index, label), the first being where its ROI was planned.
    """

    voxels: np.ndarray
    positive: bool
    rule: str
    clicks: tuple[Click, ...]


def check_rule(kind: str, rule: str) -> str:
    """``rule`` if it is one of ``kind``'s rules, else :class:`UsageError` naming them."""
    rules = SCRIBBLE_RULES if kind == "scribble" else LASSO_RULES
    if rule not in rules:
        raise UsageError(f"unknown {kind} rule {rule!r}; choose one of {', '.join(rules)}")
    return rule


# ----------------------------------------------------------------------------- geometry
def stroke_voxels(voxels: object, shape: Sequence[int], what: str = "scribble") -> np.ndarray:
    """A set of voxels given as ``(N, 3)`` integer array indices -> unique int64 rows in C order (read-only);
    :class:`PromptError` for an empty set, non-integer or non-finite values, or voxels outside ``shape``."""
    try:
        v = np.asarray(voxels, dtype=np.float64)
    except (TypeError, ValueError):
        raise PromptError(f"{what} voxels are not numeric") from None
    n = len(shape)
    if v.size == 0:
        raise PromptError(f"the {what} holds no voxel")
    if v.ndim != 2 or v.shape[1] != n:
        raise PromptError(f"{what} voxels must be an (N, {n}) array of indices (array axis order), got shape "
                          f"{v.shape}")
    if not np.isfinite(v).all() or np.any(v != np.round(v)):
        raise PromptError(f"{what} voxels must be integer voxel indices")
    out = np.unique(v.astype(np.int64), axis=0)
    bad = np.any((out < 0) | (out >= np.asarray(shape)), axis=1)
    if bad.any():
        raise PromptError(f"{what} voxel {tuple(out[bad][0].tolist())} is outside the volume of shape {tuple(shape)} "
                          f"({int(bad.sum())} of {len(out)} voxels outside)")
    out.flags.writeable = False
    return out


def voxels_of(mask: np.ndarray, offset: Sequence[int] | None = None) -> np.ndarray:
    """The nonzero voxels of ``mask`` as ``(N, ndim)`` indices, shifted by ``offset`` (a crop's corner)."""
    idx = np.argwhere(np.asarray(mask) != 0).astype(np.int64)
    return idx if offset is None else idx + np.asarray(offset, dtype=np.int64)


def _line(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The voxels a straight segment from ``a`` to ``b`` (real indices) passes: one sample per voxel step
    of its longest axis, each rounded to the nearest voxel (halves up)."""
    steps = int(np.ceil(np.abs(b - a).max()))
    t = np.linspace(0.0, 1.0, steps + 1)[:, None]
    return np.floor(a + t * (b - a) + 0.5).astype(np.int64)


def path_voxels(vertices: object, shape: Sequence[int]) -> np.ndarray:
    """The voxels of a drawn path (a polyline through ``vertices``, ``(M, 3)`` real array indices, M >= 1):
    each segment rasterised by :func:`_line`; what a viewer sends for a freehand scribble. Unique rows
    in C order; :class:`PromptError` for a vertex outside the volume."""
    p = _vertices(vertices, shape, "scribble path", minimum=1)
    parts = [_line(p[i], p[i + 1]) for i in range(len(p) - 1)] or [np.floor(p + 0.5).astype(np.int64)]
    return stroke_voxels(_clipped(np.concatenate(parts), shape), shape, "scribble path")


def _clipped(idx: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Rounded indices kept inside the volume (a vertex on its far edge, size - 0.5, rounds to size)."""
    return np.clip(idx, 0, np.asarray(shape, dtype=np.int64) - 1)


def _vertices(vertices: object, shape: Sequence[int], what: str, minimum: int) -> np.ndarray:
    try:
        p = np.asarray(vertices, dtype=np.float64)
    except (TypeError, ValueError):
        raise PromptError(f"{what} vertices are not numeric") from None
    n = len(shape)
    if p.ndim != 2 or p.shape[1] != n:
        raise PromptError(f"{what} vertices must be an (M, {n}) array of indices (array axis order), got shape "
                          f"{p.shape}")
    if len(p) < minimum:
        raise PromptError(f"a {what} needs at least {minimum} vertices, got {len(p)}")
    if not np.isfinite(p).all():
        raise PromptError(f"{what} vertices must be finite")
    hi = np.asarray(shape, dtype=np.float64) - 0.5
    out = np.any((p < -0.5) | (p > hi), axis=1)
    if out.any():
        raise PromptError(f"{what} vertex {tuple(p[out][0].tolist())} is outside the volume of shape {tuple(shape)} "
                          "(its extent: -0.5 <= v <= size - 0.5 on each axis)")
    return p


def fill_polygon(vertices: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A closed 2D polygon (``(M, 2)`` real indices of a ``shape`` array, the last vertex joined to the first)
    filled: the pixels whose centre lies inside it (even-odd rule: where it crosses itself, a part wound
    twice is outside) or on its outline. Returns a bool array of ``shape``."""
    p = np.asarray(vertices, dtype=np.float64)
    out = np.zeros(tuple(shape), dtype=bool)
    lo = np.maximum(np.ceil(p.min(0)).astype(int), 0)
    hi = np.minimum(np.floor(p.max(0)).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return out  # no pixel centre within the polygon's extent
    width = int(hi[1] - lo[1])
    flips = np.zeros((int(hi[0] - lo[0]), width + 1), dtype=bool)
    edges = list(zip(p, np.roll(p, -1, axis=0)))
    for (r1, c1), (r2, c2) in edges:  # a ray from each centre towards +columns: count the edges it crosses
        if r1 == r2:
            continue
        rows = np.arange(max(int(np.ceil(min(r1, r2))), lo[0]), min(int(np.floor(max(r1, r2))), hi[0] - 1) + 1)
        rows = rows[(r1 > rows) != (r2 > rows)]  # half-open in rows: a vertex's row counts once
        at = c1 + (rows - r1) * (c2 - c1) / (r2 - r1)  # where the edge crosses the row
        n = np.clip(np.ceil(at).astype(int) - lo[1], 0, width)  # the centres left of it: columns lo .. lo + n - 1
        flips[rows - lo[0], 0] ^= True
        flips[rows - lo[0], n] ^= True
    out[lo[0]:hi[0], lo[1]:hi[1]] = np.logical_xor.accumulate(flips, axis=1)[:, :width]
    for a, b in edges:  # centres on the outline (within 1e-9 of an edge)
        elo = np.maximum(np.ceil(np.minimum(a, b) - 1e-9).astype(int), 0)
        ehi = np.minimum(np.floor(np.maximum(a, b) + 1e-9).astype(int) + 1, shape)
        if np.any(ehi <= elo):
            continue
        r, c = np.meshgrid(np.arange(elo[0], ehi[0]), np.arange(elo[1], ehi[1]), indexing="ij")
        d = b - a
        t = np.clip(((r - a[0]) * d[0] + (c - a[1]) * d[1]) / max(float(d @ d), 1e-300), 0.0, 1.0)
        near = (r - a[0] - t * d[0]) ** 2 + (c - a[1] - t * d[1]) ** 2 <= 1e-18
        out[elo[0]:ehi[0], elo[1]:ehi[1]] |= near
    return out


def lasso_region(polygon: object, shape: Sequence[int]) -> np.ndarray:
    """The voxels of a lasso: ``polygon`` (``(M, 3)`` real array indices, M >= 3, all on one slice: one
    axis whose rounded index is the same for every vertex) filled on that slice by :func:`fill_polygon`
    (voxel centres inside it or on its outline). Returns unique ``(N, 3)`` int64 rows in C order
    (read-only). :class:`PromptError` for fewer than 3 vertices, a vertex outside the volume, vertices on
    several slices, or a polygon enclosing no area or no voxel centre."""
    p = _vertices(polygon, shape, "lasso", minimum=3)
    rounded = _clipped(np.floor(p + 0.5).astype(np.int64), shape)
    flat = [ax for ax in range(p.shape[1]) if np.all(rounded[:, ax] == rounded[0, ax])]
    if not flat:
        spans = ", ".join(f"axis {ax}: {rounded[:, ax].min()}..{rounded[:, ax].max()}" for ax in range(p.shape[1]))
        raise PromptError(f"lasso vertices must lie on one slice (one axis with the same index for all), got {spans}")
    plane = [ax for ax in range(p.shape[1]) if ax != flat[0]]
    q = p[:, plane]
    area = 0.5 * abs(float(np.dot(q[:, 0], np.roll(q[:, 1], -1)) - np.dot(q[:, 1], np.roll(q[:, 0], -1))))
    if len(flat) > 1 or area < 1e-9:
        raise PromptError("the lasso encloses no area (its vertices lie on one line)")
    filled = fill_polygon(q, [shape[ax] for ax in plane])
    idx = np.argwhere(filled)
    if not len(idx):
        raise PromptError("the lasso holds no voxel centre (draw it around at least one voxel)")
    out = np.empty((len(idx), p.shape[1]), dtype=np.int64)
    out[:, flat[0]] = rounded[0, flat[0]]
    out[:, plane] = idx
    return stroke_voxels(out, shape, "lasso")


def lasso_slab(voxels: np.ndarray, shape: Sequence[int], spacing: Sequence[float],
               half_mm: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """A lasso's region thickened for the mask prompt: across each axis it is one voxel thick on (a
    one-slice lasso: the slice's normal), repeated over ``half_mm`` either side (clipped to the volume).
    Returns the block's slices of the volume and its bool block. A mask prompt is the model's previous
    low-res logits, each cell the mean of a block of ROI voxels (11 mm across for the default model); a
    one-slice region would cover a fraction of every cell it meets and read as background."""
    lo, hi = voxels.min(0), voxels.max(0) + 1
    block = np.zeros(tuple(int(v) for v in hi - lo), dtype=bool)
    block[tuple((voxels - lo).T)] = True
    where = []
    for ax in range(len(shape)):
        a, b = int(lo[ax]), int(hi[ax])
        if b - a == 1:
            h = int(round(half_mm / float(spacing[ax])))
            a, b = max(a - h, 0), min(b + h, int(shape[ax]))
            block = np.repeat(block, b - a, axis=ax)
        where.append(slice(a, b))
    return tuple(where), block


# ----------------------------------------------------------------------------- choosing clicks
def centre_voxel(voxels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """The voxel nearest (in mm) to the set's centroid (first in order among equals)."""
    mm = voxels * np.asarray(spacing, dtype=np.float64)
    return voxels[int(np.argmin(((mm - mm.mean(0)) ** 2).sum(1)))]


def spread_points(voxels: np.ndarray, k: int, spacing: Sequence[float], start: np.ndarray) -> np.ndarray:
    """Up to ``k`` voxels of the set by farthest-point sampling in mm, from ``start``: each next one is the
    voxel farthest from those chosen (first in order among equals); fewer when all voxels are chosen."""
    mm = voxels * np.asarray(spacing, dtype=np.float64)
    chosen = [np.asarray(start, dtype=np.int64)]
    dist = ((mm - chosen[0] * np.asarray(spacing)) ** 2).sum(1)
    while len(chosen) < k:
        far = int(np.argmax(dist))
        if dist[far] <= 0:
            break
        chosen.append(voxels[far])
        dist = np.minimum(dist, ((mm - mm[far]) ** 2).sum(1))
    return np.stack(chosen)


def region_depth(voxels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Each voxel's distance (mm) to the region's edge, measured in the axes the region spans (a
    one-slice lasso: in its plane; the space beyond the region is background)."""
    lo = voxels.min(0)
    extent = voxels.max(0) - lo + 1
    axes = [ax for ax in range(voxels.shape[1]) if extent[ax] > 1]
    if not axes:
        return np.ones(len(voxels))
    block = np.zeros(tuple(int(extent[ax]) for ax in axes), dtype=bool)
    local = tuple((voxels[:, ax] - lo[ax]) for ax in axes)
    block[local] = True
    depth = distance_inside(block, [float(spacing[ax]) for ax in axes])
    return depth[local]


def box_centre(lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """The voxel at the middle of the box [lo, hi) (where ``add_box`` puts its positive click by default)."""
    return np.floor((np.asarray(lo) + np.asarray(hi) - 1) / 2.0 + 0.5).astype(np.int64)


def box_negatives(lo: np.ndarray, hi: np.ndarray, centre: np.ndarray, shape: Sequence[int],
                  margin: int) -> list[np.ndarray]:
    """``add_box``'s negative clicks for the box [lo, hi): ``centre`` moved to ``margin`` voxels beyond each
    face, on the axes where the box is more than one voxel thick, those inside the volume only."""
    out = []
    for ax in range(len(shape)):
        if hi[ax] - lo[ax] <= 1:
            continue  # a 2D box: no negatives above/below its slice
        for side in (lo[ax] - 1 - margin, hi[ax] + margin):
            if 0 <= side < shape[ax]:
                q = np.array(centre, dtype=np.int64)
                q[ax] = side
                out.append(q)
    return out


def box_seeds(lo: np.ndarray, hi: np.ndarray, plane: int) -> list[np.ndarray]:
    """Voxels where ``add_box`` may put its positive click in the box [lo, hi): the box's centre first,
    then a 3 x 3 grid a quarter of the box's extent from it on the centre's slice along ``plane`` (a
    one-slice box's own slice), duplicates dropped. A C-shaped or two-lobed object leaves the centre
    outside itself; one of the others usually lies in it."""
    lo, hi = np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)
    centre = box_centre(lo, hi)
    out = [centre]
    axes = [ax for ax in range(len(lo)) if ax != plane]
    steps = [sorted({int(np.clip(centre[ax] + k * (hi[ax] - lo[ax]) / 4.0, lo[ax], hi[ax] - 1)) for k in (-1, 0, 1)})
             for ax in axes]
    for u in steps[0]:
        for v in steps[1]:
            q = centre.copy()
            q[axes[0]], q[axes[1]] = u, v
            if not any(np.array_equal(q, p) for p in out):
                out.append(q)
    return out


def stroke_clicks(kind: str, voxels: np.ndarray, positive: bool, rule: str, spacing: Sequence[float],
                  shape: Sequence[int], k: int = STROKE_POINTS, margin: int = 2) -> tuple[Click, ...]:
    """The clicks ``rule`` makes of a stroke (module docstring), the first being its anchor (where the
    ROI is planned); ``margin``: the box rule's distance beyond the box faces (``add_box``'s)."""
    label = 1 if positive else 0
    if kind == "scribble":
        centre = centre_voxel(voxels, spacing)
        pts = [centre] if rule == "centre" else list(spread_points(voxels, k, spacing, centre))
        return tuple((tuple(int(v) for v in p), label) for p in pts)
    depth = region_depth(voxels, spacing)
    deepest = voxels[int(np.argmax(depth))]
    if rule == "points":
        core = voxels[depth >= 0.5 * depth.max()]
        pts = list(spread_points(core, k, spacing, deepest))
    else:
        pts = [deepest]
    clicks = [(tuple(int(v) for v in p), label) for p in pts]
    if rule == "box" and positive:
        lo, hi = voxels.min(0), voxels.max(0) + 1
        centre = box_centre(lo, hi)
        clicks += [(tuple(int(v) for v in q), 0) for q in box_negatives(lo, hi, centre, shape, margin)]
    return tuple(clicks)


__all__ = ["DEFAULT_LASSO_RULE", "DEFAULT_SCRIBBLE_RULE", "KINDS", "LASSO_RULES", "SCRIBBLE_RULES", "STROKE_POINTS",
           "Stroke", "box_centre", "box_negatives", "box_seeds", "centre_voxel", "check_rule", "fill_polygon",
           "lasso_region", "lasso_slab",
           "path_voxels",
           "region_depth", "spread_points", "stroke_clicks", "stroke_voxels", "voxels_of"]
