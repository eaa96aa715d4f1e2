"""SimpleITK-based image I/O. Arrays are (z, y, x); see :mod:`voxprompt.io.image`."""
from .dicom_seg import NotDicomError, write_dicom_seg
from .image import Image, apply_affine
from .info import describe, orientation_code
from .read import DEFAULT_MAX_VOXELS, SUPPORTED_READ_EXTENSIONS, read_image
from .write import SUPPORTED_WRITE_EXTENSIONS, write_mask

__all__ = ["Image", "apply_affine", "read_image", "write_mask", "write_dicom_seg", "NotDicomError",
           "describe", "orientation_code",
           "DEFAULT_MAX_VOXELS", "SUPPORTED_READ_EXTENSIONS", "SUPPORTED_WRITE_EXTENSIONS"]
