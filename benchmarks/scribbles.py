"""Scribbles and lassos on the default model: does each conversion rule help, compared with clicks?

The shipped ``voxprompt-med3d-small`` (its stored settings: boundary refinement and clean-up on) takes
points and masks only, so a scribble or a lasso becomes clicks and a mask prompt by a rule
(``voxprompt.session.strokes``). This runs, on every target of a split, one fresh ``Session`` per run
and ``--steps`` interactions of the simulated user of ``voxprompt.eval.scribbles`` (the CVPR 2025
click protocol's user: it looks where that protocol would click, and draws on the axial slice there):

* ``clicks``: the CVPR 2025 clicks themselves (no box), the reference;
* ``scribble: RULE`` for each scribble rule (the error's medial line on that slice);
* ``lasso: RULE`` for each lasso rule (the error's outline on that slice, filled).

It prints DSC AUC, NSD AUC (2 mm), final Dice, seconds per step and Dice after each step, and writes
``benchmarks/results/scribbles_<targets>.json``. Choose rules on the **validation** split (the default);
never on the held-out one (``test`` is refused).

    python benchmarks/scribbles.py --data data/real --targets val --threads 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import RESULTS, machine  # noqa: E402


def runs() -> dict[str, tuple[str, dict]]:
    """Run name -> (simulated user, Session keyword arguments)."""
    from voxprompt.session.strokes import LASSO_RULES, SCRIBBLE_RULES

    out: dict[str, tuple[str, dict]] = {"clicks": ("click", {})}
    out.update({f"scribble: {r}": ("scribble", {"scribble_rule": r}) for r in SCRIBBLE_RULES})
    out.update({f"lasso: {r}": ("lasso", {"lasso_rule": r}) for r in LASSO_RULES})
    return out


def run(args: argparse.Namespace) -> dict:
    import torch

    from voxprompt.data.readers import load_target, open_dataset
    from voxprompt.eval.scribbles import run_stroke_protocol, session_stroke_fn
    from voxprompt.models.loading import DEFAULT_MODEL, load_model
    from voxprompt.session import Session

    torch.set_num_threads(args.threads)
    model = load_model(DEFAULT_MODEL)  # the shipped weights, as Session() takes them
    targets = list(open_dataset(args.data, split=args.targets))[:args.limit]
    chosen = {k: v for k, v in runs().items() if not args.only or k in args.only}
    rows: dict[str, list[dict]] = {k: [] for k in chosen}
    for target in targets:
        image, gt = load_target(target)
        gt = gt.astype(bool)
        spacing = tuple(float(s) for s in image.spacing[::-1])
        for name, (user, kwargs) in chosen.items():
            session = Session(model, stroke_points=args.stroke_points, **kwargs)
            session.set_image(image)
            engine = session_stroke_fn(session)
            times: list[float] = []

            def timed(act, engine=engine, times=times):
                t0 = time.perf_counter()
                mask = engine(act)
                times.append(time.perf_counter() - t0)
                return mask

            res = run_stroke_protocol(timed, gt, user, args.steps, spacing, axis=args.axis)
            rows[name].append({"case": target.case, "label": int(target.label), "name": target.name,
                               "dice": res.dice, "nsd": res.nsd, "dsc_auc": res.dsc_auc, "nsd_auc": res.nsd_auc,
                               "seconds": times})
            print(f"{target.case}/{target.name:>22s} {name:>22s}: Dice " + " ".join(f"{d:.3f}" for d in res.dice),
                  flush=True)
    return {name: summarise(r) for name, r in rows.items()}


def summarise(rows: list[dict]) -> dict:
    steps = len(rows[0]["dice"])
    secs = [s for r in rows for s in r["seconds"]]
    return {"n": len(rows),
            "dsc_auc": statistics.fmean(r["dsc_auc"] for r in rows),
            "nsd_auc": statistics.fmean(r["nsd_auc"] for r in rows),
            "final_dice": statistics.fmean(r["dice"][-1] for r in rows),
            "dice_per_step": [statistics.fmean(r["dice"][k] for r in rows) for k in range(steps)],
            "median_step_s": statistics.median(secs) if secs else float("nan"),
            "targets": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/real")
    p.add_argument("--targets", default="val", choices=("val", "train"),
                   help="val (default) or train; never the held-out split")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--stroke-points", type=int, default=5, help="k of the points rules (Session stroke_points)")
    p.add_argument("--axis", type=int, default=0, help="array axis the user draws across (0 = z, axial)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit", type=int, help="first N targets only")
    p.add_argument("--only", nargs="*", help="a subset of the runs, by name")
    p.add_argument("--out", help="JSON path (default benchmarks/results/scribbles_<targets>.json)")
    args = p.parse_args()
    t0 = time.perf_counter()
    results = run(args)
    print(f"\n{'run':>22s} {'n':>3s} {'DSC AUC':>8s} {'NSD AUC':>8s} {'final DSC':>9s} {'s/step':>7s}  Dice per step")
    for name, r in results.items():
        steps = " ".join(f"{d:.3f}" for d in r["dice_per_step"])
        print(f"{name:>22s} {r['n']:3d} {r['dsc_auc']:8.3f} {r['nsd_auc']:8.3f} {r['final_dice']:9.3f} "
              f"{r['median_step_s']:7.3f}  {steps}")
    out = Path(args.out) if args.out else RESULTS / f"scribbles_{args.targets}.json"
    meta = {"benchmark": "scribbles", "model": "voxprompt-med3d-small (shipped, stored settings)",
            "protocol": f"simulated user of voxprompt.eval.scribbles, {args.steps} steps, axis {args.axis}, "
                        "NSD at 2 mm", "data": args.data, "targets": args.targets,
            "stroke_points": args.stroke_points, "machine": machine("cpu"),
            "wall_seconds": round(time.perf_counter() - t0, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "results": results}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
