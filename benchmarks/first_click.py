"""What the default model's first click gets wrong: too little (recall) or too much (precision).

One click per target, where the CVPR 2025 protocol puts the first one (the centre of the structure),
in a fresh :class:`~voxprompt.session.Session` with the model's stored settings (refinement, clean-up;
``--raw``: the model alone, its ROI drawn and normalised as in training);
prints Dice, precision, recall and the predicted IoU per target and their means per candidate, and
writes ``benchmarks/results/first_click.json``. Only the validation or training splits (never the
held-out one): a diagnosis for choosing what to train next, not a result.

    python benchmarks/first_click.py --candidates shipped --targets train \\
        --only totalseg_ct:spleen totalseg_ct:kidney_left
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from select_checkpoint import add_candidate_arguments  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def overlap(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Dice, precision and recall of a binary prediction (precision 0 for an empty one)."""
    from voxprompt.eval.metrics import dice

    inter = float(np.logical_and(pred, gt).sum())
    n_pred, n_gt = float(pred.sum()), float(gt.sum())
    return {"dice": dice(pred, gt), "precision": inter / n_pred if n_pred else 0.0, "recall": inter / max(n_gt, 1.0)}


def run(args: argparse.Namespace) -> dict:
    import torch
    from tqdm import tqdm

    from voxprompt.data.readers import load_target, open_dataset
    from voxprompt.eval.cli import select_targets
    from voxprompt.eval.clicks import cvpr25_next_click
    from voxprompt.models.loading import load_model, shipped_weights
    from voxprompt.session import Session

    torch.set_num_threads(args.threads)
    targets = list(open_dataset(args.data, split=args.targets))
    if args.only:
        targets = select_targets(targets, args.only, args.targets)
    out = {}
    for name in args.candidates:
        model = load_model(args.model, shipped_weights(args.model) if name == "shipped" else name)
        rows = []
        for t in tqdm(targets, desc=Path(name).name, unit="target"):
            image, gt = load_target(t)
            gt = gt.astype(bool)
            session = Session(model, refine=False, clean=False) if args.raw else Session(model)
            session.set_image(image)
            click = cvpr25_next_click(np.zeros_like(gt), gt)
            pred = session.add_point(click.index, positive=True)
            rows.append({"case": t.case, "name": t.name, "voxels": int(gt.sum()), "click": list(click.index),
                         "predicted_iou": float(pred.score), **overlap(np.asarray(session.mask, bool), gt)})
        means = {k: float(np.mean([r[k] for r in rows])) for k in ("dice", "precision", "recall", "predicted_iou")}
        out[name] = {"mean": means, "targets": rows}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_candidate_arguments(p)
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these targets (names as voxprompt eval --only)")
    p.add_argument("--raw", action="store_true", help="the model alone: no boundary refinement, no clean-up")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="JSON path (default benchmarks/results/first_click.json)")
    args = p.parse_args()
    results = run(args)
    print(f"{'candidate / target':44s} {'Dice':>6s} {'prec.':>6s} {'recall':>6s} {'p.IoU':>6s}")
    for name, res in results.items():
        for r in res["targets"]:
            print(f"  {r['case'] + ':' + r['name']:42s} {r['dice']:6.3f} {r['precision']:6.3f} {r['recall']:6.3f} "
                  f"{r['predicted_iou']:6.3f}")
        m = res["mean"]
        print(f"{name[-44:]:44s} {m['dice']:6.3f} {m['precision']:6.3f} {m['recall']:6.3f} {m['predicted_iou']:6.3f}")
    out = Path(args.out) if args.out else RESULTS / "first_click.json"
    meta = {"benchmark": "first_click", "protocol": "cvpr25's first click, session defaults", "data": args.data,
            "targets": args.targets, "only": args.only, "model": args.model, "raw": args.raw,
            "machine": f"{platform.node()} {platform.platform()}"}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
