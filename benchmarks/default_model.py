"""The default model against the classical baseline on the held-out structures (CVPR 2025 clicks).

Runs ``voxprompt eval`` (protocol ``cvpr25``, 5 clicks) for the random-walker baseline and for the
shipped ``voxprompt-med3d-small`` (with its stored settings, i.e. boundary refinement on; without
refinement; with auto-zoom), then prints the four CVPR 2025 measures overall and per structure group
(``voxprompt.eval.report.GROUPS``), and how each model run compares with each baseline run per
group, and writes ``benchmarks/results/default_model.json``; each full report (CSV/JSON/Markdown/
plots) stays in ``--reports``.

By default there is **no box**, so every method gets exactly the same prompts. ``--box`` runs the
protocol with its initial box first, for the model and for the baseline (its box mode:
``voxprompt.eval.baseline``); run names get " + box", report folders "-box", and the default output
is ``benchmarks/results/default_model_box.json``. ``--baseline-beta 500 2000`` runs the walker at
each edge penalty (2000 was tuned on the training structures, ``benchmarks/baseline_beta.py``;
without the option, the walker's default).

    python benchmarks/default_model.py --data data/real [--checkpoint runs/x/model.safetensors]
    python benchmarks/default_model.py --box --baseline-beta 500 2000
    python benchmarks/default_model.py --data data/synth --reports benchmarks/results/default_model_synth_reports \\
        --out benchmarks/results/default_model_synth.json   # the synthetic-contrast set (voxprompt data render)
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
from pathlib import Path

BASELINE = "random-walker"
RUNS = {  # name: (report folder, eval arguments); the baseline runs come from baseline_runs()
    "voxprompt-med3d-small": ("voxprompt-med3d-small", ["--model", "voxprompt-med3d-small"]),
    "voxprompt-med3d-small, no refinement": ("voxprompt-med3d-small-no-refine",
                                             ["--model", "voxprompt-med3d-small", "--no-refine"]),
    "voxprompt-med3d-small + auto-zoom": ("voxprompt-med3d-small-auto-zoom",
                                          ["--model", "voxprompt-med3d-small", "--autozoom"]),
    "voxprompt-med3d-small, box negatives": ("voxprompt-med3d-small-box-negatives",
                                             ["--model", "voxprompt-med3d-small", "--box-negatives"]),
    "voxprompt-med3d-small, box search": ("voxprompt-med3d-small-box-search",
                                          ["--model", "voxprompt-med3d-small", "--box-search"]),
    "voxprompt-med3d-small, retry missed": ("voxprompt-med3d-small-retry-missed",
                                            ["--model", "voxprompt-med3d-small", "--retry-missed"]),
    "voxprompt-med3d-small, clicks replace": (  # before monotone clicks: the ROI's result replaces the mask
        "voxprompt-med3d-small-clicks-replace", ["--model", "voxprompt-med3d-small", "--no-monotone-clicks"]),
}
# box-only settings: without a box they are the plain run
BOX_ONLY = {"voxprompt-med3d-small, box negatives", "voxprompt-med3d-small, box search"}
MEASURES = ("dsc_auc", "nsd_auc", "final_dice", "final_nsd")  # the four CVPR 2025 measures
MEASURE_NAMES = {"dsc_auc": "DSC AUC", "nsd_auc": "NSD AUC", "final_dice": "final DSC", "final_nsd": "final NSD"}
BOX_SUFFIX = " + box"


def baseline_runs(betas: list | None) -> dict[str, tuple[str, list[str]]]:
    """The random-walker runs: one per beta (None: the walker's default beta, named plainly)."""
    runs = {}
    for beta in betas or [None]:
        if beta is None:
            runs[BASELINE] = (BASELINE, ["--model", BASELINE])
        else:
            runs[f"{BASELINE}, beta {beta:g}"] = (f"{BASELINE}-beta{beta:g}",
                                                  ["--model", BASELINE, "--rw-beta", f"{beta:g}"])
    return runs


def _fmean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(vals) if vals else float("nan")


def _group_key(group: str) -> tuple:
    """The report's group order (voxprompt.eval.report.GROUPS), unknown groups after them by name."""
    from voxprompt.eval.report import group_order

    return group_order(group)


def summarise(rows: list[dict]) -> dict:
    """Means of the four measures overall and per group (``row["group"]``), Dice per click, latency."""
    def mean(rs: list[dict], key: str) -> float:
        return _fmean([float(r[key]) for r in rs if r.get(key) is not None])

    per_click = [statistics.fmean(float(r["dice"][k]) for r in rows) for k in range(len(rows[0]["dice"]))]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    order = sorted(groups, key=_group_key)
    by_group = {g: {"n": len(groups[g]), **{m: mean(groups[g], m) for m in MEASURES}} for g in order}
    out = {"n": len(rows), **{m: mean(rows, m) for m in MEASURES}, "dice_per_click": per_click,
           "median_click_s": statistics.median(float(r["median_click_seconds"]) for r in rows),
           "by_group": by_group,
           "final_dice_by_group": {g: v["final_dice"] for g, v in by_group.items()}}
    if any(r.get("box_dice") is not None for r in rows):
        out["box_dice"] = mean(rows, "box_dice")
    return out


def print_table(results: dict[str, dict], label: str = "method", width: int = 36) -> None:
    """One row per run: the four CVPR 2025 measures, median seconds per click and Dice per click."""
    print(f"{label:>{width}s} {'n':>3s} {'DSC AUC':>8s} {'NSD AUC':>8s} {'final DSC':>9s} {'final NSD':>9s} "
          f"{'s/click':>8s}  Dice per click")
    for name, r in results.items():
        clicks = " ".join(f"{d:.3f}" for d in r["dice_per_click"])
        if r.get("box_dice") is not None:
            clicks = f"(box {r['box_dice']:.3f}) " + clicks
        print(f"{name:>{width}s} {r['n']:3d} {r['dsc_auc']:8.3f} {r['nsd_auc']:8.3f} {r['final_dice']:9.3f} "
              f"{r['final_nsd']:9.3f} {r['median_click_s']:8.3f}  {clicks}")


def print_group_table(results: dict[str, dict], width: int = 36) -> None:
    """Per group, one row per run: the four measures."""
    groups: list[str] = []
    for r in results.values():
        groups += [g for g in r.get("by_group", {}) if g not in groups]
    groups.sort(key=_group_key)
    for g in groups:
        print(f"\n{g}")
        print(f"{'':>{width}s} {'n':>3s} {'DSC AUC':>8s} {'NSD AUC':>8s} {'final DSC':>9s} {'final NSD':>9s}")
        for name, r in results.items():
            v = r.get("by_group", {}).get(g)
            if v is not None:
                print(f"{name:>{width}s} {v['n']:3d} {v['dsc_auc']:8.3f} {v['nsd_auc']:8.3f} {v['final_dice']:9.3f} "
                      f"{v['final_nsd']:9.3f}")


def compare(results: dict[str, dict], baselines: list[str]) -> dict:
    """For each other run and each baseline: per group (and "all"), the measures where the run is ahead
    (strictly greater mean) and the differences."""
    out: dict = {}
    for name, r in results.items():
        if name in baselines:
            continue
        for base in baselines:
            b = results[base]
            table = {}
            for g, v in [("all", r), *r["by_group"].items()]:
                w = b if g == "all" else b["by_group"].get(g)
                if w is None:
                    continue
                diff = {m: v[m] - w[m] for m in MEASURES}
                table[g] = {"ahead": [m for m in MEASURES if diff[m] > 0], "difference": diff}
            out.setdefault(name, {})[base] = table
    return out


def print_comparison(comparison: dict) -> None:
    for name, per_base in comparison.items():
        for base, table in per_base.items():
            groups = [g for g in table if g != "all"]
            ahead = [g for g in groups if len(table[g]["ahead"]) == len(MEASURES)]
            print(f"\n{name} vs {base}: ahead on all four measures overall: "
                  f"{'yes' if len(table['all']['ahead']) == len(MEASURES) else 'no'}; "
                  f"in {len(ahead)}/{len(groups)} groups")
            for g in groups:
                behind = [MEASURE_NAMES[m] for m in MEASURES if m not in table[g]["ahead"]]
                if behind:
                    print(f"    {g}: not ahead on {', '.join(behind)}")


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


def split_targets(data: str, split: str) -> set[tuple[str, int]]:
    """(case, label) of every target of ``split`` in the dataset ``data`` (``all``: every split)."""
    from voxprompt.data.readers import open_dataset

    return {(t.case, int(t.label)) for t in open_dataset(data, split=None if split == "all" else split)}


def rows_of(rows: list[dict], wanted: set[tuple[str, int]], report: Path) -> list[dict]:
    """A report's rows of the targets of the current split: a reused report may hold targets that a
    later split moved elsewhere (each target's clicks are seeded by the target, so the rest stand),
    never fewer than the split holds."""
    keep = [r for r in rows if (r["case"], int(r["label"])) in wanted]
    missing = wanted - {(r["case"], int(r["label"])) for r in keep}
    if missing:
        raise SystemExit(f"{report}: no result for {len(missing)} target(s) of the split, e.g. "
                         f"{sorted(missing)[0]}: run it again (leave it out of --reuse)")
    return keep


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/real")
    p.add_argument("--checkpoint", help="model weights (default: the shipped ones)")
    p.add_argument("--targets", default="test")
    p.add_argument("--reports", default="benchmarks/results/default_model_reports")
    p.add_argument("--out", help="JSON summary (default benchmarks/results/default_model.json, "
                                 "default_model_box.json with --box)")
    p.add_argument("--box", action="store_true",
                   help="cvpr25 with its initial box first (model and baseline box mode); runs named '... + box'")
    p.add_argument("--baseline-beta", type=float, nargs="+", metavar="BETA",
                   help="random-walker runs at these edge penalties (default: one run at the walker's default, "
                        "500; 2000 was tuned on the training structures)")
    p.add_argument("--only", nargs="*", help="subset of the runs (names with or without ' + box')")
    p.add_argument("--reuse", nargs="*", default=[],
                   help="runs summarised from their existing report instead of re-run (e.g. random-walker "
                        "when only the model changed)")
    args = p.parse_args()
    wanted = split_targets(args.data, args.targets)
    suffix, folder_suffix = (BOX_SUFFIX, "-box") if args.box else ("", "")
    base_runs = baseline_runs(args.baseline_beta)
    results, baselines = {}, []
    for base_name, (folder, extra) in {**base_runs, **RUNS}.items():
        name = base_name + suffix
        if (args.only and name not in args.only and base_name not in args.only) or (
                base_name in BOX_ONLY and not args.box):
            continue
        report = Path(args.reports) / (folder + folder_suffix)
        cmd = [sys.executable, "-m", "voxprompt", "eval", *extra, "--data", args.data, "--protocol", "cvpr25",
               "--targets", args.targets, "--out", str(report), "--force"]
        if not args.box:
            cmd.append("--no-box")
        if args.checkpoint and base_name not in base_runs:
            cmd += ["--checkpoint", args.checkpoint]
        if not ({name, base_name} & set(args.reuse)) or not (report / "results.json").is_file():
            subprocess.run(cmd, check=True)
        rows = rows_of(json.loads((report / "results.json").read_text())["results"], wanted, report)
        results[name] = summarise(rows)
        if base_name in base_runs:
            baselines.append(name)
    width = max([36] + [len(n) for n in results])
    print_table(results, width=width)
    print_group_table(results, width=width)
    comparison = compare(results, baselines)
    print_comparison(comparison)
    out_path = args.out or ("benchmarks/results/default_model_box.json" if args.box
                            else "benchmarks/results/default_model.json")
    out = {"protocol": f"cvpr25 (5 clicks, {'box first' if args.box else 'no box'})", "data": args.data,
           "targets": args.targets, "checkpoint": args.checkpoint or "shipped",
           "machine": f"{platform.node()} {platform.platform()}", "results": results, "comparison": comparison}
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
