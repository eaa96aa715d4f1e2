"""The process around the models: CPU threads, the C allocator and the torchrun environment.

Set once per process by whoever owns it (the command line, a benchmark, the trainer); torch is imported
only where a function needs it, so the lowest layers may use this module.
"""
from __future__ import annotations

import ctypes
import logging
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup (container) CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def configure_cpu_threads(num_threads: int | None = None) -> int:
    """Sensible intra-op threads for CPU inference; returns the count in force.

    With ``num_threads`` set, use it. Otherwise only lower torch's count when it exceeds the CPUs
    this process may actually use (a container quota or affinity mask that torch does not see
    oversubscribes the cores and makes every op many times slower).
    """
    import torch

    if num_threads is not None:
        torch.set_num_threads(max(1, int(num_threads)))
    else:
        cpus = available_cpus()
        if torch.get_num_threads() > cpus:
            log.debug("lowering torch threads from %d to %d (available CPUs)", torch.get_num_threads(), cpus)
            torch.set_num_threads(cpus)
    return torch.get_num_threads()


def single_thread_blas() -> bool:
    """Run numpy/scipy's BLAS on one thread per call, process-wide; whether a BLAS library was found.

    OpenBLAS spin-waits when several Python threads call it at once (each call wants the whole
    pool), so a process that refines several sessions' masks in parallel (the server) slows down
    many times over (``docs/performance.md``). One thread per call costs little here: the
    refinement's vectors are small, and torch has its own thread pool. numpy and SciPy each bring
    an OpenBLAS; both are loaded first, since the limit applies to the libraries loaded so far.
    """
    import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS)
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(1, user_api="blas")
    return any(lib["user_api"] == "blas" for lib in threadpool_info())


_ALLOCATOR_TUNED = False
MMAP_THRESHOLD = 32 << 20  # bytes (glibc's maximum): blocks below this come from the heap, not fresh mmaps
TRIM_THRESHOLD = 256 << 20  # bytes of free heap top kept before it is given back to the OS


def configure_cpu_allocator() -> bool:
    """Keep freed blocks below 32 MiB in glibc's heap (and up to 256 MiB of free heap before it is
    returned to the OS); returns True when the setting is in force.

    glibc serves large blocks with fresh ``mmap``s and trims its heap eagerly, so every click of a
    3D decoder (a few MiB of temporaries) can page-fault again, depending on the order of earlier
    frees (glibc's dynamic threshold). Process-wide, once; a no-op off glibc, when the user sets
    ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` themselves, or with
    ``VOXPROMPT_CPU_ALLOCATOR=0``. The cost: up to 256 MiB of freed memory stays mapped.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if (not sys.platform.startswith("linux")
            or os.environ.get("VOXPROMPT_CPU_ALLOCATOR", "1") in ("0", "false", "")
            or any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"))):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = hasattr(libc, "gnu_get_libc_version") and libc.mallopt(-3, MMAP_THRESHOLD) == 1  # M_MMAP_THRESHOLD
        ok = ok and libc.mallopt(-1, TRIM_THRESHOLD) == 1  # M_TRIM_THRESHOLD
    except (OSError, AttributeError) as e:  # not glibc (musl, macOS)
        log.debug("glibc mallopt unavailable: %s", e)
        return False
    _ALLOCATOR_TUNED = bool(ok)
    return _ALLOCATOR_TUNED


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Dist:
        """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by torchrun)."""
        try:
            return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                       int(os.environ.get("LOCAL_RANK", 0)))
        except ValueError as exc:
            raise UsageError(f"bad torchrun environment: {exc}") from None


def check_device(device: object, kinds: tuple[str, ...] | None = None, flag: str = "device") -> torch.device:
    """``device`` as a torch device (``cpu``, ``cuda``, ``cuda:1``, ...), refused with a UsageError when it
    does not parse, is not one of ``kinds`` (None: any) or needs CUDA on a machine without it."""
    import torch

    use = "" if kinds is None else f"; use {' or '.join(kinds)}"
    try:
        dev = torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"unknown device {device!r}{use} ({exc})") from None
    if kinds is not None and dev.type not in kinds:
        raise UsageError(f"unknown device {device!r}{use}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{flag} {device}: CUDA is not available on this machine")
    return dev
