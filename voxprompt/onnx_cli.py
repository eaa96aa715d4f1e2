"""``voxprompt export-onnx NAME OUT_DIR``: image encoder and prompt decoder as ONNX graphs."""
from __future__ import annotations

import argparse
import sys


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from .models.loading import load_model
    from .onnx_export import export_onnx

    model = load_model(args.name, args.checkpoint, trust_pickle=args.trust_pickle)
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
                    "--checkpoint the shipped weights (or random initialisation) are exported.",
    )
    s.add_argument("name", help="zoo model name (voxprompt models)")
    s.add_argument("out_dir", help="output folder")
    s.add_argument("--checkpoint", help="weights (.pth/.pt official layouts or voxprompt .safetensors)")
    s.add_argument("--multimask", action="store_true", help="decoder returns the 3 multimask outputs")
    s.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    s.add_argument("--trust-pickle", action="store_true", help="allow full pickle for a trusted legacy file")
    s.set_defaults(func=cmd_export_onnx)
