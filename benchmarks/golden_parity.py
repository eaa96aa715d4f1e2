"""Measure voxprompt against every golden fixture (official code, fp32 CPU): max abs and
relative L2 error per output. Prints a table and writes benchmarks/results/golden_parity.json.

    python benchmarks/golden_parity.py [--shared DIR] [--fast]

Runs in ``reference_mode()`` (the official computation); ``--fast`` measures the default fast paths
(equal within fp32 rounding) and writes golden_parity_fast.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from golden_configs import sam_config, sam_med2d_config, sam_med3d_config, sam_unet_config  # noqa: E402
from golden_paths import golden_dirs  # noqa: E402

import voxprompt  # noqa: E402


def err(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    a, b = a.double(), b.double()
    return (a - b).abs().max().item(), ((a - b).norm() / b.norm()).item()


def prompts(p: dict):
    points = None if p.get("point_coords") is None else (p["point_coords"], p["point_labels"])
    return points, p.get("boxes"), p.get("mask_inputs")


def run(golden: Path) -> list[dict]:
    rows = []

    def add(fixture: str, output: str, a: torch.Tensor, b: torch.Tensor) -> None:
        mx, rel = err(a, b)
        rows.append({"fixture": fixture, "output": output, "max_abs": mx, "rel_l2": rel})

    with torch.no_grad():
        g = torch.load(golden / "sam_med3d_tiny.pt", weights_only=True)
        m = voxprompt.load_model("sam-med3d", g["state_dict"], config=sam_med3d_config(g["config"]))
        emb = m.encode(g["image"].float())
        add("sam_med3d_tiny", "image_embeddings", emb, g["outputs"]["image_embeddings"])
        cases = g["intermediates"]["cases"]
        spec = {
            "a_click1_nomask": (slice(0, 1), None, False),
            "b_click2_prevmask": (slice(0, 2), cases["a_click1_nomask"]["low_res_masks"], False),
            "o1_click1_zeromask": (slice(0, 1), torch.zeros(1, 1, 32, 32, 32), False),
            "o2_click2_accum_prevmask": (slice(0, 2), cases["o1_click1_zeromask"]["low_res_masks"], False),
            "o2b_click2_newonly_prevmask": (slice(1, 2), cases["o1_click1_zeromask"]["low_res_masks"], False),
            "a_click1_nomask_multimask": (slice(0, 1), None, True),
        }
        for case, (sl, mask, multi) in spec.items():
            low, iou = m.decode(emb, points=(g["points"][:, sl], g["labels"][:, sl]), mask_input=mask, multimask=multi)
            add("sam_med3d_tiny", f"{case}.low_res_masks", low, cases[case]["low_res_masks"])
            add("sam_med3d_tiny", f"{case}.iou_predictions", iou, cases[case]["iou_predictions"])

        g = torch.load(golden / "sam_tiny.pt", weights_only=True)
        m = voxprompt.load_model("sam-vit-b", g["state_dict"], config=sam_config(g["config"]))
        emb = m.encode(g["image_encoder_input"])
        add("sam_tiny", "image_embeddings", emb, g["outputs"]["image_embeddings"])
        for case in ("a_box", "b_one_point", "c_two_points_with_mask"):
            pts, box, mask = prompts(g["prompts"][case])
            out = g["outputs"][case]
            low, iou = m.decode(emb, points=pts, boxes=box, mask_input=mask, multimask=out["multimask_output"])
            add("sam_tiny", f"{case}.low_res_masks", low, out["low_res_masks"])
            add("sam_tiny", f"{case}.iou_predictions", iou, out["iou_predictions"])

        g = torch.load(golden / "sam_med2d_tiny.pt", weights_only=True)
        sd = {k: v.contiguous() for k, v in g["state_dict"].items()}
        m = voxprompt.load_model("sam-med2d", sd, config=sam_med2d_config(g["config"]))
        emb = m.encode(g["image"])
        add("sam_med2d_tiny", "image_embeddings", emb, g["outputs"]["image_embeddings"])
        for case in ("a_box", "b_one_point", "c_two_points_with_mask", "c_logits_variant"):
            pts, box, mask = prompts(g["prompts"][case])
            out = g["outputs"][case]
            low, iou = m.decode(emb, points=pts, boxes=box, mask_input=mask, multimask=True)
            add("sam_med2d_tiny", f"{case}.low_res_masks_multimask", low, out["low_res_masks_multimask"])
            add("sam_med2d_tiny", f"{case}.iou_predictions_multimask", iou, out["iou_predictions_multimask"])

        g = torch.load(golden / "sam_unet_tiny.pt", weights_only=True)
        sd = {k: v.contiguous() for k, v in g["state_dict"].items()}
        m = voxprompt.load_model("sam-unet", sd, config=sam_unet_config(g["config"]))
        emb = m.encode(g["image_encoder_input"])
        add("sam_unet_tiny", "image_embeddings", emb["image_embeddings"], g["outputs"]["image_embeddings"])
        add("sam_unet_tiny", "multi_scale_feature", emb["multi_scale_feature"], g["outputs"]["multi_scale_feature"])
        for case in ("a_box", "b_one_point", "c_two_points_with_mask"):
            pts, box, mask = prompts(g["prompts"][case])
            low, _ = m.decode(emb, points=pts, boxes=box, mask_input=mask)
            add("sam_unet_tiny", f"{case}.low_res_masks", low, g["outputs"][case]["low_res_masks"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", type=Path, default=None,
                    help="a shared/ folder whose golden/ holds the fixtures (default: $VOXPROMPT_SHARED, "
                         "else tests/golden/ in this repository)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--fast", action="store_true", help="measure the fast paths instead of reference mode")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from voxprompt.models.fast import reference_mode

    with reference_mode(not args.fast):
        rows = run(golden_dirs(args.shared)[0])
    name = "golden_parity_fast.json" if args.fast else "golden_parity.json"
    args.out = args.out or ROOT / "benchmarks" / "results" / name
    print(f"{'fixture':16s} {'output':45s} {'max abs':>10s} {'rel L2':>10s}")
    for r in rows:
        print(f"{r['fixture']:16s} {r['output']:45s} {r['max_abs']:10.2e} {r['rel_l2']:10.2e}")
    summary = {}
    for r in rows:
        s = summary.setdefault(r["fixture"], {"max_abs": 0.0, "max_rel_l2": 0.0})
        s["max_abs"] = max(s["max_abs"], r["max_abs"])
        s["max_rel_l2"] = max(s["max_rel_l2"], r["rel_l2"])
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "mode": "fast paths" if args.fast else "reference_mode()",
        "summary": summary,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print("max per fixture:", json.dumps(summary))


if __name__ == "__main__":
    main()
