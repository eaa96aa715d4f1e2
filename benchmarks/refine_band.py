"""Choose the boundary refinement's band and edge penalty: the same click protocol at each setting.

Runs protocol ``cvpr25`` (5 clicks, no box) through a fresh Session per target with
``refine=RefineConfig(band_mm, beta)`` for every pair of ``--bands`` x ``--betas`` (band 0 = no
refinement, the model alone) and prints DSC AUC, NSD AUC, final DSC/NSD and seconds per click.
Select on the **training** structures (the default, ``--targets train``), by DSC AUC + NSD AUC,
and report on the held-out ones, never the other way round.

    python benchmarks/refine_band.py --data data/real --targets train --bands 0,3,4.5,6.75 --betas 500

Writes ``benchmarks/results/refine_band_<targets>.json`` unless ``--out`` says otherwise.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_model import add_sweep_arguments, print_table, summarise  # noqa: E402  (same means and groups as the model-vs-baseline table)

RESULTS = Path(__file__).resolve().parent / "results"


def run(args: argparse.Namespace) -> dict:
    import torch

    from voxprompt.data.readers import load_target, open_dataset
    from voxprompt.eval.report import add_groups
    from voxprompt.eval.runner import evaluate, session_factory
    from voxprompt.models.loading import load_model
    from voxprompt.refine import RefineConfig

    torch.set_num_threads(args.threads)
    model = load_model(args.model, args.checkpoint)
    targets = list(open_dataset(args.data, split=None if args.targets == "all" else args.targets))
    if args.limit:
        targets = targets[:args.limit]
    settings = [(0.0, None)] if 0.0 in args.bands else []
    settings += [(band, beta) for band in args.bands if band > 0 for beta in args.betas]
    out = {}
    for band, beta in settings:
        refine = False if band == 0 else RefineConfig(band_mm=band, beta=beta)
        rows = evaluate(targets, session_factory(model, refine=refine), "cvpr25", args.seed,
                        n_clicks=args.clicks, use_box=False, loader=load_target, progress=True)
        add_groups(rows)
        key = "none" if refine is False else f"{band:g}mm/beta{beta:g}"
        out[key] = {"band_mm": band, "beta": beta, **summarise(rows)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sweep_arguments(p)
    p.add_argument("--bands", default="0,3,4.5,6.75", help="comma-separated mm (0 = no refinement)")
    p.add_argument("--betas", default="500", help="comma-separated random-walker edge penalties")
    p.add_argument("--out", help="JSON path (default benchmarks/results/refine_band_<targets>.json)")
    p.add_argument("--append", action="store_true",
                   help="keep the settings already in --out (same data, targets and checkpoint) and add these")
    args = p.parse_args()
    args.bands = [float(s) for s in args.bands.split(",")]
    args.betas = [float(s) for s in args.betas.split(",")]
    out = Path(args.out) if args.out else RESULTS / f"refine_band_{args.targets}.json"
    meta = {"benchmark": "refine_band", "protocol": "cvpr25 (no box)", "data": args.data, "targets": args.targets,
            "model": args.model, "checkpoint": args.checkpoint or "shipped", "seed": args.seed,
            "machine": f"{platform.node()} {platform.platform()}", "selection": "max DSC AUC + NSD AUC"}
    results = {}
    if args.append and out.is_file():
        old = json.loads(out.read_text())
        same = ("data", "targets", "model", "checkpoint", "seed")
        if any(old.get(k) != meta[k] for k in same):
            p.error(f"--append: {out} was run with other {', '.join(same)}")
        results = old["results"]
    results.update(run(args))
    print_table(results, "setting", 16)
    best = max(results, key=lambda k: results[k]["dsc_auc"] + results[k]["nsd_auc"])
    print(f"best DSC AUC + NSD AUC on the {args.targets} targets: {best}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "best": best, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
