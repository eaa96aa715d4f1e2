"""Images rendered from label maps with random contrasts (domain randomisation, as SynthSeg does).

A ROI's label map becomes an image in which every label gets a random mean intensity and texture,
then random blur, thick anisotropic slices, a bias field, a gamma change and noise; the map may
first be deformed elastically. The same anatomy thus appears with contrasts no scanner gave it
(abdominal MR, PET, other CT kernels), so the model must find boundaries from the label layout
under the click, not from one modality's intensities. Arrays are ROI tensor-axis order, shape
``(S, S, S)``; the result is normalised exactly as at inference (:func:`zscore_positive`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..preprocess import zscore_positive
from .synthetic import smooth_noise

MIN_TARGET_CONTRAST = 0.08  # |target mean - its surroundings' mean| on the [0, 1] intensity scale


@dataclass(frozen=True)
class RenderConfig:
    """Ranges of the random rendering (defaults follow SynthSeg's spirit, sized for 64^3 ROIs)."""

    deform_voxels: float = 2.0  # largest elastic displacement
    deform_prob: float = 0.5
    texture_max: float = 0.12  # per-label texture amplitude
    blur_max: float = 1.0  # Gaussian sigma per axis, voxels
    thick_slice_prob: float = 0.3  # one axis averaged over 2-5 voxels (thick, anisotropic slices)
    bias_max: float = 0.4
    gamma_std: float = 0.25
    noise_max: float = 0.05
    dark_label_prob: float = 0.1  # a non-target label rendered below zero (air in CT: left out of the z-score)


def deform_labels(rng: np.random.Generator, labels: np.ndarray, amplitude: float) -> np.ndarray:
    """Labels warped by a smooth random displacement field of at most ``amplitude`` voxels (nearest)."""
    size = labels.shape[0]
    cell = rng.uniform(8, 24)
    grid = np.indices(labels.shape, dtype=np.float32)
    coords = [grid[a] + amplitude * smooth_noise(rng, size, cell) for a in range(3)]
    return ndimage.map_coordinates(labels, coords, order=0, mode="nearest")


def render_labels(rng: np.random.Generator, labels: np.ndarray, target: int, valid: np.ndarray,
                  cfg: RenderConfig = RenderConfig(), keep: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A normalised image and the target mask (uint8) rendered from a ROI label map.

    ``labels``: int ``(S, S, S)``; ``target``: the label id to segment; ``valid``: bool, the ROI's
    voxels inside the source image (outside stays 0, as real ROI padding); ``keep``: a voxel that
    must stay in the target after deformation (the first click), or None.
    """
    size = labels.shape[0]
    if cfg.deform_voxels > 0 and rng.random() < cfg.deform_prob:
        warped = deform_labels(rng, labels, cfg.deform_voxels)
        if (warped == target).sum() > 0 and (keep is None or warped[tuple(keep)] == target):
            labels = warped
    mask = (labels == target).astype(np.uint8)
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    means = rng.uniform(0.05, 1.0, len(ids))
    t = int(np.searchsorted(ids, target))
    ring = ndimage.binary_dilation(mask, iterations=2) & ~mask.astype(bool)
    for _ in range(10):  # the target must differ from what surrounds it, or there is nothing to learn
        around = means[inverse[ring]].mean() if ring.any() else 0.5
        if abs(means[t] - around) >= MIN_TARGET_CONTRAST:
            break
        means[t] = rng.uniform(0.05, 1.0)
    dark = rng.random(len(ids)) < cfg.dark_label_prob
    dark[t] = False
    means[dark] = -rng.uniform(0.3, 1.0, int(dark.sum()))
    stds = rng.uniform(0.0, cfg.texture_max, len(ids))
    texture = smooth_noise(rng, size, rng.uniform(1.5, 6.0))
    image = means[inverse] + stds[inverse] * texture
    sigma = rng.uniform(0.0, cfg.blur_max, 3)
    if rng.random() < cfg.thick_slice_prob:
        axis = int(rng.integers(3))
        k = int(rng.integers(2, 6))
        image = ndimage.uniform_filter1d(image, k, axis=axis, mode="nearest")
        sigma[axis] = max(sigma[axis], k / 2.5)
    image = ndimage.gaussian_filter(image, sigma)
    image = image * np.exp(rng.uniform(0.0, cfg.bias_max) * smooth_noise(rng, size, size / 2))
    pos = image > 0
    if pos.any():
        top = float(image[pos].max())
        image[pos] = top * (image[pos] / top) ** float(np.exp(rng.normal(0.0, cfg.gamma_std)))
    image = image + rng.normal(0.0, rng.uniform(0.0, cfg.noise_max), image.shape)
    image[~valid] = 0.0
    return zscore_positive(image.astype(np.float32)), mask


__all__ = ["RenderConfig", "deform_labels", "render_labels"]
