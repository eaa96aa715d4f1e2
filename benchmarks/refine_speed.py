"""Boundary refinement: scikit-image's random walker vs the band walker, side by side.

For each structure, a model-like coarse mask (the reference label resampled to a 4.5 mm grid and
back, what the default model's 32^3 logits resolve) and one click at the label's centre go through
``refine_mask`` three times per round, alternating: with the linear system built by scikit-image
over the whole crop, by :mod:`voxprompt.refine.walker` on the band only (both solving once per label: the
labels must be identical), and with the band walker's single solve of the label difference
(``RefineConfig(solver="difference")``, the default; the table gives how many voxels it labels
differently). Median seconds of each and the ratios.

    python benchmarks/refine_speed.py                       # the chest CT's held-out structures
    python benchmarks/refine_speed.py --names liver,heart --rounds 5

Writes ``benchmarks/results/refine_speed.json``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import RESULTS, machine, write_json  # noqa: E402

import voxprompt.refine.walker  # noqa: E402
from voxprompt.data.readers import load_target, open_dataset  # noqa: E402
from voxprompt.refine import RefineConfig, refine_mask  # noqa: E402


def coarse_mask(gt: np.ndarray, spacing: np.ndarray, grid_mm: float = 4.5) -> np.ndarray:
    """``gt`` seen on a ``grid_mm`` grid: linear down- and upsampling, thresholded at 0.5."""
    factors = spacing / grid_mm
    small = ndimage.zoom(gt.astype(np.float32), factors, order=1)
    back = ndimage.zoom(small, np.array(gt.shape) / np.array(small.shape), order=1)
    out = np.zeros(gt.shape, dtype=bool)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(gt.shape, back.shape))
    out[sl] = back[sl] > 0.5
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/real")
    p.add_argument("--case", default="chestct_totalseg")
    p.add_argument("--targets", default="test", help="split of the structures (train, test, all)")
    p.add_argument("--names", help="comma-separated structure names (default: every one of the split)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS / "refine_speed.json"))
    args = p.parse_args()
    targets = [t for t in open_dataset(args.data, split=None if args.targets == "all" else args.targets)
               if t.case == args.case and (not args.names or t.name in args.names.split(","))]
    if not targets:
        p.error(f"no {args.targets} targets of case {args.case} in {args.data}")
    fast = voxprompt.refine.walker.band_random_walker
    cfg = RefineConfig(solver="labels")
    configs = {"skimage": cfg, "band": cfg, "difference": RefineConfig(solver="difference")}
    rows = []
    print(f"{'structure':>24s} {'voxels':>8s} {'scikit-image s':>14s} {'band s':>8s} {'ratio':>6s}  identical  "
          f"{'difference s':>12s} {'ratio':>6s} {'voxels differ':>13s}")
    for target in targets:
        image, gt = load_target(target)
        arr = np.asarray(image.array, dtype=np.float32)
        spacing = np.asarray(image.spacing[::-1], dtype=float)  # (z, y, x) like the array
        mask = coarse_mask(gt, spacing)
        click = (np.argwhere(gt).mean(axis=0).round().astype(int), 1)
        times: dict[str, list[float]] = {name: [] for name in configs}
        outs = {}
        for _ in range(args.rounds):
            for name, config in configs.items():
                voxprompt.refine.walker.band_random_walker = fast if name != "skimage" else (lambda *a, **k: None)
                t0 = time.perf_counter()
                outs[name] = refine_mask(arr, mask, [click], spacing, config)
                times[name].append(time.perf_counter() - t0)
        voxprompt.refine.walker.band_random_walker = fast
        row = {"name": target.name, "voxels": int(gt.sum()), "skimage_s": statistics.median(times["skimage"]),
               "band_s": statistics.median(times["band"]),
               "identical": bool(np.array_equal(outs["skimage"], outs["band"])),
               "difference_s": statistics.median(times["difference"]),
               "difference_voxels_differ": int(np.count_nonzero(outs["difference"] != outs["band"]))}
        row["ratio"] = row["skimage_s"] / row["band_s"]
        row["difference_ratio"] = row["band_s"] / row["difference_s"]
        rows.append(row)
        print(f"{row['name']:>24s} {row['voxels']:8d} {row['skimage_s']:14.3f} {row['band_s']:8.3f} "
              f"{row['ratio']:6.2f}  {str(row['identical']):9s}  {row['difference_s']:12.3f} "
              f"{row['difference_ratio']:6.2f} {row['difference_voxels_differ']:13d}", flush=True)
    summary = {"median_ratio": statistics.median(r["ratio"] for r in rows),
               "all_identical": all(r["identical"] for r in rows),
               "median_skimage_s": statistics.median(r["skimage_s"] for r in rows),
               "median_band_s": statistics.median(r["band_s"] for r in rows),
               "median_difference_s": statistics.median(r["difference_s"] for r in rows),
               "median_difference_ratio": statistics.median(r["difference_ratio"] for r in rows)}
    print(f"median ratio {summary['median_ratio']:.2f}, all identical: {summary['all_identical']}; "
          f"difference solve: median ratio {summary['median_difference_ratio']:.2f} over the per-label band walker")
    write_json(Path(args.out), {"benchmark": "refine_speed", "machine": machine("cpu"), "rounds": args.rounds,
                                "config": {"band_mm": cfg.band_mm, "beta": cfg.beta}, "rows": rows, **summary})
    return 0 if summary["all_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
