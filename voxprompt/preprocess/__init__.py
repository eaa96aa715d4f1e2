"""SAM-Med3D-style preprocessing: 1.5 mm canonical ROIs extracted crop-first.

ROI coordinates are in tensor-axis order (axis0 = R/x, axis1 = A/y, axis2 = S/z); original-image
indices are numpy (z, y, x). See :mod:`voxprompt.preprocess.roi`.
"""
from .grid import canonical_grid, io_orientation, resampled_grid_lps
from .normalize import zscore_positive
from .resample import (
                       extract_roi,
                       extract_roi_label,
                       extract_roi_labels,
                       roi_block_to_original,
                       roi_box_to_original,
                       roi_to_original,
                       sample_on_grid,
)
from .roi import Roi, roi_around, torchio_mask_start
from .sam_med3d import (
                       RoiInput,
                       canonical_shape_and_affine,
                       postprocess_mask,
                       preprocess_label_roi,
                       preprocess_roi,
                       resampled_label_bbox,
                       roi_for_label,
)

__all__ = ["Roi", "RoiInput", "roi_around", "roi_for_label", "extract_roi", "extract_roi_label", "extract_roi_labels",
           "roi_to_original", "roi_block_to_original", "roi_box_to_original",
           "zscore_positive", "preprocess_label_roi", "preprocess_roi",
           "postprocess_mask", "canonical_grid", "canonical_shape_and_affine", "io_orientation",
           "resampled_grid_lps", "resampled_label_bbox", "sample_on_grid", "torchio_mask_start"]
