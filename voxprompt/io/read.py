"""Read 3D medical volumes (NIfTI, NRRD, MetaImage, DICOM series) with SimpleITK.

Every problem raises :class:`ImageReadError` (or :class:`InputError` for NaN/inf voxels) with a
one-line message naming the file; the header is validated before the voxel data is allocated.
"""
from __future__ import annotations

import gzip
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import ImageReadError, InputError
from .image import Image
from .paths import file_extension  # also imported from here by other modules

log = logging.getLogger(__name__)

SUPPORTED_READ_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
DEFAULT_MAX_VOXELS = 2**31


def _check_header(reader, where: str, max_voxels: int, n_slices: int | None = None) -> None:
    """Refuse 2D/4D, vector, empty or absurdly large images from header information only.

    ``n_slices``: for a DICOM series, the number of files (one slice each) read along z.
    """
    dim = reader.GetDimension()
    size = list(reader.GetSize())
    if n_slices is not None and n_slices > 1:
        size, dim = size[:2] + [n_slices * (size[2] if len(size) > 2 else 1)], 3
    if dim == 4 and size[3] == 1:
        size = size[:3]
    elif dim == 4:
        raise ImageReadError(f"{where}: 4D image (size {size}, e.g. a time series) is not supported; "
                             "extract one 3D volume first")
    elif dim != 3:
        raise ImageReadError(f"{where}: {dim}D image (size {size}) is not a 3D volume")
    comps = reader.GetNumberOfComponents()
    if comps != 1:
        raise ImageReadError(f"{where}: multi-component image ({comps} components per voxel, e.g. "
                             "RGB or vector field) is not supported; expected one scalar per voxel")
    if any(n <= 0 for n in size):
        raise ImageReadError(f"{where}: header declares an empty image (size {size})")
    voxels = int(np.prod(np.asarray(size, dtype=np.float64)))
    if voxels > max_voxels:
        raise ImageReadError(f"{where}: header declares {size} = {voxels:,} voxels, above the limit "
                             f"of {max_voxels:,}; refusing to allocate it")


def _check_finite(array: np.ndarray, where: str) -> None:
    """Raise InputError on NaN/inf voxels, scanning slab by slab to bound memory."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = 0
    step = max(1, (1 << 24) // max(1, array[0].size))
    for z in range(0, array.shape[0], step):
        bad += int(np.count_nonzero(~np.isfinite(array[z:z + step])))
    if bad:
        raise InputError(f"{where}: {bad} voxel(s) are NaN or infinite")


def _nifti_expected_bytes(hdr: bytes) -> int:
    """Header + voxel bytes that a NIfTI-1/2 file with this header must contain."""
    if struct.unpack("<i", hdr[:4])[0] in (348, 540):
        endian = "<"
    else:
        endian = ">"
    if struct.unpack(endian + "i", hdr[:4])[0] == 540:  # NIfTI-2
        dims = struct.unpack(endian + "8q", hdr[16:80])
        bitpix = struct.unpack(endian + "h", hdr[14:16])[0]
        offset = struct.unpack(endian + "q", hdr[168:176])[0]
    else:
        dims = struct.unpack(endian + "8h", hdr[40:56])
        bitpix = struct.unpack(endian + "h", hdr[72:74])[0]
        offset = int(struct.unpack(endian + "f", hdr[108:112])[0])
    n = int(np.prod([max(1, d) for d in dims[1:1 + max(1, min(dims[0], 7))]], dtype=np.float64))
    return int(offset) + n * max(int(bitpix), 8) // 8


def _nifti_complete(path: Path, compressed: bool) -> bool:
    """Whether a NIfTI file holds all its voxel bytes (ITK silently zero-fills truncated files).

    For .nii.gz the gzip trailer (size mod 2**32) is the fast path, else the stream is decompressed.
    """
    opener = gzip.open if compressed else open
    with opener(path, "rb") as fh:
        hdr = fh.read(540)
    if len(hdr) < 348:
        return False
    expected = _nifti_expected_bytes(hdr)
    if not compressed:
        return path.stat().st_size >= expected
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        if struct.unpack("<I", fh.read(4))[0] == expected % 2**32:
            return True
    total = 0
    with gzip.open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            total += len(chunk)
    return total >= expected


def _to_image(img: sitk.Image, path: Path, is_dicom: bool, files: list[str]) -> Image:
    if img.GetDimension() == 4:  # 4D with a single time point, accepted by _check_header
        img = img[:, :, :, 0]
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing, origin = img.GetSpacing(), img.GetOrigin()
    array = sitk.GetArrayFromImage(img)
    del img
    return Image(array=array, spacing=spacing, origin=origin, direction=direction,
                 source_path=path, is_dicom=is_dicom, dicom_files=files)


def _read_file(path: Path, max_voxels: int) -> Image:
    ext = file_extension(path)
    if ext not in SUPPORTED_READ_EXTENSIONS:
        raise ImageReadError(f"{path}: unsupported image extension {ext or '(none)'!r}; expected "
                             f"one of {', '.join(SUPPORTED_READ_EXTENSIONS)} or a DICOM folder")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise ImageReadError(f"{path}: unreadable or corrupt header ({_short(err)})") from None
    _check_header(reader, str(path), max_voxels)
    try:
        complete = ext not in (".nii", ".nii.gz") or _nifti_complete(path, ext == ".nii.gz")
    except (EOFError, OSError, zlib.error, struct.error):
        complete = False
    if not complete:
        raise ImageReadError(f"{path}: truncated or corrupt compressed data")
    try:
        img = reader.Execute()
    except (RuntimeError, MemoryError) as err:
        raise ImageReadError(f"{path}: truncated or corrupt voxel data ({_short(err)})") from None
    return _to_image(img, path, ext == ".dcm", [str(path)] if ext == ".dcm" else [])


def _read_dicom_dir(path: Path, max_voxels: int) -> Image:
    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    except RuntimeError as err:
        raise ImageReadError(f"{path}: cannot scan folder for DICOM ({_short(err)})") from None
    if not series:
        raise ImageReadError(f"{path}: folder contains no DICOM series")
    files = {sid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), sid)) for sid in series}
    chosen = max(series, key=lambda sid: len(files[sid]))
    if len(series) > 1:
        log.warning("%s: %d DICOM series found; using the largest, %s (%d files); others: %s", path,
                    len(series), chosen, len(files[chosen]),
                    ", ".join(f"{s} ({len(files[s])})" for s in series if s != chosen))
    names = files[chosen]
    info = sitk.ImageFileReader()
    info.SetFileName(names[0])
    try:
        info.ReadImageInformation()
    except RuntimeError as err:
        raise ImageReadError(f"{names[0]}: unreadable DICOM header ({_short(err)})") from None
    _check_header(info, str(path), max_voxels, n_slices=len(names))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    try:
        img = reader.Execute()
    except (RuntimeError, MemoryError) as err:
        raise ImageReadError(f"{path}: cannot read DICOM series {chosen} ({_short(err)})") from None
    return _to_image(img, path, True, names)


def _short(err: Exception) -> str:
    """Last meaningful line of an ITK exception (they span many lines)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(err).__name__)[:200]


def read_image(path: str | os.PathLike, max_voxels: int = DEFAULT_MAX_VOXELS) -> Image:
    """Read a 3D scalar volume file or DICOM series folder; validates before allocating."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: file not found")
    image = _read_dicom_dir(p, max_voxels) if p.is_dir() else _read_file(p, max_voxels)
    _check_finite(image.array, str(p))
    log.debug("read %s: shape %s spacing %s", p, image.shape, image.spacing)
    return image
