"""Measured error of the fast paths and of bf16 autocast against the reference computation, on
every golden fixture (tiny official models): max abs and relative L2 of the image embeddings and
of the low-res logits of each fixture prompt. Optionally (``--full``) on the full-size zoo models
with random weights. Prints a table, writes benchmarks/results/fast_parity.json.

    python benchmarks/fast_parity.py [--shared DIR] [--full sam-med3d,...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_utils import RESULTS, machine, write_json  # noqa: E402
from golden_configs import sam_config, sam_med2d_config, sam_med3d_config, sam_unet_config  # noqa: E402
from golden_paths import golden_dirs  # noqa: E402

import voxprompt  # noqa: E402
from voxprompt.models.fast import reference_mode  # noqa: E402

FIXTURES = {
    "sam_med3d_tiny": ("sam-med3d", sam_med3d_config, "image"),
    "sam_tiny": ("sam-vit-b", sam_config, "image_encoder_input"),
    "sam_med2d_tiny": ("sam-med2d", sam_med2d_config, "image"),
    "sam_unet_tiny": ("sam-unet", sam_unet_config, "image_encoder_input"),
}


def err(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    a, b = a.detach().double(), b.detach().double()
    return {"max_abs": (a - b).abs().max().item(), "rel_l2": ((a - b).norm() / b.norm()).item()}


def prompt_sets(g: dict, model: Any) -> list[dict[str, Any]]:
    if "points" in g:  # SAM-Med3D fixture: clicks 1 and 2 with a zero / previous-like mask
        d = model.spatial_dims
        mask = torch.zeros(1, 1, *([model.low_res_size] * d))
        return [{"points": (g["points"][:, :n], g["labels"][:, :n]), "mask_input": mask} for n in (1, 2)]
    out = []
    for case in ("a_box", "b_one_point", "c_two_points_with_mask"):
        p = g["prompts"][case]
        pts = None if p.get("point_coords") is None else (p["point_coords"], p["point_labels"])
        out.append({"points": pts, "boxes": p.get("boxes"), "mask_input": p.get("mask_inputs")})
    return out


def compare(model: Any, image: torch.Tensor, prompts: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Fast fp32 and bf16 (fast paths) against the reference fp32 computation."""
    rows: dict[str, dict[str, float]] = {}

    def outputs() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        emb = model.encode(image)
        embs = list(emb.values()) if isinstance(emb, dict) else [emb]
        return embs, [model.decode(emb, **p)[0] for p in prompts]

    with torch.no_grad():
        with reference_mode():
            ref_e, ref_l = outputs()
        fast_e, fast_l = outputs()
        model.set_precision("bf16")
        try:
            bf_e, bf_l = outputs()
        finally:
            model.set_precision("fp32")
    for tag, e, low in (("fast_fp32", fast_e, fast_l), ("fast_bf16", bf_e, bf_l)):
        worst_e = [err(a, b) for a, b in zip(e, ref_e)]
        worst_l = [err(a, b) for a, b in zip(low, ref_l)]
        rows[tag] = {
            "embedding_max_abs": max(w["max_abs"] for w in worst_e),
            "embedding_rel_l2": max(w["rel_l2"] for w in worst_e),
            "logits_max_abs": max(w["max_abs"] for w in worst_l),
            "logits_rel_l2": max(w["rel_l2"] for w in worst_l),
        }
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=None,
                    help="a shared/ folder whose golden/ holds the fixtures (default: $VOXPROMPT_SHARED, "
                         "else tests/golden/ in this repository)")
    ap.add_argument("--full", default="", help="also full-size zoo models (random weights), comma-separated")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict[str, Any] = {}
    golden = golden_dirs(args.shared)[0]
    for fixture, (name, cfg_fn, key) in FIXTURES.items():
        g = torch.load(golden / f"{fixture}.pt", weights_only=True)
        sd = {k: v.contiguous() for k, v in g["state_dict"].items()}
        model = voxprompt.load_model(name, sd, config=cfg_fn(g["config"]))
        result[fixture] = compare(model, g[key].float(), prompt_sets(g, model))
    for name in filter(None, args.full.split(",")):
        model = voxprompt.load_model(name, pretrained=False)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():  # non-zero rel-pos tables and pos_embed (zero in the official init)
            for n, p in model.named_parameters():
                if "rel_pos" in n or "pos_embed" in n:
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        d, size = model.spatial_dims, model.img_size
        image = torch.randn(1, model.in_chans, *([size] * d), generator=gen)
        pts = (torch.rand(1, 2, d, generator=gen) * (size - 1), torch.tensor([[1, 0]]))
        result[f"{name} (full size, random)"] = compare(model, image, [{"points": pts}])
    print(f"{'model':34s} {'variant':10s} {'emb max abs':>12s} {'emb rel L2':>11s} "
          f"{'logit max abs':>14s} {'logit rel L2':>13s}")
    for model_name, rows in result.items():
        for tag, r in rows.items():
            print(f"{model_name:34s} {tag:10s} {r['embedding_max_abs']:12.2e} {r['embedding_rel_l2']:11.2e} "
                  f"{r['logits_max_abs']:14.2e} {r['logits_rel_l2']:13.2e}")
    write_json(RESULTS / "fast_parity.json", {"benchmark": "fast_parity", "machine": machine("cpu"),
                                              "reference": "reference_mode() fp32", "results": result})


if __name__ == "__main__":
    main()
