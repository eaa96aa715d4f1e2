"""Procedurally generated training volumes: varied shapes, textures, contrasts, noise, bias fields.

Each sample is a cube of ``size`` voxels holding a few overlapping objects (ellipsoids,
superquadrics, noisy blobs, curved tubes) on a textured background, optionally with an
"air" region below zero (as CT air, excluded from the z-score like real ROIs), smoothed edges,
a multiplicative bias field and Gaussian noise. One visible object is the target. The image is
normalised exactly as at inference (:func:`~voxprompt.preprocess.zscore_positive`), so synthetic
and real ROIs look alike to the model. The goal is generality: the model must learn "the region
under the click that differs from its surroundings", not one anatomy.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..data.render import smooth_noise  # one home: the label renderer's noise field
from ..preprocess import zscore_positive

MIN_TARGET_VOXELS = 30


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _grid(size: int) -> np.ndarray:
    ax = np.arange(size, dtype=np.float32)
    return np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), axis=-1)  # (S, S, S, 3)


def _local(grid: np.ndarray, center: np.ndarray, rot: np.ndarray) -> np.ndarray:
    return (grid - center.astype(np.float32)) @ rot.astype(np.float32)


def _superquadric(rng: np.random.Generator, grid: np.ndarray, size: int, blobby: bool) -> np.ndarray:
    center = rng.uniform(0.1, 0.9, 3) * size
    radii = np.exp(rng.uniform(np.log(3.0), np.log(size / 2.2), 3)).astype(np.float32)
    power = 2.0 if rng.random() < 0.5 else rng.uniform(1.2, 5.0)
    q = np.abs(_local(grid, center, _rotation(rng)) / radii)
    level = (q ** power).sum(-1)
    threshold = 1.0
    if blobby:
        threshold = 1.0 + rng.uniform(0.3, 0.8) * smooth_noise(rng, size, rng.uniform(4, 12))
    return level <= threshold


def _tube(rng: np.random.Generator, size: int) -> np.ndarray:
    pts = rng.uniform(-0.1, 1.1, (3, 3)) * size  # quadratic Bezier control points
    t = np.linspace(0, 1, 4 * size)[:, None]
    curve = (1 - t) ** 2 * pts[0] + 2 * (1 - t) * t * pts[1] + t ** 2 * pts[2]
    idx = np.round(curve).astype(int)
    idx = idx[np.all((idx >= 0) & (idx < size), axis=1)]
    seeds = np.ones((size,) * 3, bool)
    if len(idx):
        seeds[tuple(idx.T)] = False
    radius = rng.uniform(1.5, max(2.0, size / 10))
    return ndimage.distance_transform_edt(seeds) <= radius


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.uniform(0.0, 0.25) * smooth_noise(rng, size, rng.uniform(2, 10))


def synthetic_sample(rng: np.random.Generator, size: int = 64, min_objects: int = 2,
                     max_objects: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """One normalised image ``(size,)*3`` float32 and its target mask (uint8)."""
    grid = _grid(size)
    for _ in range(20):
        base = rng.uniform(0.3, 1.0)
        image = base + _texture(rng, size) * base
        labels = np.zeros((size,) * 3, np.int16)
        if rng.random() < 0.3:  # an "air" region below zero, as in CT
            air = _superquadric(rng, grid, size, blobby=True)
            image[air] = -rng.uniform(0.5, 1.0)
        n = int(rng.integers(min_objects, max_objects + 1))
        for k in range(1, n + 1):
            kind = rng.random()
            shape = _tube(rng, size) if kind < 0.25 else _superquadric(rng, grid, size, blobby=kind > 0.6)
            contrast = rng.uniform(0.15, 1.0) * (1 if rng.random() < 0.6 else -1) * base
            level = max(0.05, base + contrast)
            obj = level * (1 + _texture(rng, size))
            image = np.where(shape, obj, image)
            labels[shape] = k
        counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        visible = np.flatnonzero(counts >= MIN_TARGET_VOXELS) + 1
        if len(visible):
            break
    else:  # pragma: no cover - 20 empty draws in a row is vanishingly unlikely
        raise RuntimeError("synthetic generator produced no visible object")
    target = int(rng.choice(visible))
    sigma = rng.uniform(0.0, 1.0)
    if sigma > 0.3:
        image = ndimage.gaussian_filter(image, sigma)
    image = image * np.exp(rng.uniform(0.0, 0.4) * smooth_noise(rng, size, size / 2))
    image = image + rng.normal(0, rng.uniform(0.005, 0.12), image.shape) * base
    return zscore_positive(image.astype(np.float32)), (labels == target).astype(np.uint8)


def synthetic_batch(rng: np.random.Generator, n: int, size: int, min_objects: int = 2,
                    max_objects: int = 7) -> tuple[np.ndarray, np.ndarray]:
    pairs = [synthetic_sample(rng, size, min_objects, max_objects) for _ in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


__all__ = ["synthetic_sample", "synthetic_batch", "smooth_noise"]
