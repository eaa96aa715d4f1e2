"""Choose a 3D model's inference ROI spacing: the same click protocol at several spacings.

A model trained on ROIs of several spacings (the default model: 1.5 mm x U(0.8, 2.0), i.e.
1.2-3.0 mm) need not work best at the lower end. This runs protocol ``cvpr25`` (5 clicks, no
box) through a fresh Session per target at each spacing (``roi_spacing_mm`` of the model
config; the window is ``img_size`` voxels of that spacing) and prints DSC AUC, final Dice, Dice per
click and final Dice per structure group. The model runs alone: no boundary refinement (it is chosen
afterwards, at the chosen spacing, by ``refine_band.py``). Select on the **training** structures
(the default, ``--targets train``) and report on the held-out ones, never the other way round.

    python benchmarks/roi_spacing.py --data data/real --targets train --spacings 1.5,2,2.5,3
    python benchmarks/roi_spacing.py --data data/real --targets test --spacings 1.5,2.5 \
        --out benchmarks/results/roi_spacing_test.json

Writes ``benchmarks/results/roi_spacing_<targets>.json`` unless ``--out`` says otherwise.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_model import add_sweep_arguments, summarise  # noqa: E402  (same means and groups as the model-vs-baseline table)

RESULTS = Path(__file__).resolve().parent / "results"


def run(args: argparse.Namespace) -> dict:
    import torch

    from voxprompt.data.readers import load_target, open_dataset
    from voxprompt.eval.report import add_groups
    from voxprompt.eval.runner import evaluate, session_factory
    from voxprompt.models.loading import load_model, shipped_weights

    torch.set_num_threads(args.threads)
    ckpt = args.checkpoint or shipped_weights(args.model)
    base = load_model(args.model, ckpt)
    targets = list(open_dataset(args.data, split=None if args.targets == "all" else args.targets))
    if args.limit:
        targets = targets[:args.limit]
    out = {}
    for spacing in args.spacings:
        model = load_model(args.model, ckpt, config={**base.cfg.to_dict(), "roi_spacing_mm": spacing})
        rows = evaluate(targets, session_factory(model, refine=False), "cvpr25", args.seed, n_clicks=args.clicks,
                        use_box=False, loader=load_target, progress=True)
        add_groups(rows)
        out[f"{spacing:g}"] = {"spacing_mm": spacing, "field_of_view_mm": spacing * model.img_size, **summarise(rows)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sweep_arguments(p)
    p.add_argument("--spacings", default="1.5,2,2.5,3", help="comma-separated mm")
    p.add_argument("--out", help="JSON path (default benchmarks/results/roi_spacing_<targets>.json)")
    args = p.parse_args()
    args.spacings = [float(s) for s in args.spacings.split(",")]
    results = run(args)
    print(f"{'spacing':>7s} {'FOV mm':>6s} {'n':>3s} {'DSC AUC':>8s} {'final DSC':>9s}  "
          "Dice per click  | final DSC by group")
    for r in results.values():
        clicks = " ".join(f"{d:.3f}" for d in r["dice_per_click"])
        groups = ", ".join(f"{g} {v:.3f}" for g, v in r["final_dice_by_group"].items())
        print(f"{r['spacing_mm']:7.2f} {r['field_of_view_mm']:6.0f} {r['n']:3d} {r['dsc_auc']:8.3f} "
              f"{r['final_dice']:9.3f}  {clicks}  | {groups}")
    best = max(results.values(), key=lambda r: r["dsc_auc"])
    print(f"best DSC AUC on the {args.targets} targets: {best['spacing_mm']:g} mm")
    out = Path(args.out) if args.out else RESULTS / f"roi_spacing_{args.targets}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"benchmark": "roi_spacing", "protocol": "cvpr25 (no box)", "data": args.data, "targets": args.targets,
            "model": args.model, "checkpoint": args.checkpoint or "shipped", "seed": args.seed, "refine": False,
            "machine": f"{platform.node()} {platform.platform()}", "best_by_dsc_auc_mm": best["spacing_mm"]}
    out.write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
