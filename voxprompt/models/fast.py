"""Switch between the exact fast paths (default) and the reference computation.

The fast paths compute the same function as the official code, up to fp32 rounding: windowed
blocks evaluate only the real queries of zero-padded windows (the padded positions still act as
keys and values, folded into one exact log-sum-exp key), attention runs through
``scaled_dot_product_attention`` with the decomposed relative positions as an additive mask,
and the dense positional encoding of the prompt encoder is cached.

``reference_mode()`` makes every model compute exactly as the official code does (same ops, same
order) and is the baseline of the tests and benchmarks::

    with voxprompt.models.reference_mode():
        emb = model.encode(image)

The mode is a context variable (per thread / task); ``VOXPROMPT_REFERENCE=1`` in the environment
makes reference the default.
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import logging
import os
import sys
import weakref
from typing import Any, Iterator, Optional

import torch
from torch import nn

log = logging.getLogger(__name__)

_REFERENCE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "voxprompt_reference", default=os.environ.get("VOXPROMPT_REFERENCE", "0") not in ("", "0", "false")
)


def reference_enabled() -> bool:
    """True inside :func:`reference_mode` (the official computation), False on the fast paths.

    Code traced by ``torch.compile`` always takes the fast paths."""
    if torch.compiler.is_compiling():
        return False
    return _REFERENCE.get()


@contextlib.contextmanager
def reference_mode(enabled: bool = True) -> Iterator[None]:
    """Compute exactly the official way inside the block (``enabled=False``: force fast paths)."""
    token = _REFERENCE.set(enabled)
    try:
        yield
    finally:
        _REFERENCE.reset(token)


def tensor_key(t: torch.Tensor) -> tuple[Any, ...]:
    """Identity of a tensor's current contents, for caches of values derived from weights: storage,
    dtype and version counter (inference tensors have none; they cannot change outside inference
    mode)."""
    return (t.device, t.dtype, t.data_ptr(), -1 if t.is_inference() else t._version)


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


def configure_cpu_threads(num_threads: Optional[int] = None) -> int:
    """Sensible intra-op threads for CPU inference; returns the count in force.

    With ``num_threads`` set, use it. Otherwise only lower torch's count when it exceeds the CPUs
    this process may actually use (a container quota or affinity mask that torch does not see
    oversubscribes the cores and makes every op many times slower).
    """
    if num_threads is not None:
        torch.set_num_threads(max(1, int(num_threads)))
    else:
        cpus = available_cpus()
        if torch.get_num_threads() > cpus:
            log.debug("lowering torch threads from %d to %d (available CPUs)", torch.get_num_threads(), cpus)
            torch.set_num_threads(cpus)
    return torch.get_num_threads()


_ALLOCATOR_TUNED = False
MMAP_THRESHOLD = 32 << 20  # bytes (glibc's maximum): blocks below this come from the heap, not fresh mmaps
TRIM_THRESHOLD = 256 << 20  # bytes of free heap top kept before it is given back to the OS


def configure_cpu_allocator() -> bool:
    """Keep freed blocks below 32 MiB in glibc's heap (and up to 256 MiB of free heap before it is
    returned to the OS); returns True when the setting is in force.

    glibc serves large blocks with fresh ``mmap``s and trims its heap eagerly, so every click of a
    3D decoder (a few MiB of temporaries) page-faults again: about 1,200 minor faults and ~1 ms of
    a SAM-Med3D click on a 2-core CPU. Process-wide, once; a no-op off glibc, when the user sets
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


_PACKED_FAILED: set[torch.dtype] = set()  # dtypes whose oneDNN packed linear failed here (no oneDNN)
# layer -> (weight key, packed weight); outside the module so that copies of it never carry the
# opaque packed tensor (it cannot be deep-copied)
_PACKED: "weakref.WeakKeyDictionary[nn.Linear, tuple[Any, torch.Tensor]]" = weakref.WeakKeyDictionary()
_PACKED_ACTS = {nn.ReLU: ("relu", ""), nn.GELU: ("gelu", "none")}


def packed_linear(linear: nn.Linear, x: torch.Tensor, act: Optional[nn.Module] = None) -> Optional[torch.Tensor]:
    """``act(linear(x))`` through oneDNN with a pre-packed weight, for CPU inference on a few rows
    (the decoder's token MLPs: about 3x faster than the plain GEMM at 7 rows on a 2-core CPU, same
    math in the weight's precision); ``None`` where it does not apply (autograd, tracing, GPU, many
    rows, another activation, no oneDNN), and the caller runs the plain layers. The packed weight
    is cached on the layer until its weight changes."""
    if (x.dtype not in (torch.float32, torch.bfloat16) or x.dtype in _PACKED_FAILED or x.device.type != "cpu"
            or x.dtype != linear.weight.dtype or x.dim() < 2 or x.numel() > 64 * x.shape[-1]
            or torch.is_autocast_enabled("cpu") or torch.is_grad_enabled() or torch.jit.is_tracing()
            or torch.compiler.is_compiling() or (act is not None and type(act) not in _PACKED_ACTS)
            or (isinstance(act, nn.GELU) and act.approximate != "none")):
        return None
    attr, algorithm = _PACKED_ACTS[type(act)] if act is not None else ("none", "")
    key = tensor_key(linear.weight)
    hit = _PACKED.get(linear)
    try:
        if hit is None or hit[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                hit = (key, torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 8))
            _PACKED[linear] = hit
        rows = x.reshape(-1, x.shape[-1])
        y = torch.ops.mkldnn._linear_pointwise(rows, hit[1], linear.bias, attr, [], algorithm)
    except (RuntimeError, AttributeError, NotImplementedError) as e:  # a build without oneDNN
        log.debug("oneDNN packed %s linear unavailable, using the plain GEMM: %s", x.dtype, e)
        _PACKED_FAILED.add(x.dtype)
        return None
    return y.view(*x.shape[:-1], y.shape[-1])
