"""``voxprompt export-onnx NAME OUT_DIR``: image encoder and prompt decoder as ONNX graphs."""
from __future__ import annotations

import argparse
import sys

from ..errors import UsageError


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from ..models.loading import load_model, shipped_weights
    from ..models.onnx import export_onnx

    if args.random_weights and args.checkpoint is not None:
        raise UsageError("give either --checkpoint or --random-weights, not both")
    if args.checkpoint is None and not args.random_weights and shipped_weights(args.name) is None:
        raise UsageError(f"no weights are shipped for {args.name}; give a checkpoint with --checkpoint PATH "
                         "(or --random-weights to export a randomly initialised model on purpose)")
    model = load_model(args.name, args.checkpoint, trust_pickle=args.trust_pickle, pretrained=not args.random_weights)
    paths = export_onnx(model, args.out_dir, name=args.name, multimask=args.multimask, opset=args.opset)
    for kind in ("encoder", "decoder", "spec"):
        sys.stdout.write(f"wrote {paths[kind]}\n")
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "export-onnx",
        help="export a model's image encoder and prompt decoder to ONNX",
        description="Write OUT_DIR/NAME.encoder.onnx (image -> embedding, dynamic batch), "
                    "OUT_DIR/NAME.decoder.onnx (embedding + points/labels/mask_input -> low-res logits, "
                    "any number of points) and NAME.onnx.json describing the inputs. Without "
                    "--checkpoint the weights shipped for NAME are exported; a model without shipped weights "
                    "needs --checkpoint (or --random-weights, for a randomly initialised model on purpose).",
    )
    s.add_argument("name", help="zoo model name (voxprompt models)")
    s.add_argument("out_dir", help="output folder")
    s.add_argument("--checkpoint", help="weights (.pth/.pt official layouts or voxprompt .safetensors; default: "
                                        "the weights shipped for NAME, if any)")
    s.add_argument("--random-weights", action="store_true",
                   help="export a randomly initialised model (official initialisation), e.g. to test a runtime")
    s.add_argument("--multimask", action="store_true", help="decoder returns the 3 multimask outputs")
    s.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    s.add_argument("--trust-pickle", action="store_true", help="allow full pickle for a trusted legacy file")
    s.set_defaults(func=cmd_export_onnx)
