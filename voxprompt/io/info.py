"""Human-readable summaries of an image (for ``voxprompt info``)."""
from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

from .image import Image


def orientation_code(image: Image) -> str:
    """Three-letter orientation of the (i, j, k) = (x, y, z) axes, e.g. 'LPS' for identity."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        image.direction.ravel().tolist())


def describe(image: Image) -> dict[str, Any]:
    """Shape, geometry and intensity statistics as plain Python values."""
    arr = image.array
    # float64 accumulation slab by slab: no full-size temporary
    total = sum(float(np.sum(arr[z], dtype=np.float64)) for z in range(arr.shape[0]))
    return {
        "path": str(image.source_path) if image.source_path else None,
        "is_dicom": image.is_dicom,
        "shape_zyx": list(image.shape),
        "size_xyz": list(image.size_xyz),
        "spacing_xyz_mm": [float(s) for s in image.spacing],
        "origin_lps_mm": [float(o) for o in image.origin],
        "direction": image.direction.round(6).tolist(),
        "orientation": orientation_code(image),
        "dtype": str(arr.dtype),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "mean": total / arr.size,
    }
