"""SimpleITK-based image I/O. Arrays are (z, y, x); see :mod:`voxprompt.io.image`.

The names below load their modules (and SimpleITK) on first use."""
from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from .dicom_seg import NotDicomError, write_dicom_seg
    from .image import Image, apply_affine
    from .info import describe, orientation_code
    from .read import DEFAULT_MAX_VOXELS, SUPPORTED_READ_EXTENSIONS, DicomSeries, list_dicom_series, read_image
    from .write import SUPPORTED_WRITE_EXTENSIONS, write_mask

__all__ = ["Image", "apply_affine", "read_image", "list_dicom_series", "DicomSeries", "write_mask", "write_dicom_seg",
           "NotDicomError",
           "describe", "orientation_code",
           "DEFAULT_MAX_VOXELS", "SUPPORTED_READ_EXTENSIONS", "SUPPORTED_WRITE_EXTENSIONS"]

__getattr__, __dir__ = lazy_attributes(__name__, {
    "NotDicomError": ".dicom_seg", "write_dicom_seg": ".dicom_seg",
    "Image": ".image", "apply_affine": ".image",
    "describe": ".info", "orientation_code": ".info",
    "DEFAULT_MAX_VOXELS": ".read", "SUPPORTED_READ_EXTENSIONS": ".read", "read_image": ".read",
    "list_dicom_series": ".read", "DicomSeries": ".read",
    "SUPPORTED_WRITE_EXTENSIONS": ".write", "write_mask": ".write",
})
