"""Markdown tables (for the README) from the JSON results of speed.py, train_speed.py and
pipeline.py.

    python benchmarks/summarize.py [--device cpu] [--quick]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import RESULTS, fmt_ms  # noqa: E402


def speed_table(path: Path) -> str:
    r = json.loads(path.read_text())
    batches = [b for b in r["batches"] if b > 1]
    head = ["model", "mode", "encoder b1"] + [f"per volume b{b}" for b in batches] + [
        "click", "box", "encode + 1st click", "peak MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in r["rows"]:
        if "error" in row:
            continue
        peak = max(v for k, v in row.items() if k.startswith("peak_mib"))
        vals = [row["model"], f"{row['mode']} {row['precision']}", fmt_ms(row["encoder_ms"])]
        vals += [fmt_ms(row["per_volume_ms"].get(str(b))) for b in batches]
        vals += [fmt_ms(row["click_ms"]), fmt_ms(row.get("box_ms")), fmt_ms(row["first_click_ms"]), f"{peak:.0f}"]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def train_table(path: Path) -> str:
    r = json.loads(path.read_text())
    lines = ["| recipe | batch | precision | step | samples/s | peak MiB |", "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        if "error" in row:
            continue
        lines.append(f"| {row['variant']} | {row['batch']} | {row['precision']} | {row['step_s']:.2f} s | "
                     f"{row['samples_per_s']:.3f} | {row['peak_mib']:.0f} |")
    return "\n".join(lines)


def pipeline_table(path: Path) -> str:
    r = json.loads(path.read_text())
    cols = ["read", "crop_resample", "encode", "decode", "first_click", "second_click", "write", "total", "cli_segment"]
    lines = ["| model | mode | " + " | ".join(c.replace("_", " ") for c in cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for row in r["rows"]:
        lines.append(f"| {row['model']} | {row['mode']} | " + " | ".join(fmt_ms(row[c + '_ms']) for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    q = "_quick" if args.quick else ""
    for title, name, fn in (("speed", f"speed_{args.device}{q}.json", speed_table),
                            ("training step", f"train_speed_{args.device}.json", train_table),
                            ("pipeline", f"pipeline_{args.device}.json", pipeline_table)):
        path = RESULTS / name
        if path.is_file():
            print(f"### {title}\n\n{fn(path)}\n")


if __name__ == "__main__":
    main()
