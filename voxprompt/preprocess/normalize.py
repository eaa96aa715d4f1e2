"""Intensity normalisation used by SAM-Med3D."""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def zscore_positive(roi_array: np.ndarray) -> np.ndarray:
    """torchio ``ZNormalization(masking_method=lambda x: x > 0)``: (x - mean) / std, float32.

    mean and the unbiased std are taken over voxels > 0 and applied to every voxel. Degenerate
    cases (torchio raises) are handled: no positive voxel -> returned unchanged; fewer than two
    positive voxels or std == 0 -> only the mean is subtracted. Both log a warning.
    """
    x = np.asarray(roi_array, dtype=np.float32)
    values = x[x > 0].astype(np.float64)
    if values.size == 0:
        log.warning("z-normalisation: no voxel > 0 in the ROI; intensities left unchanged")
        return x.copy()
    mean = values.mean()
    std = values.std(ddof=1) if values.size > 1 else 0.0
    if not std > 0:
        log.warning("z-normalisation: std of the voxels > 0 is 0; only the mean is subtracted")
        return (x - np.float32(mean)).astype(np.float32)
    return ((x - np.float32(mean)) / np.float32(std)).astype(np.float32)
