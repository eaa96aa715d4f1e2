"""Does a 3D model use a mask prior? One ROI per target, one click, with and without a prior.

A session feeds a binary mask as the decoder's ``mask_input`` (+/- logits on the low-res grid)
whenever a ROI starts from a mask the model did not predict itself: auto-zoom's passes and tiles,
the click after an expansion, a click's new ROI with ``carry_over``, ``add_mask``. This measures what
the model makes of such priors: for each target a ROI at the model's spacing centred on the
target's deepest voxel, one positive click there, and as the prior nothing, the label itself, or a
degraded label (``voxprompt.train.priors``: one side of a plane, a 2-4x coarser copy, grown or shrunk,
balls added or removed; seeded). A model that uses priors returns the exact label nearly unchanged
and improves the degraded ones. Dice in the ROI, the model alone (no refinement, no clean-up).

    python benchmarks/mask_prior.py --candidates shipped runs/default-stage13/model.safetensors

Prints a table and writes ``benchmarks/results/mask_prior.json``. Validation targets by default
(``--targets train`` for a second opinion; never the held-out split).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from select_checkpoint import add_candidate_arguments  # noqa: E402  (one home for the shared options)

RESULTS = Path(__file__).resolve().parent / "results"
PRIORS = ("none", "exact", "cut", "coarse", "morph", "blobs")


def run(args: argparse.Namespace) -> dict:
    import torch
    from scipy import ndimage
    from tqdm import tqdm

    from voxprompt.data.readers import load_target, open_dataset
    from voxprompt.eval.metrics import dice
    from voxprompt.models.loading import load_model, shipped_weights
    from voxprompt.preprocess import extract_roi_label, roi_around
    from voxprompt.session.roi_predictor import RoiPredictor
    from voxprompt.train.priors import degraded_prior

    torch.set_num_threads(args.threads)
    targets = list(open_dataset(args.data, split=args.targets))
    if args.limit:
        targets = targets[:args.limit]
    out = {}
    for name in args.candidates:
        ckpt = shipped_weights(args.model) if name == "shipped" else name
        base = load_model(args.model, ckpt)
        spacing = args.roi_spacing or float(base.cfg.roi_spacing_mm)
        model = load_model(args.model, ckpt, config={**base.cfg.to_dict(), "roi_spacing_mm": spacing})
        predictor = RoiPredictor(model)
        rows = []
        for t in tqdm(targets, desc=Path(name).parent.name or name, unit="target"):
            image, gt = load_target(t)
            centre = np.array(np.unravel_index(np.argmax(ndimage.distance_transform_edt(gt)), gt.shape), float)
            predictor.set_image(image)
            roi = roi_around(image, centre, size=model.img_size, spacing=spacing)
            label = extract_roi_label(image, gt, roi).astype(bool)
            click = [(predictor.roi_point(roi, centre), 1)]
            rng = np.random.default_rng(args.seed)
            row = {"case": t.case, "name": t.name}
            with torch.inference_mode():
                for kind in PRIORS:
                    prior = None if kind == "none" else degraded_prior(label, rng, kind)
                    logits = None if prior is None else predictor.label_prior(prior)
                    _, _, prob = predictor.predict(roi, click, logits)
                    row[kind] = dice(prob.numpy() > 0.5, label)
                    if prior is not None:
                        row[f"{kind}_given"] = dice(prior, label)
            rows.append(row)
        out[name] = {"rows": rows, **{k: float(np.mean([r[k] for r in rows])) for k in PRIORS},
                     **{f"{k}_given": float(np.mean([r[f"{k}_given"] for r in rows])) for k in PRIORS[1:]}}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_candidate_arguments(p)
    p.add_argument("--roi-spacing", type=float, help="mm (default: the model's stored spacing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="first N targets only")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="JSON path (default benchmarks/results/mask_prior.json)")
    args = p.parse_args()
    results = run(args)
    head = "Dice in the ROI with the prior:"
    print(f"{head:<40}" + "".join(f"{k:>8}" for k in PRIORS))
    for name, r in results.items():
        print(f"{name[-40:]:<40}" + "".join(f"{r[k]:8.3f}" for k in PRIORS))
    first = next(iter(results.values()))
    print(f"{'(the prior itself)':<40}{'':>8}" + "".join(f"{first[f'{k}_given']:8.3f}" for k in PRIORS[1:]))
    out = Path(args.out) if args.out else RESULTS / "mask_prior.json"
    meta = {"benchmark": "mask_prior", "data": args.data, "targets": args.targets, "roi_spacing_mm": args.roi_spacing,
            "seed": args.seed, "machine": f"{platform.node()} {platform.platform()}"}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
