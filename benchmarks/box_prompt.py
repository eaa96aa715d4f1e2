"""How the default model takes a box: where its positive click goes, and with or without ``add_box``'s
negative clicks outside its faces.

SAM-Med3D has no box embedding, so a box is a positive click (at its centre, or with ``box_search``
where the decoded mask fills the box best, of the centre and a 3 x 3 grid around it) plus
(``box_negatives``) negative clicks two voxels outside the middle of each face. The default model's
low-res logit cell (2 x its 2.75 mm ROI spacing) is wider than that gap, so those negatives sit in
cells the object fills; a centre click misses C-shaped and two-lobed objects. This runs the CVPR 2025
protocol with its initial box (the one-slice box on ``z_mid``) the four ways, on the validation split
and on large training structures (never the held-out split), prints a table per set and writes
``benchmarks/results/box_prompt.json``.

    python benchmarks/box_prompt.py [--checkpoint PATH] [--clicks 5]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import RESULTS, machine  # noqa: E402
from default_model import print_table, summarise  # noqa: E402

# large training structures of the TotalSegmentator example CT (the second opinion of select_checkpoint.py)
TRAIN_LARGE = ("spleen", "liver", "small_bowel", "colon", "urinary_bladder", "hip_left", "gluteus_maximus_right",
               "autochthon_left", "iliopsoas_right", "kidney_right")


VARIANTS = (  # run name, box_negatives, box_search
    ("centre + negatives", True, False),
    ("centre", False, False),
    ("search", False, True),
    ("search + negatives", True, True),
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="voxprompt-med3d-small")
    p.add_argument("--checkpoint", help="weights (default: the shipped ones)")
    p.add_argument("--data", default="data/real")
    p.add_argument("--clicks", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", nargs="*", help="a subset of the variants, by name")
    p.add_argument("--out", default=str(RESULTS / "box_prompt.json"))
    args = p.parse_args()
    logging.disable(logging.WARNING)  # the "box larger than the ROI" notes

    import torch

    from voxprompt.data.readers import load_target, open_dataset
    from voxprompt.eval.cli import select_targets
    from voxprompt.eval.report import add_groups
    from voxprompt.eval.runner import evaluate, session_factory
    from voxprompt.models.loading import load_model, shipped_weights

    torch.set_num_threads(args.threads)
    ckpt = args.checkpoint or shipped_weights(args.model)
    model = load_model(args.model, ckpt)
    sets = {
        "validation": list(open_dataset(args.data, split="val")),
        "large training structures": select_targets(list(open_dataset(args.data, split="train")),
                                                    [f"totalseg_ct:{n}" for n in TRAIN_LARGE], "train"),
    }
    results: dict[str, dict] = {}
    for set_name, targets in sets.items():
        results[set_name] = {}
        for label, negatives, search in VARIANTS:
            if args.only and label not in args.only:
                continue
            factory = session_factory(model, box_negatives=negatives, box_search=search)
            rows = evaluate(targets, factory, "cvpr25", args.seed, n_clicks=args.clicks, use_box=True,
                            loader=load_target, progress=True)
            add_groups(rows)
            results[set_name][label] = summarise(rows)
        print(f"\n{set_name}")
        print_table(results[set_name], label="box", width=24)
    meta = {"benchmark": "box_prompt", "protocol": f"cvpr25 with its box ({args.clicks} clicks)",
            "checkpoint": str(ckpt), "data": args.data, "seed": args.seed, **machine("cpu")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
