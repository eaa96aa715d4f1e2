"""Writers of small 2D test files (DICOM single/multi-frame, TIFF) shared by the 2D tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_dicom(path: Path, pixels: np.ndarray, slope: float = 1.0, intercept: float = -1024.0,
                spacing: tuple[float, float] = (0.7, 0.8), thickness: float = 2.5, modality: str = "CT",
                photometric: str = "MONOCHROME2") -> Path:
    """A minimal uncompressed CT-like DICOM: (H, W) single frame or (F, H, W) multi-frame uint16."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    arr = np.asarray(pixels, dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName = modality, "Test^Phantom"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    if arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelSpacing, ds.SliceThickness = list(spacing), thickness
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def phantom(h: int = 60, w: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) uint8 grey image with a bright ellipse, and the ellipse mask."""
    yy, xx = np.indices((h, w))
    mask = ((yy - h * 0.45) / (h * 0.25)) ** 2 + ((xx - w * 0.55) / (w * 0.2)) ** 2 <= 1
    img = np.random.default_rng(seed).normal(60, 8, (h, w)) + 120 * mask
    return np.clip(img, 0, 255).astype(np.uint8), mask
