"""Volumes in and out of the server: uploads, ``--data-dir`` files, NIfTI bytes, file-voxel geometry.

Axis conventions: the Session holds SimpleITK's array, numpy order (z, y, x) = (k, j, i). A NIfTI
file written from it by SimpleITK has file voxel axes (i, j, k) and an affine mapping (i, j, k) to
RAS mm (:func:`nifti_affine`). Viewers that report a world position (NiiVue's ``mm``) convert it to
the file's (i, j, k) with the inverse affine (:func:`ras_to_file_ijk`), and the server turns that
into the array index with :func:`~voxprompt.session.from_slicer_ijk` (reverse the order).

DICOM: a series arrives as a zip (:func:`unzip_upload`); :func:`read_upload` keeps header-only copies of
the instances the volume was read from, so that a DICOM SEG can reference them later
(:func:`dicom_seg_bytes`) after the uploaded files are gone.
"""
from __future__ import annotations

import dataclasses
import io
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import VoxpromptError
from ..io.image import Image
from ..io.read import DEFAULT_MAX_VOXELS, SUPPORTED_READ_EXTENSIONS, file_extension, read_image
from ..io.write import write_mask
from .errors import BadRequest, TooLarge

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str | None, default: str = "upload") -> str:
    """A client-supplied file name reduced to a harmless base name (no folders, no dot files)."""
    base = os.path.basename(str(name or "").replace("\\", "/"))
    base = _SAFE.sub("_", base).lstrip(".")[:120]
    return base or default


MAX_ZIP_MEMBERS = 10000  # files in one uploaded zip (a DICOM series of up to this many slices)


@dataclass(frozen=True)
class Upload:
    """An uploaded volume, and header-only copies (no pixel data) of the DICOM instances it was read
    from, in the order of ``image.dicom_files`` (empty unless the upload was DICOM)."""

    image: Image
    dicom_headers: tuple[bytes, ...] = ()


def unzip_upload(name: str | None, data: bytes, max_bytes: int,
                 max_members: int = MAX_ZIP_MEMBERS) -> list[tuple[str, bytes]]:
    """The files of an uploaded zip (a DICOM series), checked before anything is decompressed: 400 for
    a corrupt or encrypted zip or one with no files, 413 when its files declare more than ``max_bytes``
    together or number more than ``max_members``. Folders, dot files and macOS resource forks are
    skipped; member names are only labels (:func:`read_uploaded` writes them under safe names)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in archive.infolist() if not i.is_dir()
                 and not any(part.startswith((".", "__MACOSX")) for part in i.filename.split("/"))]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as err:
        raise BadRequest(f"uploaded file {name!r} is not a readable zip ({err})") from None
    if not infos:
        raise BadRequest(f"uploaded zip {name!r} holds no files")
    if len(infos) > max_members:
        raise TooLarge(f"uploaded zip {name!r} holds {len(infos)} files, more than {max_members}")
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise TooLarge(f"uploaded zip {name!r} unpacks to {total / 2**20:.1f} MiB, more than this server's "
                       f"limit of {max_bytes / 2**20:.0f} MiB (--max-upload-mb)")
    out = []
    for info in infos:
        if info.flag_bits & 0x1:
            raise BadRequest(f"uploaded zip {name!r}: {info.filename} is encrypted")
        try:  # reads at most the declared size; a wrong CRC raises
            out.append((info.filename, archive.read(info)))
        except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError) as err:
            raise BadRequest(f"uploaded zip {name!r}: cannot unpack {info.filename} ({err})") from None
    return out


def read_uploaded(files: Sequence[tuple[str | None, bytes]], max_voxels: int = DEFAULT_MAX_VOXELS,
                  max_bytes: int | None = None) -> Image:
    """Read uploaded volume bytes: one file (NIfTI, NRRD, MHA, single DICOM) or a DICOM series.

    The bytes go to a private temporary folder under safe names, are read, and are deleted. Errors
    name the upload (the client's file name), never the temporary path. ``max_bytes``: the largest
    voxel data the header may declare; above it ImageTooLarge (413) is raised before anything is
    decompressed (a 1 MB ``.nii.gz`` can expand to gigabytes).
    """
    return read_upload(files, max_voxels, max_bytes, dicom_headers=False).image


def read_upload(files: Sequence[tuple[str | None, bytes]], max_voxels: int = DEFAULT_MAX_VOXELS,
                max_bytes: int | None = None, dicom_headers: bool = True) -> Upload:
    """:func:`read_uploaded`, keeping (``dicom_headers``) header-only copies of the DICOM instances read."""
    if not files:
        raise BadRequest("no file uploaded")
    tmp = Path(tempfile.mkdtemp(prefix="voxprompt-upload-"))
    try:
        paths, names = [], []
        for n, (name, data) in enumerate(files):
            fname = safe_filename(name, f"upload{n}")
            ext = file_extension(fname)
            if ext not in SUPPORTED_READ_EXTENSIONS and len(files) == 1:
                raise BadRequest(f"uploaded file {name!r}: unsupported type {ext or '(none)'}; use one of "
                                 f"{', '.join(SUPPORTED_READ_EXTENSIONS)} (or a zip of a DICOM series)")
            path = tmp / f"{n:05d}_{fname}"
            path.write_bytes(data)
            paths.append(path)
            names.append(name or fname)
        try:
            image = read_image(paths[0] if len(paths) == 1 else tmp, max_voxels=max_voxels, max_bytes=max_bytes)
        except VoxpromptError as exc:  # name the upload, not our temporary path
            msg = str(exc)
            for path, name in zip(paths, names):
                msg = msg.replace(str(path), f"upload {name!r}")
            raise type(exc)(msg.replace(str(tmp), "upload")) from None
        return Upload(image, dicom_header_copies(image) if dicom_headers else ())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def dicom_header_copies(image: Image) -> tuple[bytes, ...]:
    """The DICOM files ``image`` was read from, without their pixel data (what a SEG needs to reference
    them), in the order of ``image.dicom_files``; empty for an image not read from DICOM."""
    import pydicom

    if not image.is_dicom:
        return ()
    out = []
    for path in image.dicom_files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as err:  # pydicom raises many types for a bad file
            raise BadRequest(f"DICOM instance {Path(path).name!r}: unreadable header ({err})") from None
        buf = io.BytesIO()
        ds.save_as(buf)
        out.append(buf.getvalue())
    return tuple(out)


def dicom_seg_bytes(labels: np.ndarray, image: Image, dicom_headers: Sequence[bytes], names: Mapping[int, str],
                    model_name: str) -> bytes:
    """A label map (z, y, x) on a DICOM ``image`` as a DICOM SEG with one segment per label in ``names``
    (label value -> segment label), referencing the instances whose headers :func:`read_upload` kept."""
    from ..io.dicom_seg import NotDicomError, write_dicom_seg

    if not image.is_dicom or not dicom_headers:
        raise NotDicomError("a DICOM SEG needs a DICOM input (a zip of the series or a .dcm file); this volume "
                            "was not DICOM: save the labels as NIfTI instead")
    tmp = Path(tempfile.mkdtemp(prefix="voxprompt-seg-"))
    try:
        files = []
        for n, data in enumerate(dicom_headers):
            files.append(str(tmp / f"{n:05d}.dcm"))
            Path(files[-1]).write_bytes(data)
        source = dataclasses.replace(image, dicom_files=files)
        out = write_dicom_seg(labels, tmp, tmp / "seg.dcm", image=source, segments=names,
                              model_name=model_name, algorithm_type="SEMIAUTOMATIC")
        return out.read_bytes()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def grid_labels(label_in: Image, image: Image) -> np.ndarray:
    """The values of a client's label file ``label_in`` on ``image``'s grid; 400 when the grids differ."""
    if label_in.shape != image.shape:
        raise BadRequest(f"the label file has size {list(label_in.shape[::-1])} (I, J, K) but the image has "
                         f"{list(image.shape[::-1])}: send the label on the image's grid")
    if not (np.allclose(label_in.spacing, image.spacing, rtol=1e-3, atol=1e-4)
            and np.allclose(label_in.origin, image.origin, rtol=0, atol=1e-2 * min(image.spacing))
            and np.allclose(label_in.direction, image.direction, atol=1e-3)):
        raise BadRequest("the label file's spacing, origin or direction differ from the image's: send the label "
                         "on the image's grid")
    return np.asarray(label_in.array)


def label_mask(label_in: Image, image: Image) -> np.ndarray:
    """The nonzero voxels of a client's ``label_in`` on ``image``'s grid; 400 when the grids differ."""
    return grid_labels(label_in, image) != 0


def list_volumes(data_dir: Path, limit: int = 2000) -> list[str]:
    """Readable volumes under ``data_dir`` (relative POSIX paths), skipping links that lead out."""
    root = Path(data_dir).resolve()
    out: list[str] = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or file_extension(name) not in SUPPORTED_READ_EXTENSIONS:
                continue
            p = Path(folder) / name
            try:
                real = p.resolve(strict=True)
            except OSError:
                continue
            if root in real.parents and real.is_file():
                out.append(p.relative_to(root).as_posix())
                if len(out) >= limit:
                    return out
    return out


def _to_bytes(write, suffix: str = ".nii.gz") -> bytes:
    tmp = Path(tempfile.mkdtemp(prefix="voxprompt-out-"))
    try:
        path = tmp / f"out{suffix}"
        write(path)
        return path.read_bytes()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def image_nifti_bytes(image: Image) -> bytes:
    """The volume as gzipped NIfTI with its geometry (SimpleITK writes file axes (i, j, k))."""
    import SimpleITK as sitk

    return _to_bytes(lambda p: sitk.WriteImage(image.to_sitk(), str(p), useCompression=True))


def label_nifti_bytes(labels: np.ndarray, image: Image) -> bytes:
    """A label array (z, y, x) on ``image``'s grid as gzipped NIfTI (uint8, uint16 past 255)."""
    return _to_bytes(lambda p: write_mask(labels, image, p))


def nifti_affine(image: Image) -> np.ndarray:
    """4x4: file voxel (i, j, k) of the NIfTI written from ``image`` -> RAS mm."""
    zyx = image.affine_zyx_to_ras()
    out = np.eye(4)
    out[:3, :3] = zyx[:3, :3][:, ::-1]  # array axes (z, y, x) -> file axes (i, j, k) = (x, y, z)
    out[:3, 3] = zyx[:3, 3]
    return out


def ras_to_file_ijk(affine: np.ndarray, mm: Iterable[float]) -> np.ndarray:
    """RAS mm -> continuous file voxel (i, j, k) through the inverse of a NIfTI affine."""
    p = np.append(np.asarray(list(mm), dtype=np.float64), 1.0)
    return (np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ p)[:3]
