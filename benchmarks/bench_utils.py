"""Shared helpers of the speed benchmarks: machine description, timers, peak memory, JSON.

torch is imported where it is used, so a benchmark of start-up (``startup.py``) can use these too.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def machine(device: str) -> dict[str, Any]:
    """What the numbers were measured on (GPU named when used)."""
    import torch

    info: dict[str, Any] = {
        "device": device,
        "cpu": cpu_name(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_1min_at_start": load_average(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timeit(fn: Callable[[], Any], device: str, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median and min wall time in ms over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return {"median_ms": times[len(times) // 2], "min_ms": times[0], "n": len(times)}


def peak_rss_mib() -> float:
    """High-water resident memory of this process (MiB); monotonic."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_mib(device: str, rss_before: float) -> float:
    """Peak memory since :func:`reset_peak`: CUDA allocator peak, or the RSS high-water increase
    over ``rss_before`` on CPU (a lower bound when an earlier step already peaked higher)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return max(0.0, peak_rss_mib() - rss_before)


def run_worker(script: Path, args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``script --worker args`` in a fresh process (clean memory high-water mark) and parse
    the JSON object it prints on its last stdout line."""
    cmd = [sys.executable, str(script), "--worker", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1e3:.2f} s" if v >= 1000 else f"{v:.1f} ms"
