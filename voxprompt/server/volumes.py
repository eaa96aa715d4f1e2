"""Volumes in and out of the server: uploads, ``--data-dir`` files, NIfTI bytes, file-voxel geometry.

Axis conventions: the Session holds SimpleITK's array, numpy order (z, y, x) = (k, j, i). A NIfTI
file written from it by SimpleITK has file voxel axes (i, j, k) and an affine mapping (i, j, k) to
RAS mm (:func:`nifti_affine`). Viewers that report a world position (NiiVue's ``mm``) convert it to
the file's (i, j, k) with the inverse affine (:func:`ras_to_file_ijk`), and the server turns that
into the array index with :func:`~voxprompt.session.from_slicer_ijk` (reverse the order).
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..errors import VoxpromptError
from ..io.image import Image
from ..io.read import DEFAULT_MAX_VOXELS, SUPPORTED_READ_EXTENSIONS, file_extension, read_image
from ..io.write import write_mask
from .errors import BadRequest

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str | None, default: str = "upload") -> str:
    """A client-supplied file name reduced to a harmless base name (no folders, no dot files)."""
    base = os.path.basename(str(name or "").replace("\\", "/"))
    base = _SAFE.sub("_", base).lstrip(".")[:120]
    return base or default


def read_uploaded(files: Sequence[tuple[str | None, bytes]], max_voxels: int = DEFAULT_MAX_VOXELS,
                  max_bytes: int | None = None) -> Image:
    """Read uploaded volume bytes: one file (NIfTI, NRRD, MHA, single DICOM) or a DICOM series.

    The bytes go to a private temporary folder under safe names, are read, and are deleted. Errors
    name the upload (the client's file name), never the temporary path. ``max_bytes``: the largest
    voxel data the header may declare; above it ImageTooLarge (413) is raised before anything is
    decompressed (a 1 MB ``.nii.gz`` can expand to gigabytes).
    """
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
                                 f"{', '.join(SUPPORTED_READ_EXTENSIONS)}")
            path = tmp / f"{n:05d}_{fname}"
            path.write_bytes(data)
            paths.append(path)
            names.append(name or fname)
        try:
            return read_image(paths[0] if len(paths) == 1 else tmp, max_voxels=max_voxels, max_bytes=max_bytes)
        except VoxpromptError as exc:  # name the upload, not our temporary path
            msg = str(exc)
            for path, name in zip(paths, names):
                msg = msg.replace(str(path), f"upload {name!r}")
            raise type(exc)(msg.replace(str(tmp), "upload")) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
