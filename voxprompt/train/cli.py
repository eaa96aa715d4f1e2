"""``voxprompt train CONFIG.yaml``: run or resume a training run."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from .config import load_config


def cmd_train(args: argparse.Namespace) -> int:
    from .trainer import train

    cfg = load_config(args.config)
    changes = {k: v for k, v in (("out_dir", args.out), ("device", args.device)) if v is not None}
    if changes:
        cfg = dataclasses.replace(cfg, **changes)
    path = train(cfg, resume=not args.no_resume, steps=args.steps, progress=not args.quiet)
    sys.stdout.write(f"model: {path}\n")
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "train", help="train or fine-tune a model (3D, or the 2D SAM ViT-B / SAM-Med2D / SAM-UNet) from a YAML config",
        description="Train (or resume: the latest checkpoint in the run folder is picked up) a model. "
                    "Run under `torchrun --nproc_per_node N -m voxprompt train ...` for data-parallel training.")
    s.add_argument("config", help="training config (YAML, see configs/)")
    s.add_argument("--out", help="run folder (overrides out_dir)")
    s.add_argument("--device", help="cpu or cuda (overrides device)")
    s.add_argument("--steps", type=int, help="stop after this many steps (total; resume continues later)")
    s.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in the run folder")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_train)
