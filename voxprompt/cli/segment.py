"""``voxprompt info`` and ``voxprompt segment``: command-line 3D segmentation.

Points and boxes on the command line use the voxel order IJK that 3D Slicer and ITK-SNAP show:
(i, j, k) = (x, y, z), the reverse of numpy's (z, y, x); they are converted explicitly here.
Every argument is checked before the model is loaded or anything is written.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

import numpy as np

from ..errors import PromptError, UsageError, VoxpromptError
from ..eval.switches import add_session_switches, session_switches
from ..io.paths import file_extension
from ..models.config import DEFAULT_MODEL, SamConfig, SamUNetConfig
from ..runtime import check_device
from .common import (
    CLI_DEVICES,
    TWO_D_FLAGS,
    TWO_D_MODELS,
    check_output,
    parse_box,
    parse_point,
    point_index,
    read_config_json,
    single_slice_error,
    size_ijk,
    warn_if_empty,
)
from .dicom_output import (
    DicomOutput,
    add_dicom_output_arguments,
    check_dicom_paths,
    dicom_output_from_args,
    not_dicom_input,
    write_dicom_output,
)

log = logging.getLogger(__name__)

AUTOZOOM_DEFAULT = False  # --autozoom / --no-autozoom when neither is given


def _dicom_folder_output(args: argparse.Namespace) -> None:
    """For a DICOM folder input, an output without an extension names a folder (the SEG or RTSTRUCT goes in it)."""
    out = args.output
    if Path(args.image).is_dir() and not file_extension(out) and not out.endswith(("/", os.sep)):
        args.output = out + os.sep


def config_keys_help() -> str:
    """The keys ``--config-json`` takes, from the config dataclasses."""
    sam = ", ".join(f.name for f in dataclasses.fields(SamConfig))
    unet = ", ".join(f.name for f in dataclasses.fields(SamUNetConfig))
    return (f"JSON object of architecture keys overriding the named model's config (or the config stored in a "
            f"voxprompt .safetensors checkpoint) key by key; unknown keys are refused. Keys: {sam}; "
            f"sam-unet models: {unet} (sam: an object of the keys above)")


def cmd_info(args: argparse.Namespace) -> int:
    from ..io.info import describe, orientation_text
    from ..io.read import choose_series, list_dicom_series, read_image

    series, listing = args.series, ""
    if Path(args.image).is_dir():
        found = list_dicom_series(args.image)
        series = choose_series(args.image, found, args.series, warn=False)
        rows = [(s.uid, "-" if s.number is None else f"#{s.number}", f"'{s.description}'" if s.description else "-",
                 f"{s.slices} slices", " x ".join(map(str, s.size_xyz)), s is series) for s in found]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        listing = (f"  series         {len(found)} in the folder (--series UID|NUMBER chooses; default: the one "
                   "with most slices; * = shown below)\n")
        listing += "".join(f"    {'*' if chosen else ' '} " + "  ".join(c.ljust(w) for c, w in zip(r[:4], widths))
                           + f"  {r[4]}\n" for *r, chosen in rows)
    d = describe(read_image(args.image, series=series))
    sys.stdout.write(
        f"{args.image}\n{listing}"
        f"  size (IJK)     {' x '.join(map(str, d['size_xyz']))}   (numpy z,y,x: {tuple(d['shape_zyx'])})\n"
        f"  spacing (mm)   {', '.join(f'{s:g}' for s in d['spacing_xyz_mm'])}\n"
        f"  origin (LPS)   {', '.join(f'{o:g}' for o in d['origin_lps_mm'])}\n"
        f"  orientation    {orientation_text(d['orientation'])}\n"
        f"  dtype          {d['dtype']}\n"
        f"  intensity      {d['min']:g} .. {d['max']:g} (mean {d['mean']:g})\n")
    return 0


def _check_outputs(args: argparse.Namespace) -> DicomOutput | None:
    """The output and ``--overlay`` checks, before anything is read; the DICOM object to write, if any."""
    from ..io.write import SUPPORTED_WRITE_EXTENSIONS

    dicom_out = dicom_output_from_args(args)  # --dicom-format, --seg-category / --seg-type
    if dicom_out is not None:
        check_dicom_paths(dicom_out, args.output, args.image)
    else:
        check_output(args.output, SUPPORTED_WRITE_EXTENSIONS + (".dcm",), "output")
    if args.overlay is not None:
        check_output(args.overlay, (".png",), "--overlay")
    elif getattr(args, "neurological", False):
        raise UsageError("--neurological sets the view of --overlay PNG; give --overlay too")
    return dicom_out


def _box_index(image: object, lo: tuple[int, ...], hi: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A ``--box`` (IJK, half-open) as array corners (z, y, x), refused outside the volume."""
    if any(a < 0 for a in lo) or any(b > n for b, n in zip(hi, image.size_xyz)):
        raise PromptError(f"--box {','.join(map(str, lo + hi))} is outside the volume of size "
                          f"{size_ijk(image)} (IJK)")
    return lo[::-1], hi[::-1]


def _report(out: object, mask: np.ndarray, pred: object) -> None:
    """The one line saying what was written, and the session's warning about a poor result."""
    warn_if_empty(mask, out)
    score = f", predicted IoU {pred.score:.3f}" if pred is not None and pred.score is not None else ""
    if pred is not None and pred.zooms:
        score += f", auto-zoom x{'/'.join(f'{z:g}' for z in pred.zooms)} + {pred.tiles} tile(s)"
    sys.stdout.write(f"wrote {out} ({int(mask.sum())} voxels{score})\n")
    if pred is not None and pred.warning:  # the mask is written all the same: the user decides
        note = " (the click as an array index k,j,i: the reverse of IJK)" if "click at" in pred.warning else ""
        log.warning("check the result: %s%s", pred.warning, note)


def cmd_segment(args: argparse.Namespace) -> int:
    from ..io.read import read_image
    from ..models.zoo import get_spec
    from .segment2d import cmd_segment_2d, wants_2d

    if args.series is not None and not Path(args.image).is_dir():
        raise UsageError(f"--series chooses a series of a DICOM folder; {args.image} is not a folder")
    _dicom_folder_output(args)
    if args.prompts is not None and wants_2d(args):
        raise UsageError(f"--prompts replays 3D sessions; {args.image} with --model {args.model} is 2D segmentation")
    if wants_2d(args):  # 2D models, 2D images: voxprompt/cli/segment2d.py
        return cmd_segment_2d(args)
    for flag, dest in TWO_D_FLAGS:  # never silently ignored
        if getattr(args, dest) not in (None, False):
            raise UsageError(f"{flag} is for 2D models (--model {TWO_D_MODELS}); {args.model} is a 3D model")

    # 1. everything that needs no file
    points = [parse_point(t) for t in args.point or []] + [parse_point(t, world=True) for t in args.point_mm or []]
    boxes = [parse_box(t) for t in args.box or []]
    from ..session.prompts import apply_prompts, prompts_from_args, resolve_prompts

    replay = prompts_from_args(args)  # --prompts FILE (refused beside the flags above)
    if not points and not boxes and args.mask_in is None and replay is None:
        raise UsageError("segment needs a prompt: --point, --point-mm, --box, --mask-in or --prompts")
    dicom_out = _check_outputs(args)
    get_spec(args.model)
    check_device(args.device, CLI_DEVICES, "--device")
    from ..models.loading import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.model, args.checkpoint)
    config = read_config_json(args.config_json)

    # 2. the image and the prompts against it
    image = read_image(args.image, series=args.series)
    if 1 in image.shape:  # a 2D image, a single-frame DICOM file, a one-voxel-thick volume
        raise single_slice_error(args.image, args.model, f"{size_ijk(image)} IJK")
    if dicom_out is not None and not image.is_dicom:
        raise not_dicom_input(dicom_out, args)
    idx = [(point_index(image, p, args.frame), p.positive) for p in points]
    box_zyx = [_box_index(image, lo, hi) for lo, hi in boxes]
    prior = None
    if args.mask_in is not None:
        prior = read_image(args.mask_in)
        if prior.shape != image.shape:
            raise PromptError(f"--mask-in {args.mask_in}: size {size_ijk(prior)} (IJK) differs from the image "
                              f"size {size_ijk(image)}")
    replay = resolve_prompts(replay, image) if replay is not None else None

    # 3. model and session
    from ..models.loading import load_model
    from ..session import Session

    model = load_model(args.model, checkpoint, device=args.device, config=config).set_precision(args.precision)
    planner = None
    if args.autozoom:
        from ..session import AutoZoomPlanner

        planner = AutoZoomPlanner()
    session = Session(model, device=args.device, planner=planner, refine=args.refine, clean=args.clean,
                      **session_switches(args))
    session.set_image(image)
    pred = None
    if prior is not None:
        session.add_mask(prior.array != 0)
    for lo, hi in box_zyx:
        pred = session.add_box(lo, hi)
    for zyx, positive in idx:
        pred = session.add_point(zyx, positive=positive)
    if replay is not None:
        pred = apply_prompts(session, replay)

    # 4. outputs
    from ..io.write import write_mask

    mask = session.mask
    try:
        if dicom_out is not None:
            out = write_dicom_output(dicom_out, mask, args, image, checkpoint)
        else:
            out = write_mask(mask.astype(np.uint8), image, args.output)
    except OSError as exc:
        raise VoxpromptError(f"output {args.output}: {exc}") from None
    _report(out, mask, pred)
    if args.overlay is not None:
        from ..viz.overlay import save_overlay

        focus = idx[0][0] if idx else (tuple((np.asarray(box_zyx[0][0]) + box_zyx[0][1]) // 2) if box_zyx else None)
        save_overlay(image, mask, args.overlay, point_zyx=focus, title=Path(args.image).name, clicks=idx,
                     neurological=getattr(args, "neurological", False))
        sys.stdout.write(f"wrote {args.overlay}\n")
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``info`` and ``segment`` on the main parser's subparsers."""
    series_help = ("DICOM folder with several series: the series to read, by SeriesInstanceUID or SeriesNumber "
                   "(default: the one with most slices; voxprompt info FOLDER lists them)")
    s = sub.add_parser("info", help="shape, spacing, orientation and intensity range of an image",
                       description="For a DICOM folder, also lists its series (UID, number, description, slices, "
                                   "size).")
    s.add_argument("image", help="NIfTI / NRRD / MHA file or DICOM folder")
    s.add_argument("--series", metavar="UID|NUMBER", help=series_help)
    s.set_defaults(func=cmd_info)

    s = sub.add_parser(
        "segment",
        help="segment a 3D image from point / box / mask prompts",
        description=(
            "Points are voxel indices in the IJK order 3D Slicer and ITK-SNAP show (i = x, the fastest "
            "axis), positive unless suffixed ':-'. Boxes are half-open IJK ranges. The output mask has "
            "the input's exact geometry. An empty result is written too, with a warning. A 3D model refuses "
            "a single slice (a 2D image, a one-frame DICOM file, a one-voxel-thick volume): use a 2D model. "
            "Prompt order: --mask-in first, then every --box in the order given, then every --point in the "
            "order given, then every --point-mm (a --point-mm typed before a --point still comes after it). "
            "--prompts FILE replays an ordered list of points, boxes and masks instead (JSON or CSV, IJK or "
            "mm, or a saved session's prompts; see docs/segment.md) and cannot be combined with --point, "
            "--point-mm, --box or --mask-in."
        ),
    )
    s.add_argument("image", help="input image")
    s.add_argument("-o", "--output", required=True,
                   help="output mask (.nii.gz, .nii, .nrrd, .mha); for a DICOM folder input also .dcm or a folder: "
                        "a DICOM SEG (or with --dicom-format rtstruct an RT Structure Set) referencing the source "
                        "instances (a path without an extension is a folder, made if needed; the SEG is "
                        "FOLDER/voxprompt_seg.dcm)")
    s.add_argument("--series", metavar="UID|NUMBER", help=series_help)
    add_dicom_output_arguments(s)
    from ..io.seg_codes import add_seg_code_arguments

    add_seg_code_arguments(s)
    s.add_argument("--point", action="append", metavar="I,J,K[:+|:-]",
                   help="voxel click (repeatable; applied after --mask-in and every --box, in the order given, "
                        "before every --point-mm)")
    s.add_argument("--point-mm", action="append", metavar="X,Y,Z[:+|:-]",
                   help="world click in mm (repeatable; write --point-mm=-10,5,3 for a leading minus; applied "
                        "last, after every --point, in the order given)")
    s.add_argument("--frame", choices=("LPS", "RAS"), default="LPS", help="world frame of --point-mm (default LPS)")
    s.add_argument("--box", action="append", metavar="I0,J0,K0,I1,J1,K1",
                   help="half-open IJK box (repeatable; applied after --mask-in, before every point, in the order "
                        "given)")
    s.add_argument("--prompts", metavar="FILE",
                   help="replay a saved interaction: a JSON or CSV file of points, boxes and masks in IJK or mm, "
                        "or a saved session (Session.save, .vps; on the image it was saved on), "
                        "applied in the file's order (object 1 only; not with --point, --point-mm, --box or "
                        "--mask-in; format in docs/segment.md and voxprompt/session/prompts.py)")
    s.add_argument("--mask-in", metavar="MASK", help="existing segmentation to start from")
    s.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"model name (default {DEFAULT_MODEL}: our compact SAM-Med3D-family model, shipped)")
    s.add_argument("--checkpoint", metavar="PATH", help="model weights (.pth or voxprompt .safetensors)")
    s.add_argument("--config-json", metavar="FILE", help="smaller models of a family: " + config_keys_help())
    s.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    s.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="inference precision (default fp32, exact); bf16 is faster on GPUs and, for the "
                        "decoder of the ViT-B-sized models, on CPUs with bf16 instructions")
    s.add_argument("--overlay", metavar="PNG",
                   help="also write three orthogonal slices with the mask and every click (radiological "
                        "convention: patient's left on the image's right, anterior up; orientation letters shown)")
    s.add_argument("--neurological", action="store_true",
                   help="--overlay with the patient's left on the image's left")
    s.add_argument("--autozoom", action=argparse.BooleanOptionalAction, default=AUTOZOOM_DEFAULT,
                   help="follow objects larger than the model's ROI: zoom out while the mask touches the ROI "
                        "border, then refine in overlapping tiles at full resolution (default: "
                        f"{'on' if AUTOZOOM_DEFAULT else 'off'})")
    s.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                   help="re-decide a band around the model's boundary at the image's resolution with a random "
                        "walker seeded by the model and the clicks (voxprompt.refine; default: the model's "
                        "stored setting, on for the default model, off for the official ones)")
    s.add_argument("--clean", action=argparse.BooleanOptionalAction, default=None,
                   help="keep only the parts of the mask connected to a positive click (or box centre) and fill "
                        "their holes; --no-clean keeps every component the model returned (default: the model's "
                        "stored setting, on for the default model, off for the official ones)")
    add_session_switches(s)
    from .segment2d import add_2d_arguments

    add_2d_arguments(s)
    s.set_defaults(func=cmd_segment)


__all__ = ["add_subcommands", "cmd_info", "cmd_segment", "config_keys_help"]
