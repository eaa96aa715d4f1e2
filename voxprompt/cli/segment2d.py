"""``voxprompt segment`` with 2D models (SAM ViT-B, SAM-Med2D, SAM-UNet) and 2D images.

* 2D images (PNG, JPEG, TIFF, single-frame DICOM): ``--point X,Y[:+|:-]`` in pixels (x = column,
  y = row), ``--box X0,Y0,X1,Y1`` (top-left first), ``--mask-in MASK.png``; output PNG / TIFF
  (0/1 like every mask output; ``--mask-values 0,255`` for viewers), same size as the input.
* Volumes (NIfTI, NRRD, MHA, DICOM series, multi-frame DICOM / multi-page TIFF) with a 2D model:
  points and boxes in IJK as for 3D models; ``--slice-axis i|j|k`` picks the slice direction
  (default k, the slices of an axial scan), ``--slice N`` the prompted slice (default: the
  prompts' slice); ``--propagate`` follows the object to neighbouring slices; output on the
  volume's grid (3D formats, DICOM SEG for a DICOM series, multi-page TIFF for multi-frame files).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from ..errors import PromptError, UsageError, VoxpromptError
from ..io.image import SLICE_AXES
from ..io.image2d import RASTER_EXTENSIONS, WRITE_EXTENSIONS_2D, count_frames, is_2d_file
from ..io.paths import file_extension
from ..runtime import check_device
from .common import (
    CLI_DEVICES,
    check_output,
    parse_box,
    parse_point,
    point_index,
    read_config_json,
    single_slice_error,
    warn_if_empty,
)

log = logging.getLogger(__name__)

VOLUME_WRITE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")


def wants_2d(args: argparse.Namespace) -> bool:
    """Whether ``segment`` goes through this module: a 2D model, or a PNG/JPEG/TIFF input."""
    from ..errors import UnknownModelError
    from ..models.family import spatial_dims

    try:
        two_d = spatial_dims(args.model) == 2
    except UnknownModelError:
        two_d = False  # the 3D path words the error
    return two_d or file_extension(args.image) in RASTER_EXTENSIONS


def parse_point2d(text: str) -> tuple[tuple[float, float], bool]:
    """``x,y`` with an optional ``:+`` / ``:-`` suffix -> ((x, y), positive)."""
    body, sign = text, "+"
    if ":" in text:
        body, sign = text.rsplit(":", 1)
        if sign not in ("+", "-"):
            raise UsageError(f"point {text!r}: polarity must be ':+' or ':-'")
    parts = body.split(",")
    if len(parts) == 1 and len(body.split()) > 1:
        raise UsageError(f"point {text!r}: use commas between the values: --point "
                         f"{','.join(body.split()) + text[len(body):]}")
    if len(parts) != 2:
        raise UsageError(f"point {text!r}: a 2D image takes two values x,y (pixel column, row)")
    try:
        x, y = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"point {text!r}: expected numbers x,y") from None
    if not (np.isfinite(x) and np.isfinite(y)):
        raise UsageError(f"point {text!r}: values must be finite")
    return (x, y), sign == "+"


def parse_box2d(text: str) -> tuple[float, float, float, float]:
    """``x0,y0,x1,y1`` (top-left corner first) -> XYXY."""
    if "," not in text and len(text.split()) > 1:
        raise UsageError(f"box {text!r}: use commas between the values: --box {','.join(text.split())}")
    try:
        vals = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise UsageError(f"box {text!r}: expected four numbers x0,y0,x1,y1") from None
    if len(vals) != 4 or not all(np.isfinite(vals)):
        raise UsageError(f"box {text!r}: expected four numbers x0,y0,x1,y1 (a 2D image), got {len(vals)}")
    x0, y0, x1, y1 = vals
    if x1 <= x0 or y1 <= y0:
        raise UsageError(f"box {text!r} is empty or in the wrong order: give x0,y0,x1,y1 with x0 < x1 and y0 < y1")
    return vals


def _check_common(args: argparse.Namespace) -> str:
    """Model, device, checkpoint and overlay checks; returns the checkpoint path."""
    from ..models.family import spatial_dims
    from ..models.zoo import get_spec

    get_spec(args.model)
    if spatial_dims(args.model) != 2:
        raise single_slice_error(args.image, args.model)
    check_device(args.device, CLI_DEVICES, "--device")
    if args.overlay is not None:
        check_output(args.overlay, (".png",), "--overlay")
    elif getattr(args, "neurological", False):
        raise UsageError("--neurological sets the view of --overlay PNG; give --overlay too")
    if getattr(args, "autozoom", False):
        raise UsageError("--autozoom is for 3D models; 2D models follow objects with --propagate")
    if getattr(args, "refine", None):
        raise UsageError("--refine is for 3D models (boundary refinement of a 3D session)")
    if getattr(args, "clean", None):
        raise UsageError("--clean is for 3D models (mask clean-up of a 3D session)")
    from ..models.loading import resolve_checkpoint

    return resolve_checkpoint(args.model, args.checkpoint)


def mask_foreground(args: argparse.Namespace) -> int:
    """The foreground value of 2D mask files from ``--mask-values 0,N`` (default 0,1)."""
    text = getattr(args, "mask_values", None)
    if text is None:
        return 1
    parts = [t.strip() for t in str(text).split(",")]
    try:
        lo, hi = (int(t) for t in parts)
    except ValueError:
        raise UsageError(f"--mask-values {text}: expected 0,1 or 0,255") from None
    if lo != 0 or (lo, hi) not in ((0, 1), (0, 255)):
        raise UsageError(f"--mask-values {text}: expected 0,1 (default) or 0,255")
    return hi


def _load(args: argparse.Namespace, ckpt: str):
    from ..models.loading import load_model

    model = load_model(args.model, ckpt, device=args.device, config=read_config_json(args.config_json))
    return model.set_precision(getattr(args, "precision", "fp32"))


def cmd_segment_2d(args: argparse.Namespace) -> int:
    """``segment`` for a 2D model or a 2D image (dispatched from :func:`voxprompt.cli.segment.cmd_segment`)."""
    from ..preprocess.image2d import parse_window

    window = parse_window(args.window)
    if not (args.point or args.point_mm or args.box or args.mask_in):
        raise UsageError("segment needs a prompt: --point, --box or --mask-in")
    ckpt = _check_common(args)
    flat = is_2d_file(args.image) and count_frames(args.image) == 1
    if flat:
        return _segment_image(args, ckpt, window)
    return _segment_volume(args, ckpt, window)


# ----------------------------------------------------------------------------- 2D images
def _segment_image(args: argparse.Namespace, ckpt: str, window) -> int:
    from ..io.image2d import read_image2d, write_mask2d
    from ..session.image2d import Session2D

    for what, given in (("--point-mm", args.point_mm), ("--slice", args.slice), ("--propagate", args.propagate),
                        ("--neurological", getattr(args, "neurological", False))):
        if given:
            raise UsageError(f"{what} is for volumes; {args.image} is a 2D image")
    from .dicom_output import dicom_output_from_args

    dicom_output_from_args(args, possible=False)  # a 2D image's mask is no DICOM object: those flags are refused
    points = [parse_point2d(t) for t in args.point or []]
    boxes = [parse_box2d(t) for t in args.box or []]
    if len(boxes) > 1:
        raise UsageError("a 2D object takes one --box (SAM-style models accept a single box per prompt)")
    check_output(args.output, WRITE_EXTENSIONS_2D, "output")
    image = read_image2d(args.image)
    prior = None
    if args.mask_in is not None:
        prior = read_image2d(args.mask_in).array
        prior = prior.any(axis=-1) if prior.ndim == 3 else prior
        if prior.shape != image.shape:
            raise PromptError(f"--mask-in {args.mask_in}: size {prior.shape[1]}x{prior.shape[0]} differs from the "
                              f"image {image.shape[1]}x{image.shape[0]} (width x height)")
    model = _load(args, ckpt)
    session = Session2D(model, device=args.device, channel_order=args.channel_order)
    session.set_image(image, window=window)
    pred = None
    if prior is not None:
        pred = session.add_mask(prior)
    if points or boxes:
        pred = session.add_prompts([p for p, _ in points], [s for _, s in points], box=boxes[0] if boxes else None)
    try:
        out = write_mask2d(session.mask, args.output, foreground=mask_foreground(args))
    except OSError as exc:
        raise VoxpromptError(f"output {args.output}: {exc}") from None

    warn_if_empty(session.mask, out, "pixel")
    score = f", predicted IoU {pred.score:.3f}" if pred is not None and pred.score is not None else ""
    sys.stdout.write(f"wrote {out} ({int(session.mask.sum())} pixels{score})\n")
    if args.overlay is not None:
        from ..viz.overlay2d import save_overlay_2d

        save_overlay_2d(session.rgb, session.mask, args.overlay, points, boxes[0] if boxes else None,
                        title=f"{Path(args.image).name} ({args.model})")
        sys.stdout.write(f"wrote {args.overlay}\n")
    return 0


# ----------------------------------------------------------------------------- volumes
def _read_volume(path: str, series=None):
    from ..io.image2d import read_frames
    from ..io.read import read_image

    return read_frames(path) if is_2d_file(path) else read_image(path, series=series)


def _segment_volume(args: argparse.Namespace, ckpt: str, window) -> int:
    from ..models.family import policy_for
    from ..session.propagate import PropagationConfig
    from ..session.slices import SliceSession

    if args.mask_in is not None:
        raise UsageError("--mask-in is not supported with a 2D model on a volume; prompt with --point / --box")
    multi_frame = is_2d_file(args.image)
    from .dicom_output import dicom_output_from_args, not_dicom_input, write_dicom_output

    dicom_out = dicom_output_from_args(args)  # --dicom-format, --seg-category / --seg-type
    out_exts = VOLUME_WRITE_EXTENSIONS + ((".tif", ".tiff") if multi_frame else ())
    if dicom_out is None:
        check_output(args.output, out_exts, "output")
    slice_axis = args.slice_axis or "k"
    axis = SLICE_AXES[slice_axis]
    boxes = [parse_box(t) for t in args.box or []]
    if len(boxes) > 1:
        raise UsageError("give one --box (SAM-style models accept a single box per prompt)")
    image = _read_volume(args.image, getattr(args, "series", None))
    if dicom_out is not None and not image.is_dicom:
        raise not_dicom_input(dicom_out, args)
    typed = [parse_point(t) for t in args.point or []] + [parse_point(t, world=True) for t in args.point_mm or []]
    points = [(point_index(image, p, args.frame), p.positive) for p in typed]
    box = None
    if boxes:
        lo, hi = boxes[0]
        if any(a < 0 for a in lo) or any(b > n for b, n in zip(hi, image.size_xyz)):
            raise PromptError(f"--box {args.box[0]} is outside the volume of size "
                              f"{'x'.join(map(str, image.size_xyz))} (IJK)")
        box = (lo[::-1], hi[::-1])
    if args.slice is not None and not 0 <= args.slice < image.shape[axis]:
        raise UsageError(f"--slice {args.slice} is outside 0..{image.shape[axis] - 1} along {slice_axis}")
    model = _load(args, ckpt)
    session = SliceSession(model, axis=axis, config=PropagationConfig(), propagate=args.propagate, window=window,
                           device=args.device, policy=policy_for(model, args.channel_order))
    session.set_image(image)
    pred = session.add_prompts(points, box=box, slice_index=args.slice)
    mask = session.mask
    try:
        if dicom_out is not None:
            out = write_dicom_output(dicom_out, mask, args, image, ckpt)
        elif file_extension(args.output) in (".tif", ".tiff"):
            from ..io.image2d import write_mask2d

            out = write_mask2d(mask, args.output, foreground=mask_foreground(args))
        else:
            from ..io.write import write_mask

            out = write_mask(mask.astype(np.uint8), image, args.output)
    except OSError as exc:
        raise VoxpromptError(f"output {args.output}: {exc}") from None

    warn_if_empty(mask, out)
    n_slices = int(np.count_nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))))
    score = f", predicted IoU {pred.score:.3f} on slice {pred.anchor}" if pred.score is not None else ""
    sys.stdout.write(f"wrote {out} ({int(mask.sum())} voxels on {n_slices} slice(s){score})\n")
    if args.overlay is not None:
        from ..viz.overlay import save_overlay

        focus = points[0][0] if points else None
        save_overlay(image, mask, args.overlay, point_zyx=focus, title=f"{Path(args.image).name} ({args.model})",
                     clicks=points, neurological=getattr(args, "neurological", False))
        sys.stdout.write(f"wrote {args.overlay}\n")
    return 0


def add_2d_arguments(s: argparse.ArgumentParser) -> None:
    """The 2D options of ``segment`` (called by :func:`voxprompt.cli.segment.add_subcommands`)."""
    s.description = (s.description or "") + (
        " 2D images (PNG, JPEG, TIFF, DICOM) need a 2D model (--model sam-med2d, sam-unet, sam-vit-b) and take "
        "--point X,Y (pixel column,row) and --box X0,Y0,X1,Y1; on volumes a 2D model segments one slice "
        "(--slice-axis, --slice) and follows the object with --propagate. These 2D options are refused with a "
        "3D model.")
    g = s.add_argument_group("2D models and 2D images")
    g.add_argument("--window", metavar="PRESET|W,L",
                   help="intensity window for 2D models: soft-tissue, lung, bone, brain or W,L in HU "
                        "(default: the image's min..max; for volumes its 0.5-99.5 percentiles)")
    g.add_argument("--slice-axis", choices=tuple(SLICE_AXES),
                   help="2D model on a volume: slice direction, IJK (default k)")
    g.add_argument("--slice", type=int, metavar="N", help="2D model on a volume: the prompted slice index")
    g.add_argument("--propagate", action="store_true",
                   help="2D model on a volume: propagate the mask slice by slice (box from the previous slice)")
    g.add_argument("--mask-values", metavar="0,1|0,255",
                   help="values of 2D mask files (PNG / TIFF): background,foreground (default 0,1 as every "
                        "mask output; 0,255 for image viewers)")
    g.add_argument("--channel-order", choices=("rgb", "bgr"),
                   help="colour order the 2D model sees (default: the official one; SAM-Med2D: bgr)")


__all__ = ["add_2d_arguments", "cmd_segment_2d", "mask_foreground", "parse_box2d", "parse_point2d", "wants_2d"]
