"""Boundary refinement: a model's mask re-decided at the image's own resolution by a random walker.

The model sees the object on a coarse grid (the default model's logits are several millimetres
apart), so its boundary is placed only to within a few millimetres. The band and beta were chosen
on the training structures (``benchmarks/refine_band.py``, by DSC AUC + NSD AUC) with
scikit-image's solver (one CG solve per label, ``tol`` 1e-3, labels by argmax). At such a sharp beta
the walker's linear system is badly conditioned and CG stops before the exact solution, so the
results are those of the solver as configured. The default solver (``RefineConfig(solver=
"difference")``) solves once, for the label difference (:func:`voxprompt.refine.walker.band_random_walker`):
about 1.3x faster than scikit-image's per-label solve (``solver="labels"``) and level with it on the
validation split (``benchmarks/results/refine_grid_solver_val_stage10.json``) and within noise on the
training structures (``refine_solver_*.json``); it became the default for the speed targets of the
server. Changing the solver or ``tol`` needs the selection re-run. :func:`refine_mask` keeps what
the model is sure of and lets the image decide the rest: voxels deeper than ``band_mm`` inside the
mask are object seeds, voxels farther than ``band_mm`` outside are background seeds, each click
is a seed ball of its own label, and scikit-image's random walker labels the band in between on
the original grid, following intensity edges. It never reaches more than ``band_mm`` past the
model's boundary. Thin parts (less than ``2 * band_mm`` across) keep their medial core as object
seeds so the refinement cannot erase them.

The random-walker primitives here are shared with the classical baseline
(:mod:`voxprompt.eval.baseline`).
"""
from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import InputError, UsageError
from ..masks import deeper_than, reaches_depth
from .walker import band_random_walker, check_cancel

log = logging.getLogger(__name__)

__all__ = ["RefineConfig", "refine_mask", "refine_reach", "resolve_refine", "band_seeds", "normalise_window",
           "draw_seed_balls",
           "solve_random_walker", "grid_factors"]

Point = tuple[Sequence[int], int]  # (voxel index, label 1 positive / 0 negative)


@dataclass(frozen=True)
class RefineConfig:
    """Settings of :func:`refine_mask` (chosen on the training structures: docs/default-model.md)."""

    band_mm: float = 9.0          # half-width of the undecided band around the model's boundary
    beta: float = 16000.0         # random-walker edge penalty (sharp: edges decide, not distance)
    smooth_sigma: float = 1.0     # Gaussian pre-smoothing (voxels; 0 = none)
    seed_radius: int = 2          # click seed ball radius (voxels)
    percentiles: tuple[float, float] = (0.5, 99.5)  # intensity window mapped to [0, 1]
    tol: float = 1e-3             # conjugate-gradient tolerance
    solver: str = "difference"    # "difference": one solve of the label difference; "labels": one each (skimage)
    max_unknown: int = 8_000_000  # larger bands are left unrefined (a warning is logged)
    grid_mm: float = 1.5          # the walker's grid is no finer than this (finer axes are block-averaged; 0 = native)

    def __post_init__(self) -> None:
        if not (self.band_mm > 0 and self.beta > 0 and self.smooth_sigma >= 0 and self.seed_radius >= 0
                and self.tol > 0 and self.max_unknown > 0 and self.grid_mm >= 0):
            raise UsageError(f"invalid RefineConfig {self}")
        if self.solver not in ("difference", "labels"):
            raise UsageError(f"RefineConfig.solver must be 'difference' or 'labels', got {self.solver!r}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise UsageError(f"percentiles need 0 <= lo < hi <= 100, got {self.percentiles}")


def resolve_refine(setting: bool | RefineConfig | None, model_cfg: object) -> RefineConfig | None:
    """The refinement a session uses: ``None`` = the model's stored ``refine_band_mm`` (0 = off),
    ``True`` = on (the stored band, or the default one), ``False`` = off, or an explicit config."""
    band = float(getattr(model_cfg, "refine_band_mm", 0.0) or 0.0)
    if isinstance(setting, RefineConfig):
        return setting
    if setting is None or setting is True:
        if band > 0:
            return RefineConfig(band_mm=band)
        return RefineConfig() if setting else None
    if setting is False:
        return None
    raise UsageError(f"refine must be None, a bool or a RefineConfig, got {type(setting).__name__}")


def normalise_window(crop: np.ndarray, percentiles: tuple[float, float], sigma: float = 0.0) -> np.ndarray:
    """``crop`` (optionally Gaussian-smoothed) with its ``percentiles`` window mapped onto [0, 1]."""
    data = crop.astype(np.float64)
    if sigma > 0:
        data = ndimage.gaussian_filter(data, sigma)
    lo, hi = np.percentile(data, percentiles)
    if hi <= lo:
        return np.zeros(data.shape, dtype=np.float64)
    return np.clip((data - lo) / (hi - lo), 0.0, 1.0)


def _ball(radius: int, ndim: int) -> np.ndarray:
    grid = np.indices((2 * radius + 1,) * ndim) - radius
    return (grid ** 2).sum(axis=0) <= radius ** 2


def draw_seed_balls(seeds: np.ndarray, points: Sequence[tuple[np.ndarray, int]], radius: int) -> np.ndarray:
    """Draw a ball of label ``value`` at each ``(index, value)`` (clipped to the array); returns the
    union of the drawn voxels. Later points win where balls overlap."""
    ball = _ball(radius, seeds.ndim)
    drawn = np.zeros(seeds.shape, dtype=bool)
    for index, value in points:
        lo = np.asarray(index, dtype=int) - radius
        sl_arr, sl_ball = [], []
        for a, n, b in zip(lo, seeds.shape, ball.shape):
            a0, a1 = max(a, 0), min(a + b, n)
            if a0 >= a1:
                break
            sl_arr.append(slice(a0, a1))
            sl_ball.append(slice(a0 - a, a1 - a))
        else:
            part = ball[tuple(sl_ball)]
            seeds[tuple(sl_arr)][part] = value
            drawn[tuple(sl_arr)] |= part
    return drawn


def solve_random_walker(data: np.ndarray, seeds: np.ndarray, beta: float, tol: float,
                        spacing: Sequence[float], prune: bool = False, difference: bool = False,
                        cancel: threading.Event | None = None) -> np.ndarray:
    """scikit-image's random walker (Jacobi-preconditioned CG) on seeds 1 / 2; returns its labels.
    3D bands run through :func:`voxprompt.refine.walker.band_random_walker` (the same linear system, built
    on the undecided voxels only: identical labels, several times faster on a refinement crop).
    ``prune``: on the scikit-image path, seeds with no undecided neighbour leave its graph (label
    -1; they cannot change the system, so only the graph gets smaller). ``difference``: the band
    walker's single solve (:func:`voxprompt.refine.walker.band_random_walker`); the scikit-image path always
    solves per label. ``cancel``: see :func:`~voxprompt.refine.walker.band_random_walker` (the
    scikit-image path checks it before its solve only)."""
    labels = band_random_walker(np.asarray(data, dtype=np.float64), seeds, beta, tol, spacing, difference, cancel)
    if labels is not None:
        return labels
    from skimage.segmentation import random_walker  # optional dependency

    check_cancel(cancel)
    if prune:
        seeds = np.where((seeds > 0) & ~ndimage.binary_dilation(seeds == 0), -1, seeds)

    with warnings.catch_warnings():  # harmless CG round-off just outside [0, 1]
        warnings.filterwarnings("ignore", message="The probability range is outside")
        return random_walker(data, seeds, beta=beta, mode="cg_j", tol=tol, spacing=tuple(spacing))


def band_seeds(mask: np.ndarray, clicks: Sequence[tuple[np.ndarray, int]], spacing: np.ndarray,
               cfg: RefineConfig) -> np.ndarray:
    """Walker seeds around ``mask``: 1 deeper than the band (or the core of thin parts), 2 farther
    than the band outside, 0 undecided; ``clicks`` (index, seed label 1/2) drawn over them.

    The depths are those of ``distance_transform_edt`` (inside the array); a band a few voxels wide
    (the second, image-resolution pass of a two-level refinement) is found by erosion with the same
    result, at a fraction of the transform's cost on a large crop (:func:`voxprompt.masks.deeper_than`)."""
    seeds = np.zeros(mask.shape, dtype=np.int32)
    if reaches_depth(mask, spacing, 2 * cfg.band_mm):  # nothing thin decides: the core lies deeper than the band
        seeds[deeper_than(mask, spacing, cfg.band_mm)] = 1
    else:
        depth = ndimage.distance_transform_edt(mask, sampling=spacing)
        seeds[depth > min(cfg.band_mm, 0.5 * float(depth.max()))] = 1
    if not seeds.any():  # a one-voxel-thin mask: its own voxels are the core
        seeds[mask] = 1
    seeds[deeper_than(~mask, spacing, cfg.band_mm)] = 2
    draw_seed_balls(seeds, clicks, cfg.seed_radius)
    return seeds


def grid_factors(spacing: Sequence[float], grid_mm: float) -> np.ndarray:
    """Integer block size per axis that brings each axis to at least ``grid_mm`` (1 where it already is)."""
    sp = np.asarray(spacing, dtype=float)
    if grid_mm <= 0:
        return np.ones(sp.shape, dtype=int)
    return np.maximum(1, np.floor(grid_mm / sp + 1e-6)).astype(int)


def _block_mean(a: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Mean over ``f``-sized blocks (the array edge-padded to whole blocks)."""
    pad = [(0, int(-n % k)) for n, k in zip(a.shape, f)]
    a = np.pad(a.astype(np.float64), pad, mode="edge")
    shape = [x for n, k in zip(a.shape, f) for x in (n // k, int(k))]
    return a.reshape(shape).mean(axis=tuple(range(1, 2 * a.ndim, 2)))


def _refine_two_level(img: np.ndarray, m: np.ndarray, points: Sequence[Point], sp: np.ndarray, f: np.ndarray,
                      cfg: RefineConfig, cancel: threading.Event | None) -> np.ndarray:
    """:func:`refine_mask` in two passes: the full band on ``f``-block means of ``img`` and ``m``, then
    a band of one block around that result on the image's own grid (where the blocks' stair-steps lie)."""
    from dataclasses import replace

    coarse = refine_mask(_block_mean(img, f), _block_mean(m, f) >= 0.5,
                         [(np.asarray(p, dtype=int) // f, lab) for p, lab in points], sp * f,
                         replace(cfg, grid_mm=0.0), cancel)
    for axis, k in enumerate(f):
        coarse = np.repeat(coarse, int(k), axis=axis)
    coarse = coarse[tuple(slice(0, n) for n in m.shape)]
    return refine_mask(img, coarse, points, sp, replace(cfg, grid_mm=0.0, band_mm=float(np.max(sp * f))), cancel)


def refine_reach(config: RefineConfig, spacing: Sequence[float]) -> np.ndarray:
    """Voxels per axis around a mask's bounding box that :func:`refine_mask` reads and may change
    (the band, two millimetres of context and one voxel): nothing farther away matters to it."""
    return np.ceil((config.band_mm + 2.0) / np.asarray(spacing, dtype=float)).astype(int) + 1


def refine_mask(image: np.ndarray, mask: np.ndarray, points: Sequence[Point],
                spacing: Sequence[float], config: RefineConfig | None = None,
                cancel: threading.Event | None = None) -> np.ndarray:
    """``mask`` with its boundary re-decided on ``image``'s grid (module docstring).

    ``points``: clicks as (index in ``image``, label 1/0); indices outside the array are ignored.
    ``spacing``: mm per array axis. Returns a new boolean array; an empty mask is returned as is.
    Axes finer than ``config.grid_mm`` are block-averaged by an integer factor for the band walk,
    and only a band of one block around its result is walked on the image's own grid: the cost of a
    click follows the object's size in millimetres rather than the scanner's resolution, and the
    boundary is still placed at the image's resolution.

    ``cancel``: when set (from another thread), the work stops within one solver iteration with
    :class:`~voxprompt.refine.walker.RefineCancelled`.
    """
    cfg = config or RefineConfig()
    img, m = np.asarray(image), np.asarray(mask, dtype=bool)
    if img.shape != m.shape:
        raise InputError(f"refine_mask: mask shape {m.shape} differs from the image shape {img.shape}")
    sp = np.asarray(spacing, dtype=float)
    if sp.shape != (img.ndim,) or not np.all(sp > 0):
        raise InputError(f"refine_mask: spacing {tuple(spacing)} does not fit a {img.ndim}D image")
    idx = np.argwhere(m)
    if idx.size == 0:
        return m.copy()
    pad = refine_reach(cfg, sp)
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, m.shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    f = grid_factors(sp, cfg.grid_mm)
    if np.any(f > 1):
        out = m.copy()
        out[crop] = _refine_two_level(img[crop], m[crop], [(np.asarray(p, dtype=int) - lo, lab) for p, lab in points],
                                   sp, f, cfg, cancel)
        return out
    clicks = [(np.asarray(p, dtype=int) - lo, 1 if int(lab) else 2) for p, lab in points]
    check_cancel(cancel)
    seeds = band_seeds(m[crop], clicks, sp, cfg)
    check_cancel(cancel)
    unknown = int((seeds == 0).sum())
    if unknown == 0 or not (seeds == 2).any() or not (seeds == 1).any():
        return m.copy()
    if unknown > cfg.max_unknown:
        log.warning("refine_mask: %d undecided voxels > max_unknown %d; mask left unrefined",
                    unknown, cfg.max_unknown)
        return m.copy()
    data = normalise_window(img[crop], cfg.percentiles, cfg.smooth_sigma)
    if not np.ptp(data) > 0:  # a flat crop has no edges to follow
        return m.copy()
    labels = solve_random_walker(data, seeds, cfg.beta, cfg.tol, sp, prune=True,
                                 difference=cfg.solver == "difference", cancel=cancel)
    out = m.copy()
    out[crop] = (labels == 1) | (seeds == 1)
    return out
