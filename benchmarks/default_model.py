"""The default model against the classical baseline on the held-out structures (CVPR 2025 clicks).

Runs ``voxprompt eval`` (protocol ``cvpr25``, 5 clicks, no box so every method gets exactly the
same prompts) for the random-walker baseline and for the shipped ``voxprompt-med3d-small`` (with
its stored settings, i.e. boundary refinement on; without refinement; with auto-zoom), then
prints a table and writes
``benchmarks/results/default_model.json``; each full report (CSV/JSON/Markdown/plots) stays in
``--reports``.

    python benchmarks/default_model.py --data data/real [--checkpoint runs/x/model.safetensors]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

RUNS = {  # name: (report folder, eval arguments)
    "random-walker": ("random-walker", ["--model", "random-walker"]),
    "voxprompt-med3d-small": ("voxprompt-med3d-small", ["--model", "voxprompt-med3d-small"]),
    "voxprompt-med3d-small, no refinement": ("voxprompt-med3d-small-no-refine",
                                             ["--model", "voxprompt-med3d-small", "--no-refine"]),
    "voxprompt-med3d-small + auto-zoom": ("voxprompt-med3d-small-auto-zoom",
                                          ["--model", "voxprompt-med3d-small", "--autozoom"]),
}


def summarise(rows: list[dict]) -> dict:
    def mean(key: str) -> float:
        vals = [float(r[key]) for r in rows if r.get(key) is not None]
        return statistics.fmean(vals) if vals else float("nan")

    per_click = [statistics.fmean(float(r["dice"][k]) for r in rows) for k in range(len(rows[0]["dice"]))]
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(float(r["final_dice"]))
    return {"n": len(rows), "final_dice": mean("final_dice"), "final_nsd": mean("final_nsd"),
            "dsc_auc": mean("dsc_auc"), "nsd_auc": mean("nsd_auc"), "dice_per_click": per_click,
            "median_click_s": statistics.median(float(r["median_click_seconds"]) for r in rows),
            "final_dice_by_group": {g: statistics.fmean(v) for g, v in sorted(groups.items())}}


def print_table(results: dict[str, dict], label: str = "method", width: int = 36) -> None:
    """One row per run: the four CVPR 2025 measures, median seconds per click and Dice per click."""
    print(f"{label:>{width}s} {'n':>3s} {'DSC AUC':>8s} {'NSD AUC':>8s} {'final DSC':>9s} {'final NSD':>9s} "
          f"{'s/click':>8s}  Dice per click")
    for name, r in results.items():
        clicks = " ".join(f"{d:.3f}" for d in r["dice_per_click"])
        print(f"{name:>{width}s} {r['n']:3d} {r['dsc_auc']:8.3f} {r['nsd_auc']:8.3f} {r['final_dice']:9.3f} "
              f"{r['final_nsd']:9.3f} {r['median_click_s']:8.3f}  {clicks}")


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by the inference-setting sweeps (roi_spacing.py, refine_band.py)."""
    p.add_argument("--model", default="voxprompt-med3d-small")
    p.add_argument("--checkpoint", help="weights (default: the shipped ones)")
    p.add_argument("--data", default="data/real")
    p.add_argument("--targets", choices=("train", "val", "test", "all"), default="train")
    p.add_argument("--clicks", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="first N targets only")
    p.add_argument("--threads", type=int, default=2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/real")
    p.add_argument("--checkpoint", help="model weights (default: the shipped ones)")
    p.add_argument("--targets", default="test")
    p.add_argument("--reports", default="benchmarks/results/default_model_reports")
    p.add_argument("--out", default="benchmarks/results/default_model.json")
    p.add_argument("--only", nargs="*", help="subset of the runs")
    p.add_argument("--reuse", nargs="*", default=[],
                   help="runs summarised from their existing report instead of re-run (e.g. random-walker "
                        "when only the model changed)")
    args = p.parse_args()
    results = {}
    for name, (folder, extra) in RUNS.items():
        if args.only and name not in args.only:
            continue
        report = Path(args.reports) / folder
        cmd = [sys.executable, "-m", "voxprompt", "eval", *extra, "--data", args.data, "--protocol", "cvpr25",
               "--no-box", "--targets", args.targets, "--out", str(report), "--force"]
        if args.checkpoint and name != "random-walker":
            cmd += ["--checkpoint", args.checkpoint]
        if name not in args.reuse or not (report / "results.json").is_file():
            subprocess.run(cmd, check=True)
        rows = json.loads((report / "results.json").read_text())["results"]
        results[name] = summarise(rows)
    print_table(results)
    out = {"protocol": "cvpr25 (5 clicks, no box)", "data": args.data, "targets": args.targets,
           "checkpoint": args.checkpoint or "shipped", "machine": f"{platform.node()} {platform.platform()}",
           "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
