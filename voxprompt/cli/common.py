"""What every command line shares: checkpoint and device checks, output checks, ``--config-json``,
``--point`` / ``--box`` parsing and IJK points to array indices.

Errors are :class:`~voxprompt.errors.UsageError` (exit 2) or :class:`~voxprompt.errors.PromptError`
(exit 3) naming the flag as typed. Light at import: no torch.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import PromptError, UsageError
from ..io.paths import file_extension

if TYPE_CHECKING:
    from ..io.image import Image


log = logging.getLogger(__name__)

CLI_DEVICES = ("cpu", "cuda")  # --device: cpu, cuda or cuda:N

TWO_D_MODELS = "sam-med2d, sam-unet or sam-vit-b"
TWO_D_FLAGS = (("--window", "window"), ("--propagate", "propagate"), ("--slice-axis", "slice_axis"),
               ("--slice", "slice"), ("--channel-order", "channel_order"), ("--mask-values", "mask_values"))


def single_slice_error(image: str, model: str, size: str | None = None) -> UsageError:
    """The one refusal of a 2D image, a single-frame DICOM file or a one-slice volume by a 3D model."""
    what = f"a single slice ({size})" if size else "a single slice (a 2D image)"
    return UsageError(f"{image} is {what}: {model} is a 3D model, which needs a volume; a single slice needs a 2D "
                      f"model (--model {TWO_D_MODELS}, with --checkpoint)")


def warn_if_empty(mask: np.ndarray, out, unit: str = "voxel") -> None:
    """Log a warning naming ``out`` when the written mask is empty (it is written all the same: exit 0)."""
    if not np.any(mask):
        log.warning("%s: the mask is empty (no %s segmented); written all the same", out, unit)


def check_output(path: str, exts: tuple[str, ...], what: str) -> None:
    """An output file: a supported extension in an existing folder."""
    ext = file_extension(path)
    if ext not in exts:
        raise UsageError(f"{what} {path}: unsupported extension {ext or '(none)'!r}; use {', '.join(exts)}")
    parent = Path(path).parent
    if not parent.is_dir():
        raise UsageError(f"{what} {path}: folder {parent} does not exist")


def read_config_json(path: str | None) -> dict | None:
    """The JSON object of ``--config-json`` (None without the flag)."""
    if path is None:
        return None
    try:
        cfg = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"--config-json {path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise UsageError(f"--config-json {path}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise UsageError(f"--config-json {path}: expected a JSON object")
    return cfg


@dataclass
class PointArg:
    """One prompt point as typed: IJK voxel indices or world mm, and its polarity."""

    text: str
    values: tuple[float, float, float]
    positive: bool
    world: bool = False


def parse_point(text: str, world: bool = False) -> PointArg:
    """Parse ``a,b,c`` with an optional ``:+`` / ``:-`` suffix (integers unless ``world``)."""
    body, sign = text, "+"
    if ":" in text:
        body, sign = text.rsplit(":", 1)
        if sign not in ("+", "-"):
            raise UsageError(f"point {text!r}: polarity must be ':+' or ':-'")
    parts = [p.strip() for p in body.split(",")]
    what = "x,y,z mm" if world else "i,j,k voxel indices"
    if len(parts) == 1 and len(body.split()) > 1:
        fixed = ",".join(body.split()) + text[len(body):]
        raise UsageError(f"point {text!r}: use commas between the values: "
                         f"{'--point-mm' if world else '--point'} {fixed}")
    if len(parts) != 3:
        raise UsageError(f"point {text!r}: expected three values ({what})")
    try:
        vals = tuple(float(p) if world else int(p) for p in parts)
    except ValueError:
        raise UsageError(f"point {text!r}: expected {'numbers' if world else 'integers'} ({what})") from None
    if not all(np.isfinite(vals)):
        raise UsageError(f"point {text!r}: values must be finite")
    return PointArg(text, vals, sign == "+", world)


def parse_box(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Parse ``i0,j0,k0,i1,j1,k1`` (IJK, half-open) -> (lo_ijk, hi_ijk)."""
    if "," not in text and len(text.split()) > 1:
        raise UsageError(f"box {text!r}: use commas between the values: --box {','.join(text.split())}")
    try:
        vals = tuple(int(p.strip()) for p in text.split(","))
    except ValueError:
        raise UsageError(f"box {text!r}: expected six integers i0,j0,k0,i1,j1,k1") from None
    if len(vals) != 6:
        raise UsageError(f"box {text!r}: expected six integers i0,j0,k0,i1,j1,k1, got {len(vals)}")
    lo, hi = vals[:3], vals[3:]
    if any(b <= a for a, b in zip(lo, hi)):
        raise UsageError(f"box {text!r} is empty: need i0<i1, j0<j1, k0<k1 (half-open; a 2D box has k1=k0+1)")
    return lo, hi


def size_ijk(image: Image) -> str:
    """The volume's size as typed on the command line: ``IxJxK``."""
    return "x".join(str(n) for n in image.size_xyz)


def point_index(image: Image, p: PointArg, frame: str) -> tuple[int, int, int]:
    """A CLI point (IJK, or world mm in ``frame``) -> array index (z, y, x), refusing points outside."""
    if p.world:
        zyx = np.floor(image.world_to_index(np.asarray(p.values), frame=frame) + 0.5).astype(int)
        where = f"--point-mm {p.text} ({frame}) = IJK {','.join(map(str, zyx[::-1]))}"
    else:
        zyx = np.asarray(p.values[::-1], dtype=int)
        where = f"--point {p.text} (IJK)"
    if np.any(zyx < 0) or np.any(zyx >= np.asarray(image.shape)):
        raise PromptError(f"{where} is outside the volume of size {size_ijk(image)} (IJK)")
    return tuple(int(v) for v in zyx)
