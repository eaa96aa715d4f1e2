"""Load benchmark of ``voxprompt serve`` (not a unit test): N concurrent nnInteractive clients.

Starts ``voxprompt serve`` on loopback (capacity >= clients), then every client (a thread with its own
official ``nninteractive-client`` session, as 3D Slicer uses) sets its own synthetic volume with one
bright box at a location no other client uses and clicks positive/negative points. Records per-click
latency, counts errors (must be 0) and checks isolation: every mask a client receives must overlap its
own box and none of the other clients' boxes. Prints a table, writes benchmarks/results/server_load.json.

    .venv/bin/python benchmarks/server_load.py [--clients 16] [--clicks 20] [--model voxprompt-med3d-small]
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import RESULTS, fmt_ms, machine, write_json  # noqa: E402

log = logging.getLogger("server_load")
SHAPE = (64, 96, 96)
HALF = (6, 7, 7)  # box half-size (z, y, x)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def box_center(i: int) -> tuple[int, int, int]:
    """Client i's object centre: a 4 x 4 grid in (y, x), two z levels beyond 16 clients."""
    return (24 + 16 * ((i // 16) % 2), 12 + 24 * ((i // 4) % 4), 12 + 24 * (i % 4))


def box_slices(c: tuple[int, int, int]) -> tuple[slice, ...]:
    return tuple(slice(a - h, a + h) for a, h in zip(c, HALF))


def volume(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    vol = rng.normal(0, 15, size=SHAPE).astype(np.int16)
    vol[box_slices(box_center(i))] += 400
    return vol


def clicks(i: int, n: int) -> list[tuple[list[int], bool]]:
    """Alternating positive (inside the box) and negative (just outside it) points."""
    rng = np.random.default_rng(1000 + i)
    c = np.array(box_center(i))
    h = np.array(HALF)
    out = []
    for k in range(n):
        if k % 2 == 0:
            p = c + rng.integers(-h + 2, h - 1)
        else:
            axis = int(rng.integers(1, 3))
            p = c.copy()
            p[axis] += int(rng.choice([-1, 1])) * (h[axis] + 3)
        out.append(([int(v) for v in np.clip(p, 0, np.array(SHAPE) - 1)], k % 2 == 0))
    return out


def client_run(url: str, i: int, n_clients: int, n_clicks: int, barrier: threading.Barrier,
               out: dict[str, Any]) -> None:
    from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession as Client

    lat, errors, leaks, empty = [], [], 0, 0
    own = box_slices(box_center(i))
    others = [box_slices(box_center(j)) for j in range(n_clients) if box_center(j) != box_center(i)]
    try:
        with Client(url) as c:
            vol = volume(i)
            c.set_image(vol[None], {"spacing": [1.0, 1.0, 1.0]})
            buf = np.zeros(SHAPE, np.uint8)
            c.set_target_buffer(buf)
            barrier.wait(timeout=300)
            for point, positive in clicks(i, n_clicks):
                t0 = time.perf_counter()
                try:
                    c.add_point_interaction(point, include_interaction=positive)
                except Exception as exc:  # counted, reported
                    errors.append(f"client {i}: {type(exc).__name__}: {exc}")
                    continue
                lat.append((time.perf_counter() - t0) * 1e3)
                if not buf[own].any():
                    empty += 1
                if any(buf[o].any() for o in others):
                    leaks += 1
    except Exception as exc:
        errors.append(f"client {i}: {type(exc).__name__}: {exc}")
        try:
            barrier.abort()
        except Exception:
            pass
    out[str(i)] = {"latency_ms": lat, "errors": errors, "masks_touching_other_objects": leaks,
                   "masks_missing_own_object": empty}


@contextlib.contextmanager
def served(model: str, max_sessions: int, *extra: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """``voxprompt serve`` on a free loopback port (``extra``: more flags), once its ``/healthz``
    answers: ``(process, base url)``; stopped on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "voxprompt", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--model", model, "--max-sessions", str(max_sessions), "--no-web", *extra]
    proc = subprocess.Popen(cmd)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start ({' '.join(cmd)})")
            time.sleep(0.3)
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def pct(v: list[float], q: float) -> float | None:
    return float(np.percentile(v, q)) if v else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--model", default="voxprompt-med3d-small")
    ap.add_argument("--checkpoint", help="weights file (default: the shipped ones), e.g. for an A/B of settings "
                                         "stored with the weights")
    ap.add_argument("--machine", default="2-core CPU", help="machine name recorded in the JSON")
    ap.add_argument("--out", type=Path, default=RESULTS / "server_load.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    extra = ("--checkpoint", args.checkpoint) if args.checkpoint else ()
    with served(args.model, max(16, args.clients), *extra) as (_, url):
        out: dict[str, Any] = {}
        barrier = threading.Barrier(args.clients)
        threads = [threading.Thread(target=client_run, args=(url, i, args.clients, args.clicks, barrier, out))
                   for i in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0

    lat = [v for r in out.values() for v in r["latency_ms"]]
    errors = [e for r in out.values() for e in r["errors"]]
    leaks = sum(r["masks_touching_other_objects"] for r in out.values())
    empty = sum(r["masks_missing_own_object"] for r in out.values())
    result = {
        "benchmark": "server_load", "machine_name": args.machine, "machine": machine("cpu"),
        "model": args.model, "checkpoint": args.checkpoint or "shipped", "clients": args.clients,
        "clicks_per_client": args.clicks,
        "image_shape": list(SHAPE), "clicks_done": len(lat), "wall_s": round(wall, 2),
        "click_latency_ms": {"p50": pct(lat, 50), "p95": pct(lat, 95), "max": max(lat) if lat else None,
                             "mean": float(np.mean(lat)) if lat else None},
        "throughput_clicks_per_s": round(len(lat) / wall, 2) if wall else None,
        "errors": len(errors), "error_samples": errors[:10],
        "masks_touching_other_objects": leaks, "masks_missing_own_object": empty,
        "per_client_p50_ms": {k: pct(r["latency_ms"], 50) for k, r in sorted(out.items(), key=lambda x: int(x[0]))},
    }
    write_json(args.out, result)
    print(f"\n{'clients':>8} {'clicks':>7} {'p50':>10} {'p95':>10} {'max':>10} {'clicks/s':>9} {'errors':>7} "
          f"{'leaks':>6} {'missed':>7}")
    print(f"{args.clients:>8} {len(lat):>7} {fmt_ms(pct(lat, 50)):>10} {fmt_ms(pct(lat, 95)):>10} "
          f"{fmt_ms(result['click_latency_ms']['max']):>10} {result['throughput_clicks_per_s']:>9} "
          f"{len(errors):>7} {leaks:>6} {empty:>7}")
    print(f"wrote {args.out}")
    ok = not errors and leaks == 0 and len(lat) == args.clients * args.clicks
    if not ok:
        print("FAILED: errors or cross-session masks", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
