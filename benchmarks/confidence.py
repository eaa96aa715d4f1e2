"""The low-confidence threshold and the mask clean-up on the training structures (one click each).

For each target of the split, ``--clicks`` random voxels inside the label (eroded by one voxel where
possible; seeded) each start a fresh object in a session of the shipped default model with
``clean=False`` (refinement on, as stored); the clean-up that the default session applies is then run
on that result (for a fresh object it sees exactly this: one ROI block, no mask around it). Per click:
the model's predicted IoU, the Dice of the raw and cleaned masks, their 26-connected component counts
and the clean-up's time on the ROI's block. Then, for
a grid of thresholds on the predicted IoU: how many results it flags, the mean Dice of flagged and
unflagged ones, and how many flagged results are poor (Dice < ``--poor``). The chosen threshold is
the largest one of the grid whose flagged results are poor at least ``--precision`` of the time
(the shipped ``voxprompt.session.LOW_CONFIDENCE_IOU``). No held-out structure is looked at, nor (by
default, ``--exclude-cases``) the held-out brain's subject, Colin27, whose other AAL regions the train
split holds.

    python benchmarks/confidence.py --data data/real            # -> benchmarks/results/confidence_train.json
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import RESULTS, machine, write_json  # noqa: E402

from voxprompt import session as session_mod  # noqa: E402
from voxprompt.cleanup import clean_mask  # noqa: E402
from voxprompt.data.pseudo import DEFAULT_EXCLUDE_CASES  # noqa: E402
from voxprompt.data.readers import load_target, open_dataset  # noqa: E402
from voxprompt.eval.metrics import dice  # noqa: E402
from voxprompt.models.loading import DEFAULT_MODEL, load_model  # noqa: E402

GRID = (0.10, 0.12, 0.14, 0.15, 0.16, 0.18, 0.20, 0.25, 0.30, 0.50)
OBJECT = np.ones((3, 3, 3), bool)


def components(mask: np.ndarray) -> int:
    return int(ndimage.label(mask, structure=OBJECT)[1])


def table(rows: list[dict], poor: float) -> list[dict]:
    score = np.array([r["score"] for r in rows])
    d = np.array([r["dice_clean"] for r in rows])
    out = []
    for t in GRID:
        f = score < t
        out.append({"threshold": t, "flagged": float(f.mean()), "n_flagged": int(f.sum()),
                    "mean_dice_flagged": float(d[f].mean()) if f.any() else None,
                    "mean_dice_unflagged": float(d[~f].mean()) if (~f).any() else None,
                    "flagged_poor": float((d[f] < poor).mean()) if f.any() else None,
                    "poor_caught": float((f & (d < poor)).sum() / max(1, (d < poor).sum()))})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/real")
    p.add_argument("--targets", default="train")
    p.add_argument("--clicks", type=int, default=1, help="random interior clicks per target (default 1)")
    p.add_argument("--exclude-cases", default=",".join(DEFAULT_EXCLUDE_CASES),
                   help="comma list of cases left out (default: the held-out brain subject; '' for none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--poor", type=float, default=0.3, help="Dice below which a result counts as poor")
    p.add_argument("--precision", type=float, default=0.75,
                   help="share of flagged results that must be poor for a threshold to qualify")
    p.add_argument("--out", default=str(RESULTS / "confidence_train.json"))
    args = p.parse_args()
    logging.disable(logging.WARNING)
    meta = machine("cpu")

    model = load_model(DEFAULT_MODEL)
    rng = np.random.default_rng(args.seed)
    rows: list[dict] = []
    excluded = {c for c in args.exclude_cases.split(",") if c}
    targets = [t for t in open_dataset(args.data, split=args.targets) if t.case not in excluded]
    image_path, raw = None, None
    for target in targets:
        image, gt = load_target(target)
        if target.image_path != image_path:
            raw = session_mod.Session(model, clean=False)
            raw.set_image(image)
            image_path = target.image_path
        spacing = image.spacing[::-1]
        core = ndimage.binary_erosion(gt)
        idx = np.argwhere(core if core.any() else gt)
        for i in rng.choice(len(idx), min(args.clicks, len(idx)), replace=False):
            click = tuple(int(v) for v in idx[i])
            raw.new_object()
            b = raw.add_point(click)
            block = b.roi_bbox
            start = np.array([s.start for s in block])
            t = time.perf_counter()
            part = clean_mask(b.mask[block], [np.asarray(click) - start], spacing=spacing)
            seconds = time.perf_counter() - t
            cleaned = np.zeros_like(b.mask)
            cleaned[block] = part
            rows.append({"case": target.case, "label": target.label, "name": target.name, "click": list(click),
                         "score": b.score, "dice_clean": float(dice(cleaned, gt)), "dice_raw": float(dice(b.mask, gt)),
                         "components_clean": components(part), "components_raw": components(b.mask),
                         "clean_seconds": seconds, "block_voxels": int(part.size)})
        print(f"{target.case}/{target.name}: score {rows[-1]['score']:.3f} Dice {rows[-1]['dice_raw']:.3f} -> "
              f"{rows[-1]['dice_clean']:.3f}, components {rows[-1]['components_raw']} -> "
              f"{rows[-1]['components_clean']}", flush=True)
    grid = table(rows, args.poor)
    ok = [g["threshold"] for g in grid if g["flagged_poor"] is not None and g["flagged_poor"] >= args.precision]
    summary = {
        "n": len(rows), "poor_share": float(np.mean([r["dice_clean"] < args.poor for r in rows])),
        "chosen_threshold": max(ok) if ok else None,
        "mean_dice_raw": statistics.fmean(r["dice_raw"] for r in rows),
        "mean_dice_clean": statistics.fmean(r["dice_clean"] for r in rows),
        "median_components_raw": statistics.median(r["components_raw"] for r in rows),
        "median_components_clean": statistics.median(r["components_clean"] for r in rows),
        "max_components_raw": max(r["components_raw"] for r in rows),
        "median_clean_seconds": statistics.median(r["clean_seconds"] for r in rows),
        "max_clean_seconds": max(r["clean_seconds"] for r in rows),
        "spearman_score_dice": float(_spearman([r["score"] for r in rows], [r["dice_clean"] for r in rows])),
    }
    for g in grid:
        print(f"IoU < {g['threshold']:.2f}: flags {g['flagged']:.2f} ({g['n_flagged']}), of them poor "
              f"{g['flagged_poor'] if g['flagged_poor'] is None else round(g['flagged_poor'], 2)}, Dice flagged "
              f"{g['mean_dice_flagged']} vs {g['mean_dice_unflagged']}")
    print({k: v for k, v in summary.items()})
    write_json(Path(args.out), {"meta": {**meta, "data": args.data, "targets": args.targets, "clicks": args.clicks,
                                         "excluded_cases": sorted(excluded),
                                         "seed": args.seed, "poor_dice": args.poor, "precision": args.precision},
                                "summary": summary, "thresholds": grid, "rows": rows})
    return 0


def _spearman(a: list, b: list) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


if __name__ == "__main__":
    sys.exit(main())
