"""Atomic writing of label volumes on a reference image's grid."""
from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, UsageError
from .image import Image
from .read import file_extension

log = logging.getLogger(__name__)

SUPPORTED_WRITE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")


def _label_array(mask: np.ndarray) -> np.ndarray:
    """Validate a label array and return it as uint8 (or uint16 when labels exceed 255)."""
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        return mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.integer):
        raise InputError(f"mask dtype {mask.dtype} is not a label type; use bool or integers")
    if mask.size == 0:
        raise InputError("mask is empty")
    lo, hi = int(mask.min()), int(mask.max())
    if lo < 0 or hi > 65535:
        raise InputError(f"mask labels must lie in 0..65535, got {lo}..{hi}")
    return mask.astype(np.uint8 if hi <= 255 else np.uint16, copy=False)


def _tmp_path(out: Path, ext: str) -> tuple[Path, int]:
    """Create an exclusive temporary file next to ``out`` (mode honours the umask)."""
    for _ in range(100):
        tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp{ext}")
        try:
            return tmp, os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
    raise OSError(f"{out}: cannot create a temporary file next to it")


def write_mask(mask_zyx: np.ndarray, reference: Image, out_path: str | os.PathLike) -> Path:
    """Write a label volume with the reference's spacing/origin/direction; atomic via os.replace.

    Raises UsageError for an unsupported extension and InputError for a shape/dtype problem, both
    before anything is written. Returns the output path.
    """
    out = Path(out_path)
    ext = file_extension(out)
    if ext not in SUPPORTED_WRITE_EXTENSIONS:
        raise UsageError(f"{out}: unsupported output extension {ext or '(none)'!r}; use one of "
                         f"{', '.join(SUPPORTED_WRITE_EXTENSIONS)}")
    mask = np.asarray(mask_zyx)
    if mask.shape != reference.shape:
        raise InputError(f"mask shape {mask.shape} (z, y, x) does not match the reference image "
                         f"shape {reference.shape}")
    labels = _label_array(mask)
    img = sitk.GetImageFromArray(np.ascontiguousarray(labels))
    img.SetSpacing(reference.spacing)
    img.SetOrigin(reference.origin)
    img.SetDirection(reference.direction.ravel().tolist())
    if not out.parent.is_dir():
        raise UsageError(f"{out}: output folder {out.parent} does not exist")
    tmp, fd = _tmp_path(out, ext)
    os.close(fd)
    try:
        sitk.WriteImage(img, str(tmp), useCompression=ext != ".nii")
        os.replace(tmp, out)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, RuntimeError):
            raise OSError(f"{out}: writing failed ({str(err).strip().splitlines()[-1][:200]})") from None
        raise
    log.debug("wrote %s %s %s", out, labels.shape, labels.dtype)
    return out
