"""A model-input ROI: a sub-block of the virtual canonical (RAS+) resampled grid.

ROI voxel coordinates are in *tensor-axis order*: ``roi_array[a0, a1, a2]`` with axis0 = R/x,
axis1 = A/y, axis2 = S/z (for an axis-aligned image), exactly SAM-Med3D's click order. Original
image indices are numpy (z, y, x) order, as everywhere in :mod:`voxprompt.io`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import PromptError
from ..io.image import LPS_TO_RAS, Image, apply_affine
from .grid import _parse_triplet, canonical_grid


def _translate(offset) -> np.ndarray:
    t = np.eye(4)
    t[:3, 3] = offset
    return t


@dataclass(eq=False)
class Roi:
    """ROI of ``size`` voxels starting at ``start`` (may be negative) in the canonical grid.

    Voxels outside ``[0, grid_shape)`` are padding (value 0), as torchio's CropOrPad pads.
    """

    start: tuple[int, int, int]
    size: tuple[int, int, int]
    grid_shape: tuple[int, int, int]
    grid_affine: np.ndarray  # canonical grid index -> RAS mm
    source_affine_lps: np.ndarray  # original numpy (z, y, x) index -> LPS mm
    source_shape: tuple[int, int, int]

    @property
    def affine(self) -> np.ndarray:
        """4x4: ROI voxel index (tensor-axis order) -> world RAS mm (SAM-Med3D's roi_affine)."""
        return self.grid_affine @ _translate(self.start)

    @property
    def affine_lps(self) -> np.ndarray:
        """4x4: ROI voxel index -> world LPS mm."""
        return LPS_TO_RAS @ self.affine

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.grid_affine[:3, :3], axis=0))

    def valid_box(self) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi) in ROI indices of the part inside the resampled grid (the rest is padding)."""
        start, size, shape = (np.asarray(v) for v in (self.start, self.size, self.grid_shape))
        lo = np.clip(-start, 0, size)
        hi = np.clip(shape - start, lo, size)
        return lo, hi

    def padding(self) -> tuple[int, ...]:
        """torchio-style (ini0, fin0, ini1, fin1, ini2, fin2) padding of the ROI."""
        lo, hi = self.valid_box()
        return tuple(int(v) for pair in zip(lo, np.asarray(self.size) - hi) for v in pair)

    def world_to_roi(self, points_mm, frame: str = "RAS") -> np.ndarray:
        """World mm (``frame``) -> continuous ROI coordinates (tensor-axis order)."""
        aff = self.affine if frame.upper() == "RAS" else self.affine_lps
        return apply_affine(np.linalg.inv(aff), points_mm)

    def roi_to_world(self, points_roi, frame: str = "RAS") -> np.ndarray:
        """Continuous ROI coordinates (tensor-axis order) -> world mm (``frame``)."""
        return apply_affine(self.affine if frame.upper() == "RAS" else self.affine_lps, points_roi)

    def from_original_index(self, points_zyx) -> np.ndarray:
        """Original-array index (z, y, x), shape (3,) or (N, 3) -> float ROI coordinates."""
        world = apply_affine(self.source_affine_lps, points_zyx)
        return self.world_to_roi(world, frame="LPS")

    def to_original_index(self, points_roi) -> np.ndarray:
        """Float ROI coordinates (tensor-axis order) -> float original-array index (z, y, x)."""
        world = self.roi_to_world(points_roi, frame="LPS")
        return apply_affine(np.linalg.inv(self.source_affine_lps), world)

    def contains(self, points_roi) -> np.ndarray:
        """Whether ROI coordinates round to a voxel inside the ROI."""
        idx = np.floor(np.asarray(points_roi, dtype=float) + 0.5)
        return np.all((idx >= 0) & (idx < np.asarray(self.size)), axis=-1)


def _make_roi(image: Image, start, size, spacing) -> Roi:
    shape, aff = canonical_grid(image, spacing)
    return Roi(start=tuple(int(s) for s in start), size=size, grid_shape=shape, grid_affine=aff,
               source_affine_lps=image.affine_zyx_to_lps(), source_shape=image.shape)


def roi_around(image: Image, center_zyx, size=128, spacing=1.5) -> Roi:
    """ROI whose voxel ``size // 2`` contains the original-array point ``center_zyx`` (z, y, x)."""
    size = _parse_triplet(size, "size", int)
    center = np.asarray(center_zyx, dtype=float)
    if center.shape != (3,) or not np.all(np.isfinite(center)):
        raise PromptError(f"ROI centre must be three finite numbers (z, y, x), got {center_zyx!r}")
    shape, aff = canonical_grid(image, spacing)
    c = apply_affine(np.linalg.inv(aff), image.index_to_world(center, frame="RAS"))
    start = np.floor(c + 0.5).astype(int) - np.asarray(size) // 2
    return _make_roi(image, start, size, spacing)


def torchio_mask_start(bb_min, bb_max, size) -> np.ndarray:
    """Start index of torchio CropOrPad(mask_name=...) for a bbox [bb_min, bb_max) (0.20.x rule)."""
    starts = []
    for lo, hi, target in zip(bb_min, bb_max, size):
        center = (lo + hi) / 2
        if (target % 2 == 0) ^ (center % 1 == 0):
            center -= 0.5  # torchio's half-voxel approximation
        starts.append(int(center - target / 2))
    return np.asarray(starts)
