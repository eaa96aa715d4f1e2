"""Crop-then-resample between an original image and a ROI, touching only the needed sub-block.

Both directions use SimpleITK's ``Resample`` (the same ITK interpolators torchio calls), so values
equal those of resampling the whole volume first: linear for images, nearest for labels, 0 outside.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.image import LPS_TO_RAS, Image, apply_affine
from .roi import Roi, _translate

_MARGIN = 2  # original voxels kept around the needed block (linear interpolation needs 1)

_CORNERS = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=float)


def _box_corners(lo, hi, pad: float) -> np.ndarray:
    """8 corners of the voxel-centre box [lo, hi-1], widened by ``pad`` voxels."""
    lo = np.asarray(lo, float) - pad
    hi = np.asarray(hi, float) - 1 + pad
    return lo + _CORNERS * (hi - lo)


def _sub_block(points_zyx: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray] | None:
    """Integer [lo, hi) box of ``shape`` covering continuous points plus a margin, or None."""
    lo = np.floor(points_zyx.min(axis=0)).astype(int) - _MARGIN
    hi = np.ceil(points_zyx.max(axis=0)).astype(int) + _MARGIN + 1
    lo, hi = np.maximum(lo, 0), np.minimum(hi, shape)
    return None if np.any(hi <= lo) else (lo, hi)


def _lps_geometry(affine_lps: np.ndarray):
    """SimpleITK (origin, spacing, direction) of a grid whose sitk index (i, j, k) = affine axes."""
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    direction = affine_lps[:3, :3] / spacing
    return affine_lps[:3, 3].tolist(), spacing.tolist(), direction.ravel().tolist()


def _sitk_from_axes(array: np.ndarray, affine_lps: np.ndarray) -> sitk.Image:
    """sitk image from an array indexed like ``affine_lps``'s columns (axis0 = sitk i)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    origin, spacing, direction = _lps_geometry(affine_lps)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    return img


def _resample(src: sitk.Image, shape, affine_lps: np.ndarray, interp: int, pixel: int) -> np.ndarray:
    """Resample ``src`` onto a grid (index in affine-column order) and return it in that order."""
    origin, spacing, direction = _lps_geometry(affine_lps)
    out = sitk.Resample(src, [int(n) for n in shape], sitk.Transform(), interp, origin, spacing,
                        direction, 0.0, pixel)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def sample_on_grid(image: Image, array_zyx: np.ndarray, shape, affine_ras: np.ndarray,
                   nearest: bool = False, label_dtype: type = np.uint8) -> np.ndarray:
    """Sample an original-grid array on a target grid (index -> RAS ``affine_ras``), crop first.

    Returns float32 (linear) or ``label_dtype`` (nearest; uint8 unless label ids need more) of
    ``shape``, in the target's axis order. Linear resampling runs in the array's own pixel type,
    like torchio (integer images are truncated towards zero by ITK), and is converted to float32
    afterwards.
    """
    shape = tuple(int(n) for n in shape)
    dtype = label_dtype if nearest else np.float32
    if min(shape) <= 0:
        return np.zeros(shape, dtype)
    src_lps = image.affine_zyx_to_lps()
    corners_lps = apply_affine(LPS_TO_RAS @ affine_ras, _box_corners(np.zeros(3), shape, 0.5))
    box = _sub_block(apply_affine(np.linalg.inv(src_lps), corners_lps), image.shape)
    if box is None:
        return np.zeros(shape, dtype)
    (z0, y0, x0), (z1, y1, x1) = box
    sub = array_zyx[z0:z1, y0:y1, x0:x1]
    if nearest or sub.dtype == np.bool_ or sub.dtype == np.float16:
        sub = sub.astype(dtype)
    sub_img = sitk.GetImageFromArray(np.ascontiguousarray(sub))
    sub_img.SetSpacing(image.spacing)
    sub_img.SetDirection(image.direction.ravel().tolist())
    sub_img.SetOrigin(apply_affine(src_lps, np.array([z0, y0, x0], float)).tolist())
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = _resample(sub_img, shape, LPS_TO_RAS @ affine_ras, interp, sub_img.GetPixelID())
    return out.astype(dtype, copy=False)


def _extract(image: Image, array_zyx: np.ndarray, roi: Roi, nearest: bool,
             label_dtype: type = np.uint8) -> np.ndarray:
    if array_zyx.shape != image.shape:
        raise InputError(f"array shape {array_zyx.shape} does not match the image {image.shape}")
    out = np.zeros(roi.size, label_dtype if nearest else np.float32)
    lo, hi = roi.valid_box()
    if np.all(hi > lo):
        part = sample_on_grid(image, array_zyx, hi - lo, roi.affine @ _translate(lo), nearest, label_dtype)
        out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = part
    return out


def extract_roi(image: Image, roi: Roi) -> np.ndarray:
    """Raw intensities in the ROI (float32, ``roi.size``, tensor-axis order); padding is 0."""
    return _extract(image, image.array, roi, nearest=False)


def extract_roi_label(image: Image, label_zyx: np.ndarray, roi: Roi) -> np.ndarray:
    """Nearest-neighbour ROI of a binary label on ``image``'s grid (uint8 0/1)."""
    return _extract(image, (np.asarray(label_zyx) != 0), roi, nearest=True)


def extract_roi_labels(image: Image, labels_zyx: np.ndarray, roi: Roi) -> np.ndarray:
    """Nearest-neighbour ROI of a whole integer label map on ``image``'s grid (int32, ``roi.size``,
    tensor-axis order; 0 outside the image)."""
    return _extract(image, np.asarray(labels_zyx, dtype=np.int32), roi, nearest=True, label_dtype=np.int32)


def roi_to_original(mask_roi: np.ndarray, roi: Roi, image: Image | None = None) -> np.ndarray:
    """Map a ROI mask back to the original (z, y, x) grid by nearest neighbour (uint8 0/1).

    Only the original sub-block the ROI covers is resampled; everything else is 0.
    """
    shape = roi.source_shape if image is None else image.shape
    out = np.zeros(shape, np.uint8)
    box, part = roi_block_to_original(mask_roi, roi, image)
    if box is not None:
        out[box] = part
    return out


def roi_box_to_original(roi: Roi, lo, hi, image: Image | None = None) -> tuple[slice, slice, slice] | None:
    """The original (z, y, x) sub-block that ROI voxels ``lo`` .. ``hi - 1`` (ROI indices, tensor-axis
    order) map back onto by nearest neighbour, with a small margin; None when it misses the image.
    Original voxels outside it take no value from those ROI voxels."""
    src_aff = roi.source_affine_lps if image is None else image.affine_zyx_to_lps()
    shape = roi.source_shape if image is None else image.shape
    corners = apply_affine(roi.affine_lps, _box_corners(lo, hi, 0.5))
    sub = _sub_block(apply_affine(np.linalg.inv(src_aff), corners), shape)
    return None if sub is None else tuple(slice(int(a), int(b)) for a, b in zip(*sub))


def roi_block_to_original(mask_roi: np.ndarray, roi: Roi, image: Image | None = None,
                          box: tuple[slice, slice, slice] | None = None,
                          ) -> tuple[tuple[slice, slice, slice] | None, np.ndarray]:
    """:func:`roi_to_original` restricted to the original sub-block the ROI covers: ``(box, part)``
    with ``roi_to_original(...)[box] == part`` and zeros outside ``box`` (``(None, empty)`` when the
    ROI misses the image). A click on a large volume then never touches the whole grid. ``box``:
    resample onto this original sub-block instead (any box; voxels the ROI misses are 0)."""
    mask = np.asarray(mask_roi)
    if mask.shape != tuple(roi.size):
        raise InputError(f"ROI mask shape {mask.shape} differs from the ROI size {tuple(roi.size)}")
    if box is None:
        box = roi_box_to_original(roi, np.zeros(3), roi.size, image)
        if box is None:
            return None, np.zeros((0, 0, 0), np.uint8)
    src_aff = roi.source_affine_lps if image is None else image.affine_zyx_to_lps()
    lo = np.array([b.start for b in box])
    size = np.array([b.stop - b.start for b in box])
    roi_img = _sitk_from_axes((mask != 0).astype(np.uint8), roi.affine_lps)
    target = src_aff @ _translate(lo)[:, [2, 1, 0, 3]]  # sitk index (x, y, z) of the sub-block
    part = _resample(roi_img, size[::-1], target, sitk.sitkNearestNeighbor, sitk.sitkUInt8)
    return box, part.transpose(2, 1, 0)
