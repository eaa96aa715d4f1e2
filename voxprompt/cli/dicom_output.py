"""The DICOM outputs of ``segment``: a DICOM SEG, or an RT Structure Set with ``--dicom-format rtstruct``.

An output is a DICOM object when it ends in ``.dcm`` or names a folder (``FOLDER/voxprompt_seg.dcm`` or
``FOLDER/voxprompt_rtstruct.dcm`` in it); it needs a DICOM series input. ``--dicom-format`` picks which
object (default ``seg``); it and the SEG code flags are refused where they do not apply, never ignored.
Every check here runs before the model is loaded or anything is written.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..io.paths import file_extension

DICOM_FORMATS = {"seg": "DICOM SEG", "rtstruct": "RT Structure Set"}


@dataclass(frozen=True)
class DicomOutput:
    """Which DICOM object to write (``kind``: ``seg`` / ``rtstruct``) and, for a SEG, its segment codes."""

    kind: str
    codes: dict = field(default_factory=dict)

    @property
    def what(self) -> str:
        return DICOM_FORMATS[self.kind]


def dicom_output_from_args(args: argparse.Namespace, possible: bool = True) -> DicomOutput | None:
    """The DICOM object ``args.output`` asks for, or None for a NIfTI / NRRD / MHA / TIFF / PNG output.

    ``possible=False`` (a 2D image input): no DICOM output, and the DICOM flags are refused.
    """
    from ..io.dicom_seg import is_dicom_seg_output
    from ..io.seg_codes import seg_codes_from_args

    fmt = args.dicom_format
    if not (possible and is_dicom_seg_output(args.output)):
        if fmt is not None:
            raise UsageError(f"--dicom-format is for DICOM outputs (a DICOM series input and a .dcm or folder "
                             f"output); {args.output} is not one")
        seg_codes_from_args(args, False)  # --seg-category / --seg-type refused
        return None
    if fmt == "rtstruct":
        for flag, given in (("--seg-category", args.seg_category), ("--seg-type", args.seg_type)):
            if given is not None:
                raise UsageError(f"{flag} sets the codes of a DICOM SEG; --dicom-format rtstruct writes an RT "
                                 "Structure Set (its ROI is named by --label-name)")
        from ..io.rtstruct import require_rtstruct

        require_rtstruct()
        return DicomOutput("rtstruct")
    return DicomOutput("seg", seg_codes_from_args(args, True))


def check_dicom_paths(out: DicomOutput, path: str, image: str) -> None:
    """A DICOM output needs a DICOM input (a folder or a .dcm file) and an existing output folder."""
    from ..io.dicom_seg import NotDicomError, seg_output_path
    from ..io.rtstruct import rtstruct_output_path

    src = Path(image)
    if src.exists() and not src.is_dir() and file_extension(src) != ".dcm":
        raise NotDicomError(f"output {path}: a {out.what} needs a DICOM input (a series folder); {image} is "
                            f"{file_extension(src) or 'not DICOM'}: write .nii.gz, .nrrd or .mha instead")
    target = rtstruct_output_path(path) if out.kind == "rtstruct" else seg_output_path(path)
    if not target.parent.is_dir() and not (path.endswith(("/", "\\")) and target.parent.parent.is_dir()):
        raise UsageError(f"output {path}: folder {target.parent} does not exist")


def not_dicom_input(out: DicomOutput, args: argparse.Namespace) -> UsageError:
    """The error for a DICOM output whose input was read, and is not a DICOM series."""
    from ..io.dicom_seg import NotDicomError

    return NotDicomError(f"output {args.output}: a {out.what} needs a DICOM series input; {args.image} is not "
                         "one (write .nii.gz, .nrrd or .mha instead)")


def write_dicom_output(out: DicomOutput, mask: np.ndarray, args: argparse.Namespace, image: object,
                       checkpoint: str | os.PathLike) -> Path:
    """Write ``mask`` (bool (z, y, x) on the DICOM series ``image``) as the chosen object; returns its path."""
    if out.kind == "rtstruct":
        from ..io.rtstruct import write_rtstruct

        return write_rtstruct(mask, args.image, args.output, image=image, label_name=args.label_name,
                              model_name=args.model)
    from ..io.dicom_seg import write_dicom_seg

    return write_dicom_seg(mask, args.image, args.output, image=image, label_name=args.label_name,
                           model_name=args.model, parameters={"checkpoint": Path(checkpoint).name}, **out.codes)


def add_dicom_output_arguments(s: argparse.ArgumentParser) -> None:
    """``--dicom-format`` and ``--label-name`` on ``segment`` (the SEG code flags: io.seg_codes)."""
    s.add_argument("--dicom-format", choices=tuple(DICOM_FORMATS),
                   help="what a .dcm or folder output of a DICOM series is: seg (default), a DICOM Segmentation, "
                        "or rtstruct, an RT Structure Set of contours (needs pip install 'voxprompt[rtstruct]'; "
                        "a folder gets FOLDER/voxprompt_rtstruct.dcm)")
    s.add_argument("--label-name", metavar="NAME", help="segment label of a DICOM SEG output, ROI name of an "
                                                        "RT Structure Set (default 'voxprompt segment')")


__all__ = ["DICOM_FORMATS", "DicomOutput", "add_dicom_output_arguments", "check_dicom_paths",
           "dicom_output_from_args", "not_dicom_input", "write_dicom_output"]
