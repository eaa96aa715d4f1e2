"""Human-readable summaries of an image (for ``voxprompt info``)."""
from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

from .image import Image


def orientation_code(image: Image) -> str:
    """Three-letter orientation of the (i, j, k) = (x, y, z) axes, e.g. 'LPS' for identity.

    ITK's ``DICOMOrientImageFilter`` letters (ITK >= 5.2) name where each axis points TO as its index
    increases (identity direction in ITK's LPS world: i -> Left, j -> Posterior, k -> Superior), the
    convention of DICOM, nibabel's ``aff2axcodes`` and 3D Slicer. ITK's older ``SpatialOrientation``
    codes name where an axis comes FROM (the same image is 'RAI' there)."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        image.direction.ravel().tolist())


_WORDS = {"L": "left", "R": "right", "A": "anterior", "P": "posterior", "S": "superior", "I": "inferior"}
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}


def orientation_text(code: str) -> str:
    """``voxprompt info``'s orientation line: the code and the convention its letters follow."""
    if len(code) != 3 or any(c not in _WORDS for c in code):
        return f"{code} (oblique or unknown)"
    towards = ", ".join(f"{ax} -> patient {_WORDS[c]}" for ax, c in zip("ijk", code))
    old = "".join(_OPPOSITE[c] for c in code)
    return (f"{code} (letters name where each axis points TO as its index grows: {towards}; "
            f"as nibabel/DICOM, ITK DICOMOrientImageFilter; old ITK 'from' code: {old})")


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
