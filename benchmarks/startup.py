"""Start-up time: median wall time of ``python -m voxprompt --help`` (and of ``import voxprompt``) in fresh
interpreters, after one warm-up run each (so the page cache is warm).

    python benchmarks/startup.py                      # this checkout
    python benchmarks/startup.py --compare ab5bd29    # and the package as of a git commit, side by side

``--compare REF`` extracts ``voxprompt/`` at REF (``git archive``) into a temporary folder and runs it
from there. Deliberately imports nothing heavy itself. Writes ``benchmarks/results/startup.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import cpu_name  # noqa: E402  (imports nothing heavy)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

COMMANDS = {
    "voxprompt --help": ["-m", "voxprompt", "--help"],
    "import voxprompt": ["-c", "import voxprompt"],
    "import voxprompt.errors": ["-c", "import voxprompt.errors"],
}

def time_command(args: list[str], cwd: Path, runs: int) -> dict:
    """Median and min wall seconds of ``python ARGS`` run from ``cwd`` (its voxprompt/ comes first)."""
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    where = subprocess.run([sys.executable, "-c", "import voxprompt; print(voxprompt.__file__)"], cwd=cwd, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(cwd.resolve()), f"{where} is not under {cwd}"
    times = []
    for i in range(runs + 1):  # run 0 warms the page cache
        t = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
        if i:
            times.append(time.perf_counter() - t)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4), "runs": runs}


def extract(ref: str, into: Path) -> None:
    """``voxprompt/`` as of git ``ref`` into ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "voxprompt", ":(exclude)voxprompt/weights"],
                             capture_output=True, check=True)
    tar_path = into / "src.tar"
    tar_path.write_bytes(archive.stdout)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--compare", metavar="REF", help="also time voxprompt/ as of this git commit")
    ap.add_argument("--note", default="", help="free text stored with the result (e.g. what else ran)")
    ap.add_argument("--out", type=Path, default=RESULTS / "startup.json")
    args = ap.parse_args()
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None

    trees: dict[str, Path] = {"this checkout": ROOT}
    with tempfile.TemporaryDirectory() as tmp:
        if args.compare:
            commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.compare],
                                    capture_output=True, text=True, check=True).stdout.strip()
            extract(args.compare, Path(tmp))
            trees = {f"commit {commit}": Path(tmp), **trees}
        rows = [{"code": label, "command": name, **time_command(cmd, tree, args.runs)}
                for label, tree in trees.items() for name, cmd in COMMANDS.items()]

    width = max(len(r["code"]) for r in rows)
    print(f"{'code':{width}s}  {'command':24s}  median     min")
    for r in rows:
        print(f"{r['code']:{width}s}  {r['command']:24s}  {r['median_s']:6.3f} s  {r['min_s']:6.3f} s")
    result = {
        "benchmark": "startup",
        "machine": {
            "cpu": cpu_name(),
            "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1min_at_start": load,
        },
        "note": args.note,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
