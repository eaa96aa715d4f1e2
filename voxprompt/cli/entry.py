"""Command line: ``voxprompt models | convert | info | segment ...``.

Exit codes: 0 success, 2 usage error (bad option, unknown name), 3 data error (unreadable
file, wrong checkpoint, bad image). Errors print one line, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from ..errors import UsageError, VoxpromptError
from ..models.config import FLIP_ENSEMBLES

log = logging.getLogger("voxprompt")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: exit 2, one line
        raise UsageError(f"{self.prog}: {message}")


def cmd_models(args: argparse.Namespace) -> int:
    from ..models.zoo import ZOO

    for spec in ZOO.values():
        files = f"  [{', '.join(spec.official_files)}]" if spec.official_files else ""
        sys.stdout.write(f"{spec.name:16s} {spec.description}{files}\n")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ..models.loading import convert_checkpoint

    path, name = convert_checkpoint(args.checkpoint, args.output, name=args.model, trust_pickle=args.trust_pickle,
                                    roi_spacing_mm=args.roi_spacing, refine_band_mm=args.refine_band,
                                    multimask_first=args.multimask_first, flip_ensemble=args.flip_ensemble)
    sys.stdout.write(f"wrote {path} ({name})\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="voxprompt", description="Promptable medical image segmentation.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("models", help="list the model zoo")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser(
        "convert",
        help="convert an official checkpoint to voxprompt safetensors",
        description=(
            "Read an official checkpoint (SAM, SAM-Med3D, SAM-Med2D, SAM-UNet layouts), check that it "
            "loads strictly, and write OUT.safetensors. --trust-pickle opens files holding pickled "
            "Python objects (SAM-Med2D/SAM-UNet store their optimizer object): full pickle can run "
            "arbitrary code, so use it only on files from a source you trust."
        ),
    )
    s.add_argument("checkpoint", help="input .pth/.pt/.safetensors")
    s.add_argument("output", help="output .safetensors")
    s.add_argument("--model", help="architecture name (default: detected from the weights)")
    s.add_argument("--trust-pickle", action="store_true", help="allow full pickle for a trusted legacy file")
    s.add_argument("--roi-spacing", type=float, metavar="MM",
                   help="3D models: inference ROI spacing in mm to store with the weights (default: keep)")
    s.add_argument("--refine-band", type=float, metavar="MM",
                   help="3D models: default boundary refinement band in mm to store with the weights "
                        "(0 = off; default: keep)")
    s.add_argument("--multimask-first", action=argparse.BooleanOptionalAction, default=None,
                   help="3D models: store that a first click chooses among the multimask outputs by predicted "
                        "IoU (only for weights trained for it; default: keep)")
    s.add_argument("--flip-ensemble", type=int, choices=FLIP_ENSEMBLES, default=None,
                   help="3D models: store how many mirror images of each ROI a session runs the model on and "
                        "averages (1 = off; default: keep)")
    s.set_defaults(func=cmd_convert)

    from .segment import add_subcommands

    add_subcommands(sub)  # info, segment
    from ..eval.cli import add_subcommands as add_eval_subcommands
    add_eval_subcommands(sub)  # eval
    from ..data.cli import add_subcommands as add_data_subcommands
    add_data_subcommands(sub)  # data build, data list
    from ..server.cli import add_subcommands as add_server_subcommands
    add_server_subcommands(sub)  # serve
    from ..train.cli import add_subcommands as add_train_subcommands
    add_train_subcommands(sub)  # train
    from .onnx import add_subcommands as add_onnx_subcommands
    add_onnx_subcommands(sub)  # export-onnx
    _add_verbose(p)
    return p


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    """``-v/--verbose`` on every (sub)command too: ``voxprompt serve -v`` = ``voxprompt -v serve``.

    The subcommands' flag has no default (SUPPRESS), so it never resets the main parser's value."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_verbose(child)
    if "-v" not in parser._option_string_actions and "--verbose" not in parser._option_string_actions:
        parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                            help="log progress to stderr (same as voxprompt -v)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
        from ..runtime import configure_cpu_allocator

        configure_cpu_allocator()  # the app owns its process: no page faults on each click's temporaries
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except VoxpromptError as exc:
        sys.stderr.write(f"voxprompt: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("voxprompt: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
