"""``voxprompt eval``: interactive click-protocol evaluation of a model on a labelled dataset.

Under ``torchrun --nproc_per_node N -m voxprompt eval ...`` (``WORLD_SIZE`` > 1) every rank takes
``targets[rank::N]``; rank 0 gathers the rows and writes the report, the other ranks write nothing.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any

from voxprompt.errors import UsageError
from voxprompt.eval.switches import add_session_switches, session_switches
from voxprompt.io.image import SLICE_AXES
from voxprompt.models.family import spatial_dims
from voxprompt.runtime import Dist, check_device

log = logging.getLogger(__name__)

BASELINE = "random-walker"
CLI_PROTOCOLS = ("cvpr25", "sam-med3d", "sam-med2d")


def _sha256_prefix(path: str, n: int = 12) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def _check_args(args: argparse.Namespace) -> str | None:
    """Validate everything that needs no data or model; returns the checkpoint path (or None)."""
    from voxprompt.eval.report import check_report_dir

    if not Path(args.data).is_dir():
        raise UsageError(f"--data {args.data}: no such folder")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    if args.clicks is not None and args.clicks < 1:
        raise UsageError(f"--clicks must be >= 1, got {args.clicks}")
    if not args.click_noise >= 0 or args.click_noise == float("inf"):
        raise UsageError(f"--click-noise must be a finite number of mm >= 0, got {args.click_noise}")
    check_device(args.device, ("cpu", "cuda"), "--device")
    dims = 3 if args.model == BASELINE else spatial_dims(args.model)
    if args.protocol == "sam-med2d" and dims == 3:
        raise UsageError(f"the sam-med2d protocol is for 2D models; {args.model} is 3D: use "
                         "--protocol cvpr25 or sam-med3d")
    if args.slices < 1:
        raise UsageError(f"--slices must be >= 1, got {args.slices}")
    rw_beta = getattr(args, "rw_beta", None)
    if rw_beta is not None and not (0 < rw_beta < float("inf")):
        raise UsageError(f"--rw-beta must be a finite number > 0, got {rw_beta}")
    check_report_dir(Path(args.out), args.force)
    if args.model == BASELINE:
        if args.checkpoint:
            log.warning("--checkpoint is ignored by the %s baseline", BASELINE)
        return None
    if rw_beta is not None:
        log.warning("--rw-beta is ignored by %s (only the %s baseline has a beta)", args.model, BASELINE)
    from voxprompt.models.loading import resolve_checkpoint

    return resolve_checkpoint(args.model, args.checkpoint)


def _factory(args: argparse.Namespace, ckpt: str | None, device: str) -> tuple[Any, dict]:
    """The engine factory and the settings it resolved, for the report (the refinement band)."""
    from voxprompt.eval.runner import random_walker_factory, session_factory

    if args.model == BASELINE:
        from voxprompt.eval.baseline import RandomWalkerConfig

        beta = getattr(args, "rw_beta", None)
        config = RandomWalkerConfig() if beta is None else RandomWalkerConfig(beta=beta)
        return random_walker_factory(config), {"rw_beta": config.beta}
    from voxprompt.models.loading import load_model

    model = load_model(args.model, ckpt, device=device).set_precision(getattr(args, "precision", "fp32"))
    if spatial_dims(args.model) == 2:  # a 2D model on 3D targets: prompt a slice, propagate
        from voxprompt.eval.runner2d import slice_session_factory

        return slice_session_factory(model, axis=SLICE_AXES[args.slice_axis], device=device), {}
    from voxprompt.cleanup import resolve_clean
    from voxprompt.refine import resolve_refine

    refine = resolve_refine(args.refine, model.cfg)
    clean = resolve_clean(getattr(args, "clean", None), model.cfg)
    factory = session_factory(model, device=device, autozoom=args.autozoom, refine=refine or False, clean=clean,
                              **session_switches(args))
    return factory, {"refine_band_mm": refine.band_mm if refine else 0.0, "clean": clean,
                     **session_switches(args)}  # None: the model's stored setting


def _run_eval(
    args: argparse.Namespace, ckpt: str | None, device: str, targets: list, **kw: Any
) -> tuple[list[dict], dict]:
    """Rows of one rank (the SAM-Med2D slice protocol, or a click protocol through a session) and
    the resolved settings to report."""
    if args.protocol == "sam-med2d":
        from voxprompt.eval.runner2d import evaluate_slices
        from voxprompt.models.loading import load_model

        model = load_model(args.model, ckpt, device=device)
        rows = evaluate_slices(targets, model, args.seed, n_clicks=args.clicks, use_box=not args.no_box,
                               click_noise_mm=args.click_noise, axis=SLICE_AXES[args.slice_axis],
                               slices=args.slices, device=device, **kw)
        return rows, {}
    from voxprompt.eval.runner import evaluate

    factory, settings = _factory(args, ckpt, device)
    rows = evaluate(targets, factory, args.protocol, args.seed, n_clicks=args.clicks,
                    use_box=not args.no_box, click_noise_mm=args.click_noise, **kw)
    return rows, settings


def _machine(device: str) -> str:
    import torch

    desc = f"{platform.node()} ({platform.platform()}, {os.cpu_count()} CPUs"
    if device.startswith("cuda"):
        desc += f", {torch.cuda.get_device_name(torch.device(device))}"
    return desc + ")"


def _gather(dist: Dist, payload: dict) -> list[dict]:
    if dist.world == 1:
        return [payload]
    import torch.distributed as tdist

    out: list[Any] = [None] * dist.world
    tdist.all_gather_object(out, payload)
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from voxprompt.eval.report import Extremes, Report

    ckpt = _check_args(args)
    dist = Dist.from_env()
    device = args.device
    if dist.world > 1:
        import torch.distributed as tdist

        if device == "cuda":
            device = f"cuda:{dist.local_rank}"
            torch.cuda.set_device(torch.device(device))
        tdist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    try:
        from voxprompt.data.readers import load_target, open_dataset

        targets = list(open_dataset(args.data, split=None if args.targets == "all" else args.targets))
        if getattr(args, "only", None):
            targets = select_targets(targets, args.only, args.targets)
        if args.limit is not None:
            targets = targets[:args.limit]
        if not targets:
            hint = "" if args.targets == "all" else " (targets without a split need --targets all)"
            raise UsageError(f"--data {args.data}: no {args.targets} targets{hint}")
        order = {(t.case, int(t.label)): i for i, t in enumerate(targets)}
        extremes, error = Extremes(), None
        rows: list[dict] = []
        settings: dict = {}
        try:
            rows, settings = _run_eval(args, ckpt, device, targets[dist.rank::dist.world], loader=load_target,
                             on_result=extremes.add, progress=dist.rank == 0)
        except Exception as exc:  # other ranks must still reach the gather
            if dist.world == 1:
                raise
            error = exc
        parts = _gather(dist, {"rows": rows, "extremes": extremes, "error": error})
    finally:
        if dist.world > 1:
            import torch.distributed as tdist

            tdist.destroy_process_group()
    if dist.rank != 0:
        return 0  # rank 0 reports any error and sets the job's exit status
    errors = [p["error"] for p in parts if p["error"] is not None]
    if errors:
        raise errors[0]
    rows = sorted((r for p in parts for r in p["rows"]), key=lambda r: order[(r["case"], r["label"])])
    for p in parts[1:]:
        extremes.merge(p["extremes"])
    meta = {
        "protocol": args.protocol, "n_clicks": rows[0]["n_clicks"],
        "use_box": any(r["box"] is not None for r in rows), "click_noise_mm": args.click_noise,
        "model": args.model, "checkpoint": ckpt, "checkpoint_sha256": _sha256_prefix(ckpt) if ckpt else None,
        "seed": args.seed, "data": str(args.data), "targets": args.targets, "n_targets": len(rows),
        **({"only": list(args.only)} if getattr(args, "only", None) else {}),
        "device": args.device, "precision": None if args.model == BASELINE else getattr(args, "precision", "fp32"),
        "autozoom": bool(getattr(args, "autozoom", False)), "refine_band_mm": settings.get("refine_band_mm"),
        "clean": settings.get("clean"),
        **({"rw_beta": settings["rw_beta"]} if "rw_beta" in settings else {}),
        "world_size": dist.world, "machine": _machine(device),
        **_meta_2d(args),
        "torch": torch.__version__, "voxprompt": _version(), "python": platform.python_version(),
        "started": started, "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(args.out)
    Report(rows, meta, extremes).write(out, {(t.case, int(t.label)): t for t in targets}, load_target)
    import numpy as np

    d = np.asarray([r["final_dice"] for r in rows], dtype=float)
    sys.stdout.write(f"wrote {out} ({len(rows)} targets, final Dice {np.nanmean(d):.3f})\n")
    return 0


def select_targets(targets: list, names: list[str], split: str) -> list:
    """The targets ``--only`` names, in the dataset's order: a structure name (every case's), ``CASE:NAME``
    or ``CASE:LABEL_ID`` (names case-insensitive). An unknown name is a usage error listing a few available."""
    def keys(t: Any) -> set[str]:
        return {t.name.lower(), f"{t.case}:{t.name}".lower(), f"{t.case}:{int(t.label)}".lower()}

    wanted = [n.strip() for n in names]
    unknown = [n for n in wanted if not any(n.lower() in keys(t) for t in targets)]
    if unknown:
        avail = sorted({t.name for t in targets})
        shown = ", ".join(avail[:8]) + (f" and {len(avail) - 8} more" if len(avail) > 8 else "")
        where = "" if split == "all" else f" in the {split} split (--targets all searches every split)"
        raise UsageError(f"--only {' '.join(unknown)}: no such target{where}; available: {shown or 'none'} "
                         "(a structure name, CASE:NAME or CASE:LABEL_ID)")
    lowered = {n.lower() for n in wanted}
    return [t for t in targets if keys(t) & lowered]


def _meta_2d(args: argparse.Namespace) -> dict:
    """Report settings specific to 2D models (slice direction, slices per target)."""
    if args.model == BASELINE or spatial_dims(args.model) != 2:
        return {}
    meta = {"slice_axis": args.slice_axis}
    if args.protocol == "sam-med2d":
        meta["slices_per_target"] = args.slices
    return meta


def _version() -> str:
    from voxprompt import __version__

    return __version__


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``eval`` on the main parser's subparsers."""
    s = sub.add_parser(
        "eval",
        help="evaluate a model (or the random-walker baseline) with a simulated click protocol",
        description=(
            "Run the CVPR 2025 (box + 5 clicks) or SAM-Med3D (10 clicks) protocol on every target of an "
            "nnU-Net v2 raw dataset and write results.csv/json, summary.md and plots to --out. 2D models run "
            "on the volumes slice by slice (prompt a slice, propagate), or with --protocol sam-med2d on slices "
            "of each target (box, then 5 iterative points). Launch "
            "with torchrun --nproc_per_node N -m voxprompt eval ... to shard targets over N processes."
        ),
    )
    s.add_argument("--model", required=True, help=f"zoo model name, or {BASELINE} (classical baseline)")
    s.add_argument("--checkpoint", metavar="PATH", help="model weights (.pth or voxprompt .safetensors)")
    s.add_argument("--data", required=True, metavar="DIR", help="dataset folder (nnU-Net v2 raw, Decathlon, SAM-Med3D)")
    s.add_argument("--protocol", required=True, choices=CLI_PROTOCOLS, help="click protocol")
    s.add_argument("--out", required=True, metavar="REPORT_DIR", help="report folder (new or empty)")
    s.add_argument("--targets", choices=("test", "val", "train", "all"), default="test",
                   help="split (default test; val: the validation split that selects checkpoints)")
    s.add_argument("--only", nargs="+", metavar="NAME",
                   help="only these targets of the --targets split: structure names (every case's), CASE:NAME or "
                        "CASE:LABEL_ID; an unknown name is an error listing available ones")
    s.add_argument("--limit", type=int, metavar="N", help="first N targets only")
    s.add_argument("--seed", type=int, default=0, help="seed of the random clicks (default 0)")
    s.add_argument("--clicks", type=int, metavar="N",
                   help="clicks per target (default 5 cvpr25, 10 sam-med3d, 5 sam-med2d)")
    s.add_argument("--click-noise", type=float, default=0.0, metavar="MM", help="Gaussian click jitter sigma in mm")
    s.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    s.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="model precision (default fp32; the random walker ignores it)")
    s.add_argument("--autozoom", action="store_true",
                   help="3D sessions use the auto-zoom ROI planner (zoom out + tiles for large structures)")
    s.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                   help="3D sessions: boundary refinement at the image's resolution (voxprompt.refine; "
                        "default: the model's stored setting)")
    s.add_argument("--clean", action=argparse.BooleanOptionalAction, default=None,
                   help="3D sessions: keep only the mask's parts connected to a positive click or box centre, "
                        "holes filled; --no-clean keeps every component (voxprompt.cleanup; default: the model's "
                        "stored setting)")
    add_session_switches(s, "3D sessions: ")
    s.add_argument("--no-box", action="store_true",
                   help="cvpr25 without the initial box (the random walker then takes clicks only; with the box "
                        "it runs its box mode, voxprompt.eval.baseline); sam-med2d without box mode")
    s.add_argument("--rw-beta", type=float, metavar="BETA",
                   help="random-walker baseline: edge penalty beta (default 500; 2000 was tuned on the training "
                        "structures, docs/default-model.md)")
    s.add_argument("--slice-axis", choices=tuple(SLICE_AXES), default="k",
                   help="2D models: slice direction, IJK (default k = the array's first axis)")
    s.add_argument("--slices", type=int, default=3, metavar="N",
                   help="sam-med2d: slices evaluated per target (default 3: through the centre of mass, then spread)")
    s.add_argument("--force", action="store_true", help="overwrite a non-empty --out folder")
    s.set_defaults(func=cmd_eval)


__all__ = ["add_subcommands", "cmd_eval", "select_targets"]
