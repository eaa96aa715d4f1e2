"""Soak benchmark of ``voxprompt serve`` (not a unit test): does the server's memory level off?

Starts ``voxprompt serve`` on loopback and runs ``--clients`` official nnInteractive clients (as 3D
Slicer uses) for ``--minutes``: each client opens a session, sets its own synthetic volume, clicks
``--clicks`` points with a think time between them, and closes the session; every ``--abandon``-th
session is dropped without closing (a client that went away), so that idle expiry and the restore
grace period are exercised too (both set short here). The server's resident memory (VmRSS) is
sampled every ``--sample`` seconds. It has levelled off when the peak of the last third of the run
is within ``--tolerance`` of the peak of the middle third.

    .venv/bin/python benchmarks/server_soak.py [--minutes 30] [--clients 4] [--clicks 6]

Prints a table, writes benchmarks/results/server_soak.json and server_soak.png (memory over time).
"""
from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import RESULTS, machine, write_json  # noqa: E402
from server_load import SHAPE, clicks, served, volume  # noqa: E402

log = logging.getLogger("server_soak")


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for process {pid}")


def client_loop(url: str, i: int, args: argparse.Namespace, stop: threading.Event, out: dict[str, Any]) -> None:
    """Sessions one after another until ``stop``; counts sessions, clicks and errors."""
    from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession as Client

    sessions = clicks_done = 0
    errors: list[str] = []
    while not stop.is_set():
        k = i * 1000 + sessions
        try:
            c = Client(url)
            c.set_image(volume(k % 64)[None], {"spacing": [1.0, 1.0, 1.0]})
            c.set_target_buffer(np.zeros(SHAPE, np.uint8))
            for point, positive in clicks(k % 64, args.clicks):
                if stop.is_set():
                    break
                c.add_point_interaction(point, include_interaction=positive)
                clicks_done += 1
                stop.wait(args.think)
            if (sessions + 1) % args.abandon:
                c.close()  # a normal close releases the session at once
            else:  # the client went away: no release, no more heartbeats (the client's own fields)
                c._stop_heartbeat.set()
                c._lease_token = None
                c._http.close()
        except Exception as exc:  # counted and reported
            errors.append(f"client {i}: {type(exc).__name__}: {exc}")
            stop.wait(1.0)
        sessions += 1
    out[str(i)] = {"sessions": sessions, "clicks": clicks_done, "errors": errors}


def levelled(samples: list[tuple[float, float]], tolerance: float) -> dict[str, Any]:
    """Peaks of the middle and last thirds of the run and whether the last stays within tolerance."""
    t_end = samples[-1][0]
    mid = [m for t, m in samples if t_end / 3 <= t < 2 * t_end / 3]
    last = [m for t, m in samples if t >= 2 * t_end / 3]
    if not mid or not last:
        return {"levelled_off": None}
    growth = max(last) / max(mid) - 1.0
    half = [(t, m) for t, m in samples if t >= t_end / 2]
    slope = float(np.polyfit([t for t, _ in half], [m for _, m in half], 1)[0] * 60.0) if len(half) > 2 else None
    return {"peak_middle_third_mb": max(mid), "peak_last_third_mb": max(last), "growth_last_vs_middle": growth,
            "slope_second_half_mb_per_min": slope, "levelled_off": growth <= tolerance}


def plot(samples: list[tuple[float, float]], path: Path) -> None:
    from voxprompt.viz.figures import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([t / 60 for t, _ in samples], [m for _, m in samples])
    ax.set_xlabel("minutes")
    ax.set_ylabel("server RSS (MB)")
    ax.set_title("voxprompt serve under a soak (nnInteractive clients)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--clicks", type=int, default=6, help="clicks per session")
    ap.add_argument("--think", type=float, default=0.5, help="seconds between a client's clicks")
    ap.add_argument("--abandon", type=int, default=5, help="every N-th session is dropped without closing")
    ap.add_argument("--idle-timeout", type=float, default=30.0, help="the server's --idle-timeout (s)")
    ap.add_argument("--restore-grace", type=float, default=30.0, help="the server's --restore-grace (s)")
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between memory samples")
    ap.add_argument("--tolerance", type=float, default=0.05, help="allowed growth of the last third's peak")
    ap.add_argument("--model", default="voxprompt-med3d-small")
    ap.add_argument("--out", type=Path, default=RESULTS / "server_soak.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    samples: list[tuple[float, float]] = []
    out: dict[str, Any] = {}
    with served(args.model, 2 * args.clients + 4, "--idle-timeout", str(args.idle_timeout),
                "--restore-grace", str(args.restore_grace)) as (proc, url):
        stop = threading.Event()
        threads = [threading.Thread(target=client_loop, args=(url, i, args, stop, out)) for i in range(args.clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        from tqdm import tqdm

        with tqdm(total=round(args.minutes * 60), unit="s", desc="soak") as bar:
            while (elapsed := time.monotonic() - t0) < args.minutes * 60 and proc.poll() is None:
                samples.append((elapsed, rss_mb(proc.pid)))
                bar.update(round(elapsed) - bar.n)
                time.sleep(args.sample)
        stop.set()
        for t in threads:
            t.join(timeout=120)
        samples.append((time.monotonic() - t0, rss_mb(proc.pid)))

    errors = [e for r in out.values() for e in r["errors"]]
    summary = levelled(samples, args.tolerance)
    result = {"benchmark": "server_soak", "machine": machine("cpu"), "model": args.model,
              "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)},
              "sessions": sum(r["sessions"] for r in out.values()), "clicks": sum(r["clicks"] for r in out.values()),
              "errors": len(errors), "error_samples": errors[:10], "rss_start_mb": samples[0][1],
              "rss_end_mb": samples[-1][1], "rss_max_mb": max(m for _, m in samples), **summary,
              "rss_samples": [(round(t, 1), round(m, 1)) for t, m in samples]}
    write_json(args.out, result)
    plot(samples, args.out.with_suffix(".png"))
    print(f"\n{'minutes':>8} {'sessions':>9} {'clicks':>7} {'errors':>7} {'RSS start':>10} {'mid peak':>9} "
          f"{'last peak':>10} {'growth':>7} {'levelled':>9}")
    print(f"{args.minutes:>8.1f} {result['sessions']:>9} {result['clicks']:>7} {len(errors):>7} "
          f"{samples[0][1]:>8.0f}MB {summary.get('peak_middle_third_mb', 0):>7.0f}MB "
          f"{summary.get('peak_last_third_mb', 0):>8.0f}MB {summary.get('growth_last_vs_middle', 0):>7.1%} "
          f"{str(summary.get('levelled_off')):>9}")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0 if summary.get("levelled_off") and not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
