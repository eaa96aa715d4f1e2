"""SAM-Med3D's official inference pre/post-processing (``utils/infer_utils.py``), crop-first.

Official: torchio Resample(1.5 mm) -> ToCanonical -> CropOrPad(128, mask_name='label') ->
ZNormalization(x > 0); back: nearest resample of the ROI mask onto the original grid. Here the
resampled canonical volume is never built; only the voxels the ROI needs are interpolated.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..io.image import Image, apply_affine
from .grid import _parse_triplet, canonical_grid
from .normalize import zscore_positive
from .resample import _box_corners, extract_roi, extract_roi_label, roi_to_original, sample_on_grid
from .roi import Roi, _make_roi, _translate, torchio_mask_start


@dataclass(eq=False)
class RoiInput:
    """Model-ready ROI: ``image`` z-scored float32 and ``label`` uint8, both ``roi.size``."""

    roi: Roi
    image: np.ndarray
    label: np.ndarray | None = None


def resampled_label_bbox(image: Image, label_zyx: np.ndarray, spacing=1.5):
    """[bb_min, bb_max) of a binary label after nearest resampling to the canonical grid, or None."""
    mask = np.asarray(label_zyx) != 0
    if mask.shape != image.shape:
        raise InputError(f"label shape {mask.shape} does not match the image shape {image.shape}")
    nz = [np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    if any(a.size == 0 for a in nz):
        return None
    lo = np.array([a[0] for a in nz])
    hi = np.array([a[-1] for a in nz]) + 1
    shape, aff = canonical_grid(image, spacing)
    ras = image.index_to_world(_box_corners(lo, hi, 1.0), frame="RAS")
    c = apply_affine(np.linalg.inv(aff), ras)
    g_lo = np.maximum(np.floor(c.min(axis=0)).astype(int) - 1, 0)
    g_hi = np.minimum(np.ceil(c.max(axis=0)).astype(int) + 2, shape)
    if np.any(g_hi <= g_lo):
        return None
    part = sample_on_grid(image, mask, g_hi - g_lo, aff @ _translate(g_lo), nearest=True)
    nz = [np.flatnonzero(part.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    if any(a.size == 0 for a in nz):
        return None
    return (g_lo + np.array([a[0] for a in nz]), g_lo + np.array([a[-1] for a in nz]) + 1)


def roi_for_label(image: Image, label_zyx: np.ndarray, size=128, spacing=1.5) -> Roi:
    """The ROI torchio's CropOrPad(mask_name='label') selects for a binary label."""
    size = _parse_triplet(size, "size", int)
    bbox = resampled_label_bbox(image, label_zyx, spacing)
    if bbox is None:
        raise InputError("label is empty after resampling; cannot centre a ROI on it")
    return _make_roi(image, torchio_mask_start(*bbox, size), size, spacing)


def preprocess_label_roi(image: Image, label_zyx: np.ndarray, category: int = 1, size=128,
                         spacing=1.5) -> RoiInput:
    """Reproduce the official ``data_preprocess`` for one category of a label map."""
    binary = np.asarray(label_zyx) == category
    roi = roi_for_label(image, binary, size, spacing)
    return RoiInput(roi=roi, image=zscore_positive(extract_roi(image, roi)),
                    label=extract_roi_label(image, binary, roi))


def preprocess_roi(image: Image, roi: Roi) -> np.ndarray:
    """Model input for any ROI: raw crop-resample then z-score over voxels > 0 (float32)."""
    return zscore_positive(extract_roi(image, roi))


def postprocess_mask(mask_roi: np.ndarray, roi: Roi, image: Image | None = None) -> np.ndarray:
    """Official ``data_postprocess``: ROI mask -> original (z, y, x) grid, uint8 0/1."""
    return roi_to_original(mask_roi, roi, image)


def canonical_shape_and_affine(image: Image, spacing=1.5) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and RAS affine of the image after Resample(spacing) + ToCanonical (no voxels)."""
    return canonical_grid(image, spacing)
