"""``voxprompt train CONFIG.yaml``: run or resume a training run."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from ..errors import UsageError
from .config import load_config


def cmd_train(args: argparse.Namespace) -> int:
    from .trainer import Trainer

    cfg = load_config(args.config)
    changes = {k: v for k, v in (("out_dir", args.out), ("device", args.device)) if v is not None}
    if changes:
        cfg = dataclasses.replace(cfg, **changes)
    if args.steps is not None and args.steps <= 0:
        raise UsageError(f"--steps must be positive, got {args.steps}")
    trainer = Trainer(cfg)
    if not args.no_resume:
        trainer.resume()
    done, stop = trainer.step, args.steps if args.steps is not None else cfg.steps
    path = trainer.fit(args.steps, progress=not args.quiet)
    if done >= stop and done >= cfg.steps:  # nothing was trained: say so instead of a silent "done/done"
        sys.stdout.write(f"run {cfg.out_dir} is complete: step {done} of the config's {cfg.steps}; nothing trained. "
                         f"To train longer: --steps N with N > {done} (the steps past {cfg.steps} run at the "
                         "schedule's final learning rate), or raise steps in the config\n")
    elif done >= stop:
        sys.stdout.write(f"run {cfg.out_dir} is already at step {done} (--steps {stop}; the config's steps: "
                         f"{cfg.steps}); nothing trained. Run without --steps, or with a larger one, to continue\n")
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
    s.add_argument("--steps", type=int, metavar="N",
                   help="stop at step N (total; resume continues later). N past the config's steps extends the "
                        "run at the schedule's final learning rate; on a complete run, N greater than the steps "
                        "done trains the difference")
    s.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in the run folder")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_train)
