"""Segment category and type codes of a DICOM SEG (``--seg-category`` / ``--seg-type``).

A code is a named preset (SNOMED CT, from DICOM CID 7150 / 7151 and pydicom's ``codes.SCT``) or a
triple ``VALUE,SCHEME,MEANING`` (e.g. ``10200004,SCT,Liver``). Defaults: category Tissue, type Organ.
Standard library only, so the CLI can check the flags before loading anything.
"""
from __future__ import annotations

import argparse

from ..errors import UsageError

Code3 = tuple[str, str, str]  # (value, scheme designator, meaning)

PRESETS: dict[str, Code3] = {
    "organ": ("91772007", "SCT", "Organ"),
    "tissue": ("85756007", "SCT", "Tissue"),
    "anatomical-structure": ("91723000", "SCT", "Anatomical Structure"),
    "morphologically-abnormal-structure": ("49755003", "SCT", "Morphologically Abnormal Structure"),
    "lesion": ("52988006", "SCT", "Lesion"),
    "tumor": ("108369006", "SCT", "Tumor"),
    "mass": ("4147007", "SCT", "Mass"),
    "body-substance": ("91720002", "SCT", "Body Substance"),
    "physical-object": ("260787004", "SCT", "Physical object"),
}
# as a category, "lesion" names the category lesions belong to (CID 7150 has no "Lesion" category)
CATEGORY_ALIASES = {"lesion": "morphologically-abnormal-structure", "tumor": "morphologically-abnormal-structure",
                    "mass": "morphologically-abnormal-structure", "organ": "anatomical-structure"}
DEFAULT_CATEGORY = PRESETS["tissue"]
DEFAULT_TYPE = PRESETS["organ"]


def parse_seg_code(text: str, flag: str = "--seg-type") -> Code3:
    """A preset name (case-insensitive; '_' or ' ' for '-') or ``VALUE,SCHEME,MEANING``."""
    raw = str(text).strip()
    key = raw.lower().replace("_", "-").replace(" ", "-")
    if flag == "--seg-category":
        key = CATEGORY_ALIASES.get(key, key)
    if key in PRESETS:
        return PRESETS[key]
    parts = [p.strip() for p in raw.split(",", 2)]
    if len(parts) == 3 and all(parts):
        value, scheme, meaning = parts
        if not value.replace(".", "").replace("-", "").isalnum() or not scheme.replace("-", "").isalnum():
            raise UsageError(f"{flag} {text!r}: code value and scheme must be letters and digits "
                             "(e.g. 10200004,SCT,Liver)")
        if len(value) > 16 or len(scheme) > 16 or len(meaning) > 64:
            raise UsageError(f"{flag} {text!r}: value and scheme hold at most 16 characters, the meaning 64")
        return value, scheme, meaning
    raise UsageError(f"{flag} {text!r}: give a preset ({', '.join(PRESETS)}) or a code triple "
                     "VALUE,SCHEME,MEANING (e.g. 10200004,SCT,Liver)")


def seg_codes_from_args(args: argparse.Namespace, dicom_seg: bool) -> dict[str, Code3 | None]:
    """``{"category": ..., "segment_type": ...}`` for :func:`~voxprompt.io.dicom_seg.write_dicom_seg`;
    the flags are refused when the output is not a DICOM SEG (never silently ignored)."""
    given = {"category": getattr(args, "seg_category", None), "segment_type": getattr(args, "seg_type", None)}
    flags = {"category": "--seg-category", "segment_type": "--seg-type"}
    if not dicom_seg:
        for k, v in given.items():
            if v is not None:
                raise UsageError(f"{flags[k]} is for DICOM SEG outputs (a DICOM series input and a .dcm or folder "
                                 f"output); {getattr(args, 'output', 'this output')} is not one")
        return {"category": None, "segment_type": None}
    return {k: None if v is None else parse_seg_code(v, flags[k]) for k, v in given.items()}


def add_seg_code_arguments(s: argparse.ArgumentParser) -> None:
    """``--seg-category`` / ``--seg-type`` on ``segment``."""
    names = ", ".join(PRESETS)
    s.add_argument("--seg-category", metavar="PRESET|VALUE,SCHEME,MEANING",
                   help=f"segmented property category of a DICOM SEG output (default tissue): {names} "
                        "(lesion, tumor, mass: morphologically-abnormal-structure; organ: anatomical-structure) "
                        "or a code triple such as 49755003,SCT,Morphologically Abnormal Structure")
    s.add_argument("--seg-type", metavar="PRESET|VALUE,SCHEME,MEANING",
                   help=f"segmented property type of a DICOM SEG output (default organ): {names} or a code "
                        "triple such as 10200004,SCT,Liver")


__all__ = ["CATEGORY_ALIASES", "DEFAULT_CATEGORY", "DEFAULT_TYPE", "PRESETS", "add_seg_code_arguments",
           "parse_seg_code", "seg_codes_from_args"]
