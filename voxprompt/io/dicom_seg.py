"""DICOM Segmentation (SEG) output for masks predicted on a DICOM series, via highdicom.

The mask is an array in SimpleITK's (z, y, x) order, as :func:`voxprompt.io.read_image` returns
for a DICOM folder. Frame z is matched to its source instance by ImagePositionPatient (the LPS
position of voxel (z, 0, 0)), never by file order, so the SEG references the right instances
however the files are named. One BINARY segment (or one per label of a label map, ``segments``)
with codes (default category Tissue, type Organ, SNOMED CT; settable, :mod:`voxprompt.io.seg_codes`),
AUTOMATIC (or SEMIAUTOMATIC) algorithm type and an algorithm identification naming voxprompt and the
model.
The file is written atomically (temporary file + rename).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, UsageError
from .image import Image
from .read import file_extension, read_image
from .seg_codes import DEFAULT_CATEGORY, DEFAULT_TYPE, parse_seg_code
from .write import _tmp_path

log = logging.getLogger(__name__)

DEFAULT_LABEL = "voxprompt segment"
DEFAULT_SEG_NAME = "voxprompt_seg.dcm"  # file name used when the output is a folder
SEG_SERIES_OFFSET = 1000  # SEG series number = source series number + this


class NotDicomError(UsageError):
    """A DICOM SEG was asked for but the input image was not read from DICOM."""


def is_dicom_seg_output(path: str | os.PathLike) -> bool:
    """Whether an output path asks for DICOM SEG: ``*.dcm``, an existing folder, or ``folder/``."""
    text = os.fspath(path)
    return (file_extension(text) == ".dcm" or Path(text).is_dir()
            or text.endswith(("/", os.sep)))


def dicom_output_file(path: str | os.PathLike, default_name: str) -> Path:
    """The file a DICOM output argument names: ``*.dcm`` itself; a folder (existing, or ``folder/``) gets
    ``default_name`` inside it."""
    text = os.fspath(path)
    p = Path(text)
    if p.is_dir() or text.endswith(("/", os.sep)):
        return p / default_name
    return p


def prepare_output_file(out_path: str | os.PathLike, default_name: str) -> Path:
    """:func:`dicom_output_file`, its folder made when the argument is ``folder/`` under an existing one;
    :class:`UsageError` when the folder does not exist."""
    out = dicom_output_file(out_path, default_name)
    if not out.parent.is_dir():
        if os.fspath(out_path).endswith(("/", os.sep)) and out.parent.parent.is_dir():
            out.parent.mkdir()
        else:
            raise UsageError(f"{out}: output folder {out.parent} does not exist")
    return out


def seg_output_path(path: str | os.PathLike) -> Path:
    """The SEG file for an output argument (a folder gets :data:`DEFAULT_SEG_NAME`)."""
    return dicom_output_file(path, DEFAULT_SEG_NAME)


def _source_datasets(files: Sequence[str]) -> list:
    import pydicom

    out = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as err:  # pydicom raises many types for a bad file
            raise InputError(f"{f}: cannot read DICOM header ({type(err).__name__}: {err})") from None
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise InputError(f"{f}: multi-frame DICOM sources are not supported for SEG output "
                             "(use a series of single-frame files)")
        for key in ("ImagePositionPatient", "ImageOrientationPatient", "SOPInstanceUID", "Rows", "Columns"):
            if key not in ds:
                raise InputError(f"{f}: DICOM file lacks {key}; cannot reference it from a SEG")
        out.append(ds)
    return out


def dicom_source(source_dir: str | os.PathLike, image: Image | None, what: str) -> Image:
    """The DICOM series an output refers to (``image`` when given, else read from ``source_dir``);
    :class:`NotDicomError` when it is not a DICOM series."""
    src = Path(source_dir)
    if image is None:
        if not src.exists():
            raise UsageError(f"{what} source {src} does not exist")
        image = read_image(src)
    if not image.is_dicom or not image.dicom_files:
        raise NotDicomError(f"{what} needs a DICOM input (a series folder); {src} is "
                            f"{file_extension(src) or 'not DICOM'}: write .nii.gz, .nrrd or .mha instead")
    return image


def source_frames(image: Image) -> list:
    """The instance headers of a DICOM ``image``, one per slice, in slice (z) order."""
    return match_frames(image, _source_datasets(image.dicom_files))


def match_frames(image: Image, datasets: Sequence) -> list:
    """The source dataset of every z slice of ``image``, matched by ImagePositionPatient.

    Raises InputError when a slice has no dataset within half a slice spacing, when two slices
    claim the same dataset, or when the in-plane orientation or size disagrees.
    """
    nz, ny, nx = image.shape
    aff = image.affine_zyx_to_lps()
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    tol = max(1e-3, 0.5 * (image.spacing[2] if nz > 1 else min(image.spacing)))
    chosen, used = [], set()
    for z in range(nz):
        want = aff[:3, 3] + aff[:3, 0] * z
        dist = np.linalg.norm(positions - want, axis=1)
        k = int(np.argmin(dist))
        if dist[k] > tol or k in used:
            raise InputError(f"slice z={z} at LPS {np.round(want, 3).tolist()} has no matching DICOM instance "
                             f"(nearest ImagePositionPatient {dist[k]:.3f} mm away)")
        ds = datasets[k]
        if (int(ds.Rows), int(ds.Columns)) != (ny, nx):
            raise InputError(f"DICOM instance {ds.SOPInstanceUID} is {ds.Rows}x{ds.Columns}, the mask slice "
                             f"{ny}x{nx}")
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        if not (np.allclose(iop[:3], image.direction[:, 0], atol=1e-3)
                and np.allclose(iop[3:], image.direction[:, 1], atol=1e-3)):
            raise InputError(f"DICOM instance {ds.SOPInstanceUID} has ImageOrientationPatient {iop.tolist()}, "
                             "not the image's in-plane direction")
        used.add(k)
        chosen.append(ds)
    return chosen


def _code(given: Any, default: tuple, flag: str) -> Any:
    """A pydicom Code from a preset name, a (value, scheme, meaning) triple or a Code."""
    from pydicom.sr.coding import Code

    if given is None:
        given = default
    if isinstance(given, str):
        given = parse_seg_code(given, flag)
    if isinstance(given, Code):
        return given
    value, scheme, meaning = given
    return Code(value=str(value), scheme_designator=str(scheme), meaning=str(meaning))


def write_dicom_seg(mask_zyx: np.ndarray, source_dir: str | os.PathLike, out_path: str | os.PathLike,
                    *, image: Image | None = None, label_name: str | None = None,
                    model_name: str = "voxprompt", model_version: str | None = None,
                    series_number: int | None = None,
                    parameters: dict[str, str] | None = None,
                    category: Any = None, segment_type: Any = None,
                    segments: Mapping[int, str] | None = None, algorithm_type: str = "AUTOMATIC") -> Path:
    """Write ``mask_zyx`` (bool / 0-1, (z, y, x)) as a one-segment BINARY DICOM SEG; returns the path.

    ``source_dir``: the DICOM series folder the mask was predicted on; ``image``: that series as
    read by :func:`~voxprompt.io.read_image` (read again when omitted). ``out_path``: a ``.dcm``
    file, or a folder (gets :data:`DEFAULT_SEG_NAME`). ``category`` / ``segment_type``: the segmented
    property codes, a preset name or ``(value, scheme, meaning)`` (see :mod:`voxprompt.io.seg_codes`) or a
    pydicom ``Code``; default Tissue / Organ. ``segments`` (label value -> segment label): ``mask_zyx``
    is a label map and each listed value becomes one segment, numbered 1, 2, ... in the mapping's order
    (other values are background; ``label_name`` is then unused). ``algorithm_type``: AUTOMATIC, or
    SEMIAUTOMATIC for masks a person steered (clicks). Raises :class:`NotDicomError` when the
    source is not DICOM, InputError when the mask does not fit the series.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from ..version import __version__

    image = dicom_source(source_dir, image, "DICOM SEG output")
    mask = np.asarray(mask_zyx)
    if mask.shape != image.shape:
        raise InputError(f"mask shape {mask.shape} (z, y, x) does not match the DICOM series shape {image.shape}")
    if not (mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.integer)):
        raise InputError(f"mask dtype {mask.dtype} is not a label type; use bool or integers")
    out = prepare_output_file(out_path, DEFAULT_SEG_NAME)
    label = (label_name or DEFAULT_LABEL).strip() or DEFAULT_LABEL

    sources = source_frames(image)
    first = sources[0]
    version = model_version or __version__
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"voxprompt {model_name}"[:64], family=codes.cid7162.ArtificialIntelligence, version=version,
        parameters={"model": model_name, **(parameters or {})})
    try:
        how = hd.seg.SegmentAlgorithmTypeValues[algorithm_type]
    except KeyError:
        raise UsageError(f"algorithm_type {algorithm_type!r}: use AUTOMATIC or SEMIAUTOMATIC") from None
    named = {1: label} if segments is None else {int(k): str(v) for k, v in segments.items()}
    if not named:
        raise InputError("a DICOM SEG needs at least one segment")
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=(name.strip() or f"segment {n}")[:64],
        segmented_property_category=_code(category, DEFAULT_CATEGORY, "--seg-category"),
        segmented_property_type=_code(segment_type, DEFAULT_TYPE, "--seg-type"),
        algorithm_type=how, algorithm_identification=algorithm) for n, name in enumerate(named.values(), 1)]
    if series_number is None:
        series_number = (int(getattr(first, "SeriesNumber", 0) or 0) + SEG_SERIES_OFFSET) % (2**31 - 1) or 1
    if segments is None:
        pixels = (mask != 0).astype(np.uint8)
    else:  # label value -> segment number; unlisted values are background
        pixels = np.zeros(mask.shape, np.uint8 if len(named) < 256 else np.uint16)
        for n, value in enumerate(named, 1):
            pixels[mask == value] = n
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=int(series_number),
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="voxprompt",
        manufacturer_model_name=model_name[:64], software_versions=f"voxprompt {__version__}",
        device_serial_number="0", content_label="VOXPROMPT", content_description=label[:64],
        series_description=f"voxprompt {label}"[:64], omit_empty_frames=bool(pixels.any()))
    tmp, fd = _tmp_path(out, ".dcm")
    os.close(fd)
    try:
        seg.save_as(str(tmp))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.debug("wrote DICOM SEG %s (%d frames referencing %d instances)", out, int(seg.NumberOfFrames),
              len(sources))
    return out


__all__ = ["write_dicom_seg", "dicom_source", "source_frames", "match_frames", "is_dicom_seg_output",
           "seg_output_path", "dicom_output_file", "prepare_output_file", "NotDicomError", "DEFAULT_LABEL",
           "DEFAULT_SEG_NAME"]
