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
import weakref
from collections.abc import Iterator
from typing import Any

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


_PACKED_FAILED: set[torch.dtype] = set()  # dtypes whose oneDNN packed linear failed here (no oneDNN)
# layer -> (weight key, packed weight); outside the module so that copies of it never carry the
# opaque packed tensor (it cannot be deep-copied)
_PACKED: weakref.WeakKeyDictionary[nn.Linear, tuple[Any, torch.Tensor]] = weakref.WeakKeyDictionary()
_PACKED_ACTS = {nn.ReLU: ("relu", ""), nn.GELU: ("gelu", "none")}


def packed_linear(linear: nn.Linear, x: torch.Tensor, act: nn.Module | None = None) -> torch.Tensor | None:
    """``act(linear(x))`` through oneDNN with a pre-packed weight, for CPU inference on a few rows
    (the decoder's token MLPs, where the plain GEMM's per-call overhead dominates; same math in the
    weight's precision); ``None`` where it does not apply (autograd, tracing, GPU, many
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
