"""Read 3D medical volumes (NIfTI, NRRD, MetaImage, DICOM series) with SimpleITK.

Every problem raises :class:`ImageReadError` (or :class:`InputError` for NaN/inf voxels, in every
format: SimpleITK's NIfTI reader turns them into 0, so NIfTI voxel data is scanned raw first) with a
one-line message naming the file; the header is validated before the voxel data is allocated. A
DICOM folder holding several series is read one series at a time (``series=``, CLI ``--series``:
a SeriesInstanceUID or a SeriesNumber; :func:`list_dicom_series` lists them).
"""
from __future__ import annotations

import gzip
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import ImageReadError, ImageTooLarge, InputError, UsageError
from .image import Image
from .paths import file_extension  # also imported from here by other modules

log = logging.getLogger(__name__)

SUPPORTED_READ_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
DEFAULT_MAX_VOXELS = 2**31


def _pixel_bytes(reader) -> int:
    """Bytes per component of the pixel type a reader declares (8 when unknown)."""
    try:
        name = sitk.GetPixelIDValueAsString(reader.GetPixelID()).lower()
    except (RuntimeError, AttributeError):
        return 8
    for key, n in (("64", 8), ("32", 4), ("16", 2), ("8", 1)):
        if key in name:
            return n
    return 8


def _check_header(reader, where: str, max_voxels: int, n_slices: int | None = None,
                  max_bytes: int | None = None) -> None:
    """Refuse 2D/4D, vector, empty or absurdly large images from header information only.

    ``n_slices``: for a DICOM series, the number of files (one slice each) read along z.
    ``max_bytes``: refuse (:class:`ImageTooLarge`) when the declared voxel data would need more bytes,
    before anything is decompressed or allocated (a small ``.nii.gz`` may expand to gigabytes).
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
    if max_bytes is not None:
        nbytes = voxels * _pixel_bytes(reader)
        if nbytes > max_bytes:
            raise ImageTooLarge(f"{where}: header declares {size} voxels = {nbytes / 2**20:.1f} MiB of voxel "
                                f"data, above the limit of {max_bytes / 2**20:.1f} MiB; refusing to read it")


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


def _nifti_layout(hdr: bytes) -> tuple[str, int, int, int, int]:
    """(byte order, datatype code, bits per voxel, voxel data offset, voxel count) of a NIfTI-1/2 header."""
    if struct.unpack("<i", hdr[:4])[0] in (348, 540):
        endian = "<"
    else:
        endian = ">"
    if struct.unpack(endian + "i", hdr[:4])[0] == 540:  # NIfTI-2
        dims = struct.unpack(endian + "8q", hdr[16:80])
        datatype, bitpix = struct.unpack(endian + "2h", hdr[12:16])
        offset = struct.unpack(endian + "q", hdr[168:176])[0]
    else:
        dims = struct.unpack(endian + "8h", hdr[40:56])
        datatype, bitpix = struct.unpack(endian + "2h", hdr[70:74])
        offset = int(struct.unpack(endian + "f", hdr[108:112])[0])
    n = int(np.prod([max(1, d) for d in dims[1:1 + max(1, min(dims[0], 7))]], dtype=np.float64))
    return endian, int(datatype), int(bitpix), int(offset), n


def _nifti_expected_bytes(hdr: bytes) -> int:
    """Header + voxel bytes that a NIfTI-1/2 file with this header must contain."""
    _, _, bitpix, offset, n = _nifti_layout(hdr)
    return offset + n * max(bitpix, 8) // 8


NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 / float64 voxels


def _nifti_nonfinite(path: Path, compressed: bool) -> int:
    """NaN/inf voxels in the raw voxel data of a float NIfTI (0 for integer data).

    SimpleITK's NIfTI reader returns 0 for them, so they are counted here, before it reads the file,
    in chunks of 4 MB (no full-size copy)."""
    opener = gzip.open if compressed else open
    with opener(path, "rb") as fh:
        endian, datatype, _, offset, n = _nifti_layout(fh.read(540))
        if datatype not in NIFTI_FLOAT_TYPES:
            return 0
        dtype = np.dtype(endian + NIFTI_FLOAT_TYPES[datatype])
        fh.seek(offset)
        bad, left, chunk = 0, n, max(1, (1 << 22) // dtype.itemsize)
        while left > 0:
            buf = fh.read(min(chunk, left) * dtype.itemsize)
            if len(buf) < dtype.itemsize:
                break
            values = np.frombuffer(buf[:len(buf) - len(buf) % dtype.itemsize], dtype=dtype)
            bad += int(np.count_nonzero(~np.isfinite(values)))
            left -= values.size
    return bad


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
    with gzip.open(path, "rb") as fh:  # streamed, and only as far as the header says the data goes
        while total < expected and (chunk := fh.read(min(1 << 22, expected - total))):
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


def _read_file(path: Path, max_voxels: int, max_bytes: int | None = None) -> Image:
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
    _check_header(reader, str(path), max_voxels, max_bytes=max_bytes)
    try:
        complete = ext not in (".nii", ".nii.gz") or _nifti_complete(path, ext == ".nii.gz")
    except (EOFError, OSError, zlib.error, struct.error):
        complete = False
    if not complete:
        raise ImageReadError(f"{path}: truncated or corrupt compressed data")
    if ext in (".nii", ".nii.gz"):
        try:
            bad = _nifti_nonfinite(path, ext == ".nii.gz")
        except (EOFError, OSError, zlib.error, struct.error) as err:
            raise ImageReadError(f"{path}: truncated or corrupt voxel data ({type(err).__name__})") from None
        if bad:
            raise InputError(f"{path}: {bad} voxel(s) are NaN or infinite")
    try:
        img = reader.Execute()
    except (RuntimeError, MemoryError) as err:
        raise ImageReadError(f"{path}: truncated or corrupt voxel data ({_short(err)})") from None
    return _to_image(img, path, ext == ".dcm", [str(path)] if ext == ".dcm" else [])


@dataclass(frozen=True)
class DicomSeries:
    """One series of a DICOM folder, from the header of its first file."""

    uid: str  # SeriesInstanceUID
    number: int | None  # SeriesNumber, None when absent
    description: str  # SeriesDescription, "" when absent
    files: tuple[str, ...]
    size_xyz: tuple[int, int, int]  # columns, rows, slices

    @property
    def slices(self) -> int:
        return len(self.files)

    def summary(self) -> str:
        number = "no number" if self.number is None else f"#{self.number}"
        desc = f" '{self.description}'" if self.description else ""
        return f"{self.uid} ({number}{desc}, {self.slices} slices, {'x'.join(map(str, self.size_xyz))})"


def _series_header(path: Path, uid: str, names: list[str]) -> DicomSeries:
    info = sitk.ImageFileReader()
    info.SetFileName(names[0])
    try:
        info.ReadImageInformation()
    except RuntimeError as err:
        raise ImageReadError(f"{names[0]}: unreadable DICOM header ({_short(err)})") from None

    def tag(key: str) -> str:
        return info.GetMetaData(key).strip() if info.HasMetaDataKey(key) else ""

    number = tag("0020|0011")
    size = list(info.GetSize()) + [1]
    return DicomSeries(uid, int(number) if number.lstrip("-").isdigit() else None, tag("0008|103e"),
                       tuple(names), (int(size[0]), int(size[1]), len(names) * int(size[2])))


SeriesChoice = str | int | DicomSeries | None


def list_dicom_series(path: str | os.PathLike) -> list[DicomSeries]:
    """The DICOM series of a folder (UID, number, description, files, size), by series number."""
    p = Path(path)
    if not p.is_dir():
        raise ImageReadError(f"{p}: not a folder (DICOM series are listed for a folder)")
    try:
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p))
    except RuntimeError as err:
        raise ImageReadError(f"{p}: cannot scan folder for DICOM ({_short(err)})") from None
    if not ids:
        raise ImageReadError(f"{p}: folder contains no DICOM series")
    out = [_series_header(p, sid, list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p), sid))) for sid in ids]
    return sorted(out, key=lambda s: (s.number is None, s.number or 0, s.uid))


def choose_series(path: str | os.PathLike, found: list[DicomSeries], series: SeriesChoice = None,
                  warn: bool = True) -> DicomSeries:
    """The series named by ``series`` (SeriesInstanceUID or SeriesNumber), else the one with most slices
    (with a warning when there are several, unless ``warn=False``).

    An unknown or ambiguous choice raises UsageError listing the series of the folder."""
    if isinstance(series, DicomSeries):
        return series
    listing = "; ".join(s.summary() for s in found)
    if series is None:
        chosen = max(found, key=lambda s: s.slices)
        if len(found) > 1 and warn:
            log.warning("%s: %d DICOM series found; using the largest, %s; choose another with --series UID|NUMBER "
                        "(read_image(..., series=)); all: %s", path, len(found), chosen.uid, listing)
        return chosen
    text = str(series).strip()
    hits = [s for s in found if s.uid == text]
    if not hits and text.lstrip("-").isdigit():
        hits = [s for s in found if s.number == int(text)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise UsageError(f"{path}: series number {text} is ambiguous ({len(hits)} series have it); give the UID: "
                         + "; ".join(s.summary() for s in hits))
    raise UsageError(f"{path}: no DICOM series {text!r} (a SeriesInstanceUID or SeriesNumber); the folder holds: "
                     f"{listing}")


def _read_dicom_dir(path: Path, max_voxels: int, series: SeriesChoice = None,
                    max_bytes: int | None = None) -> Image:
    chosen = series if isinstance(series, DicomSeries) else choose_series(path, list_dicom_series(path), series)
    names = list(chosen.files)
    info = sitk.ImageFileReader()
    info.SetFileName(names[0])
    try:
        info.ReadImageInformation()
    except RuntimeError as err:
        raise ImageReadError(f"{names[0]}: unreadable DICOM header ({_short(err)})") from None
    _check_header(info, str(path), max_voxels, n_slices=len(names), max_bytes=max_bytes)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    try:
        img = reader.Execute()
    except (RuntimeError, MemoryError) as err:
        raise ImageReadError(f"{path}: cannot read DICOM series {chosen.uid} ({_short(err)})") from None
    return _to_image(img, path, True, names)


def _short(err: Exception) -> str:
    """Last meaningful line of an ITK exception (they span many lines)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(err).__name__)[:200]


def read_image(path: str | os.PathLike, max_voxels: int = DEFAULT_MAX_VOXELS, series: SeriesChoice = None,
               max_bytes: int | None = None) -> Image:
    """Read a 3D scalar volume file or DICOM series folder; validates before allocating.

    ``series`` (DICOM folders only): the SeriesInstanceUID or SeriesNumber to read (or a
    :class:`DicomSeries` from :func:`list_dicom_series`); by default the series with most slices (with
    a warning when the folder holds several). An unknown series raises
    :class:`~voxprompt.errors.UsageError` listing those of the folder. ``max_bytes``: the largest voxel
    data (bytes, from the header) to read; above it :class:`~voxprompt.errors.ImageTooLarge` is raised
    before any voxel data is decompressed or allocated."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: file not found")
    if series is not None and not p.is_dir():
        raise UsageError(f"{p}: series {series!r} chooses a series of a DICOM folder; {p} is a single file")
    image = (_read_dicom_dir(p, max_voxels, series, max_bytes) if p.is_dir()
             else _read_file(p, max_voxels, max_bytes))
    _check_finite(image.array, str(p))
    log.debug("read %s: shape %s spacing %s", p, image.shape, image.spacing)
    return image
