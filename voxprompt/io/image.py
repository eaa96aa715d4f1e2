"""In-memory 3D image with its physical geometry.

Axis convention (read this once, it matters everywhere):

* ``Image.array`` is what ``sitk.GetArrayFromImage`` returns: numpy axes are **(z, y, x)**, which
  are SimpleITK's index components **(k, j, i)** in reverse order.
* ``spacing`` and ``origin`` are SimpleITK's, i.e. in **(x, y, z)** = (i, j, k) order; ``direction``
  is SimpleITK's 3x3 direction cosine matrix (column n = world direction of index axis i/j/k).
* What 3D Slicer / ITK-SNAP display as "IJK" is (i, j, k) = (x, y, z), i.e. the *reverse* of the
  numpy order used by every index-taking function here.
* World coordinates are millimetres in LPS (ITK/DICOM) unless ``frame='RAS'`` (NIfTI/Slicer) is
  asked for; RAS = diag(-1, -1, 1) @ LPS.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SLICE_AXES = {"i": 2, "j": 1, "k": 0}  # a slice direction named in IJK -> its numpy (z, y, x) axis


def _frame_matrix(frame: str) -> np.ndarray:
    frame = frame.upper()
    if frame == "LPS":
        return np.eye(4)
    if frame == "RAS":
        return LPS_TO_RAS
    raise UsageError(f"unknown world frame {frame!r}; use 'LPS' or 'RAS'")


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 affine to points of shape (3,) or (N, 3); returns float64 of the same shape."""
    pts = np.asarray(points, dtype=np.float64)
    flat = pts.reshape(-1, 3)
    out = flat @ affine[:3, :3].T + affine[:3, 3]
    return out.reshape(pts.shape)


def geometry_affine_zyx(spacing, origin, direction) -> np.ndarray:
    """4x4 matrix mapping a numpy (z, y, x) index to world LPS mm, from SimpleITK geometry."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    m = d @ np.diag(np.asarray(spacing, dtype=np.float64))  # columns: i, j, k
    aff = np.eye(4)
    aff[:3, :3] = m[:, ::-1]  # columns reordered to k, j, i = numpy axes 0, 1, 2
    aff[:3, 3] = np.asarray(origin, dtype=np.float64)
    return aff


@dataclass
class Image:
    """A 3D scalar volume: numpy array in (z, y, x) order plus SimpleITK geometry."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    source_path: Path | None = None
    is_dicom: bool = False
    dicom_files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x)."""
        return tuple(int(n) for n in self.array.shape)

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        """SimpleITK size (x, y, z)."""
        return tuple(reversed(self.shape))

    def affine_zyx_to_lps(self) -> np.ndarray:
        """4x4: numpy index (k, j, i) = (z, y, x) -> world LPS mm."""
        return geometry_affine_zyx(self.spacing, self.origin, self.direction)

    def affine_zyx_to_ras(self) -> np.ndarray:
        """4x4: numpy index (z, y, x) -> world RAS mm."""
        return LPS_TO_RAS @ self.affine_zyx_to_lps()

    def index_to_world(self, points_zyx: np.ndarray, frame: str = "LPS") -> np.ndarray:
        """Continuous numpy indices (z, y, x), shape (3,) or (N, 3) -> world mm in ``frame``."""
        return apply_affine(_frame_matrix(frame) @ self.affine_zyx_to_lps(), points_zyx)

    def world_to_index(self, points_mm: np.ndarray, frame: str = "LPS") -> np.ndarray:
        """World mm in ``frame`` -> continuous numpy indices (z, y, x) (not rounded, not clipped)."""
        aff = np.linalg.inv(_frame_matrix(frame) @ self.affine_zyx_to_lps())
        return apply_affine(aff, points_mm)

    def to_sitk(self):
        """A SimpleITK image sharing this geometry (copies the array)."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(self.array)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction.ravel().tolist())
        return img
