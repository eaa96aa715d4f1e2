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
import logging
import os
from typing import Any, Iterator, Optional

import torch

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
