"""Choose the default model's checkpoint on the validation split (never the held-out one).

Runs the CVPR 2025 protocol (5 clicks, no box) on the ``val`` targets (a CT patient that is neither
trained on nor held out: ``voxprompt data build`` source ``totalseg_val``) for each candidate, at one
inference setting (ROI spacing, refinement band) given here for all of them, prints a table and
writes ``benchmarks/results/select_checkpoint.json``. The best candidate is the one with the highest
DSC AUC + NSD AUC, the sum the inference settings were chosen by.

    python benchmarks/select_checkpoint.py --candidates shipped runs/default-stage10/model.safetensors \\
        --roi-spacing 2.25 --refine-band 9
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_model import print_table, summarise  # noqa: E402  (the same means and groups as the main table)

from voxprompt.models.config import FLIP_ENSEMBLES  # noqa: E402  (imports no torch)

RESULTS = Path(__file__).resolve().parent / "results"


def run(args: argparse.Namespace) -> dict:
    import torch

    from voxprompt.data.readers import load_target, open_dataset
    from voxprompt.eval.report import add_groups
    from voxprompt.eval.runner import evaluate, session_factory
    from voxprompt.models.loading import load_model, shipped_weights
    from voxprompt.refine import RefineConfig

    torch.set_num_threads(args.threads)
    targets = list(open_dataset(args.data, split=args.targets))
    if args.only:
        from voxprompt.eval.cli import select_targets

        targets = select_targets(targets, args.only, args.targets)
    if args.limit:
        targets = targets[:args.limit]
    refine = (RefineConfig(band_mm=args.refine_band, grid_mm=args.refine_grid, solver=args.refine_solver)
              if args.refine_band > 0 else False)
    out = {}
    for name in args.candidates:
        ckpt = shipped_weights(args.model) if name == "shipped" else name
        base = load_model(args.model, ckpt)
        model = load_model(args.model, ckpt, config={**base.cfg.to_dict(), "roi_spacing_mm": args.roi_spacing})
        factory = session_factory(model, refine=refine, autozoom=args.autozoom, carry_over=args.carry_over,
                                  retry_missed=args.retry_missed, monotone_clicks=args.monotone_clicks,
                                  flip_ensemble=args.flip_ensemble)
        rows = evaluate(targets, factory, "cvpr25", args.seed, n_clicks=args.clicks,
                        use_box=False, loader=load_target, progress=True)
        add_groups(rows)
        out[name] = summarise(rows)
    return out


def add_candidate_arguments(p: argparse.ArgumentParser) -> None:
    """The options every checkpoint-choosing benchmark shares: candidates, model, data, split."""
    p.add_argument("--candidates", nargs="+", required=True, help="'shipped' or checkpoint paths")
    p.add_argument("--model", default="voxprompt-med3d-small")
    p.add_argument("--data", default="data/real")
    p.add_argument("--targets", default="val", choices=("val", "train"),
                   help="val (default); train for a second opinion. Never the held-out split")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_candidate_arguments(p)
    p.add_argument("--roi-spacing", type=float, default=2.25)
    p.add_argument("--refine-band", type=float, default=9.0, help="mm (0: the model alone)")
    p.add_argument("--refine-grid", type=float, default=1.5, help="RefineConfig.grid_mm")
    p.add_argument("--refine-solver", default="difference", choices=("labels", "difference"))
    p.add_argument("--autozoom", action="store_true", help="the auto-zoom planner")
    p.add_argument("--carry-over", action=argparse.BooleanOptionalAction, default=None,
                   help="a click's new ROI starts from the object's mask (default: the model's stored setting)")
    p.add_argument("--retry-missed", action="store_true", help="Session(retry_missed=True)")
    p.add_argument("--monotone-clicks", action=argparse.BooleanOptionalAction, default=None,
                   help="Session(monotone_clicks=...) (default: the model's stored setting)")
    p.add_argument("--flip-ensemble", type=int, choices=FLIP_ENSEMBLES, default=None,
                   help="Session(flip_ensemble=...): mirror images of each ROI averaged (default: the stored setting)")
    p.add_argument("--clicks", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these targets (names as voxprompt eval --only)")
    p.add_argument("--limit", type=int, help="first N targets only")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="JSON path (default benchmarks/results/select_checkpoint.json)")
    args = p.parse_args()
    results = run(args)
    print_table(results, label="checkpoint", width=44)
    best = max(results, key=lambda k: results[k]["dsc_auc"] + results[k]["nsd_auc"])
    print(f"best on the {args.targets} targets (DSC AUC + NSD AUC): {best}")
    out = Path(args.out) if args.out else RESULTS / "select_checkpoint.json"
    meta = {"benchmark": "select_checkpoint", "protocol": "cvpr25 (5 clicks, no box)", "data": args.data,
            "targets": args.targets, "only": args.only,
            "roi_spacing_mm": args.roi_spacing, "refine_band_mm": args.refine_band,
            "refine_grid_mm": args.refine_grid, "refine_solver": args.refine_solver,
            "autozoom": args.autozoom, "carry_over": args.carry_over, "retry_missed": args.retry_missed,
            "monotone_clicks": args.monotone_clicks, "flip_ensemble": args.flip_ensemble,
            "seed": args.seed, "machine": f"{platform.node()} {platform.platform()}", "best": best}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
