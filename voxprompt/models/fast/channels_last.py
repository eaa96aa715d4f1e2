"""Exact channels-last fast path of the small conv stacks (mask upscaler, mask downscaler).

A convolution whose kernel equals its stride (no padding) is a matrix product over
non-overlapping patches, and so is its transposed twin (each input voxel writes one output patch).
Run channels-last, each layer is one GEMM plus a permutation, and the channel LayerNorms become
``F.layer_norm`` over the last axis -- the same math as the official convolutions, in fp32
rounding. Stacks holding any other layer run the official way.

Conv weights stored in another dtype than the input (the CPU mixed-precision inference copy of the
mask upscaler, outside autocast) make each GEMM run in the weights' dtype and return to the
input's; the final conv + activation + hypernetwork dot of :func:`patch_layout_dot` stays in the
weights' dtype, on larger chunks.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common import LayerNormNd, channels_first, channels_last
from . import reference_enabled, tensor_key

_ELEMENTWISE = (nn.GELU, nn.ReLU, nn.Identity)
_CONVS = (nn.Conv2d, nn.Conv3d)
_CONVTS = (nn.ConvTranspose2d, nn.ConvTranspose3d)


def _patch_conv(m: nn.Module) -> bool:
    k, s = tuple(m.kernel_size), tuple(m.stride)
    return (
        k == s
        and len(set(k)) == 1
        and all(p == 0 for p in m.padding)
        and all(d == 1 for d in m.dilation)
        and m.groups == 1
        and (not isinstance(m, _CONVTS) or all(p == 0 for p in m.output_padding))
        and getattr(m, "padding_mode", "zeros") == "zeros"
    )


def supported(seq: nn.Sequential) -> bool:
    """True when every layer of ``seq`` has a channels-last GEMM form."""
    return all(
        isinstance(m, _ELEMENTWISE + (LayerNormNd,)) or (isinstance(m, _CONVS + _CONVTS) and _patch_conv(m))
        for m in seq
    )


def conv_patches(x: Tensor, conv: nn.Module) -> Tensor:
    """``Conv`` with kernel == stride on channels-last ``(B, *S, Cin)`` -> ``(B, *S/k, Cout)``."""
    k = conv.kernel_size[0]
    b, *size, cin = x.shape
    nd = len(size)
    if k > 1:
        size = [s // k for s in size]
        x = x[(slice(None),) + tuple(slice(0, s * k) for s in size)]  # conv floors odd sizes
        shape = [b]
        for s in size:
            shape += [s, k]
        x = x.reshape(*shape, cin)
        # (B, s0, s1, .., Cin, k0, k1, ..): the weight's (Cin, k0, k1, ..) order
        order = [0] + [1 + 2 * i for i in range(nd)] + [1 + 2 * nd] + [2 + 2 * i for i in range(nd)]
        x = permuted(x, order).reshape(b, *size, cin * k**nd)
    return _gemm(x, conv.weight.reshape(conv.out_channels, -1), conv.bias)


def convt_patches(x: Tensor, conv: nn.Module) -> Tensor:
    """``ConvTranspose`` with kernel == stride on channels-last ``(B, *S, Cin)`` -> ``(B, *kS, Cout)``."""
    k = conv.kernel_size[0]
    b, *size, cin = x.shape
    nd = len(size)
    cout = conv.out_channels
    w = conv.weight.reshape(cin, cout, k**nd).permute(0, 2, 1).reshape(cin, -1)  # (Cin, k^n * Cout)
    bias = None if conv.bias is None else conv.bias.repeat(k**nd)
    y = _gemm(x, w.t(), bias).view(b, *size, *([k] * nd), cout)
    order = [0]
    for i in range(nd):
        order += [1 + i, 1 + nd + i]
    return y.permute(*order, 1 + 2 * nd).reshape(b, *[s * k for s in size], cout)


def run_channels_last(seq: nn.Sequential, x: Tensor) -> Tensor:
    """``seq(x)`` for channels-first ``x``; the result is channels-first in channels-last memory."""
    y = channels_last(x)
    for m in seq:
        if isinstance(m, _CONVTS):
            y = convt_patches(y, m)
        elif isinstance(m, _CONVS):
            y = conv_patches(y, m)
        elif isinstance(m, LayerNormNd):
            y = F.layer_norm(y, (m.weight.shape[0],), m.weight, m.bias, m.eps)
        else:
            y = m(y)
    return channels_first(y)


def run_patch_layout(seq: Iterable[nn.Module], x: Tensor) -> tuple[Tensor, int] | None:
    """Run a stack of kernel==stride transposed convs (+ LayerNorms, activations) without ever
    reordering voxels: returns ``(y, levels)``, ``y`` of shape ``(B, *S, *k, *k, ..., C)`` (one
    ``k`` group per transposed conv, ``levels`` of them), and None for any other stack. Per-voxel
    products (the mask decoder's hypernetwork dot) can run in this layout and be unshuffled
    afterwards with :func:`unshuffle`, on far fewer channels."""
    if not run_patch_layout_supported(seq):
        return None
    y = channels_last(x).contiguous()  # contiguous rows: each conv is one 2-D GEMM
    nd = x.dim() - 2
    levels = 0
    for m in seq:
        if isinstance(m, _CONVTS):
            w, bias = _convt_matrix(m, nd)
            y = _gemm(y, w.t(), bias).view(*y.shape[:-1], *([m.kernel_size[0]] * nd), m.out_channels)
            levels += 1
        elif isinstance(m, LayerNormNd):
            y = F.layer_norm(y, (m.weight.shape[0],), m.weight, m.bias, m.eps)
        else:
            y = m(y)
    return y, levels


def _gemm(x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(x, w, bias)``; a weight stored in another dtype (mixed precision) runs the
    product in the weight's dtype and returns ``x``'s."""
    if w.dtype == x.dtype or torch.is_autocast_enabled(x.device.type):
        return F.linear(x, w, bias)
    return F.linear(x.to(w.dtype), w, None if bias is None else bias.to(w.dtype)).to(x.dtype)


def _convt_matrix(m: nn.Module, nd: int) -> tuple[Tensor, Tensor | None]:
    """A kernel==stride transposed conv as ``(Cin, k^n * Cout)`` and its bias, patch-major.
    Without autograd the pair is cached on the module until its weights change."""
    key = None
    if not torch.is_grad_enabled() and not torch.jit.is_tracing() and not torch.compiler.is_compiling():
        key = tuple(tensor_key(p) for p in (m.weight, m.bias) if p is not None)
        hit = m.__dict__.get("_patch_matrix")
        if hit is not None and hit[0] == key:
            return hit[1]
    k, cin, cout = m.kernel_size[0], m.in_channels, m.out_channels
    w = m.weight.reshape(cin, cout, k**nd).transpose(1, 2).reshape(cin, -1)
    out = (w, None if m.bias is None else m.bias.repeat(k**nd))
    if key is not None:
        m.__dict__["_patch_matrix"] = (key, out)
    return out


def permuted(x: Tensor, order: Sequence[int]) -> Tensor:
    """``x.permute(order).contiguous()``. Without autograd, a gather with a cached index: the
    generic strided copy is about 10x slower on the many short axes of a patch layout."""
    if (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling()
            or not x.is_contiguous()):
        return x.permute(*order).contiguous()
    index = _permutation_index(tuple(x.shape), tuple(order), x.device)
    return x.reshape(-1).index_select(0, index).view([x.shape[i] for i in order])


@functools.lru_cache(maxsize=32)
def _permutation_index(shape: tuple[int, ...], order: tuple[int, ...], device: torch.device) -> Tensor:
    with torch.inference_mode(False), torch.no_grad():
        return torch.arange(math.prod(shape), device=device).view(shape).permute(*order).reshape(-1)


def patch_layout_dot(seq: nn.Sequential, x: Tensor, hyper: Tensor, chunk: int = 512) -> tuple[Tensor, int] | None:
    """``hyper @ seq(x)`` per voxel, for inference, in patch layout without ever materialising the
    full-resolution features: ``(B, M, *S, *k, .., *k)`` and the number of levels (for
    :func:`unshuffle`), or None when ``seq`` is not transposed convs ending in ``[ConvT, act]``.

    Every GEMM is 2-D on contiguous rows, and the last transposed conv, its activation and the
    dot with ``hyper`` (``(B, M, C)``) run on row chunks that stay in cache -- the same products
    and activations as :func:`run_patch_layout`, in fp32 rounding.
    """
    layers = list(seq)
    if (len(layers) < 2 or not isinstance(layers[-2], _CONVTS) or not isinstance(layers[-1], _ELEMENTWISE)
            or not run_patch_layout_supported(seq)):
        return None
    nd = x.dim() - 2
    b = x.shape[0]
    head, levels = run_patch_layout(layers[:-2], x)  # type: ignore[misc]
    shape = list(head.shape[1:-1])
    rows = head.reshape(b, -1, head.shape[-1])
    last, act = layers[-2], layers[-1]
    w, bias = _convt_matrix(last, nd)
    dt = w.dtype  # mixed precision: this stage runs in the weights' dtype, on larger chunks
    if dt != rows.dtype and not torch.is_autocast_enabled(rows.device.type):
        chunk = max(chunk, 4096)
    else:
        dt = rows.dtype
    k, cout = last.kernel_size[0], last.out_channels
    n_rows, n_hyper = rows.shape[1], hyper.shape[1]
    out = rows.new_empty(b, n_rows * k**nd, n_hyper)
    bias = None if bias is None else bias.to(dt)
    for i in range(b):
        h = hyper[i].t().to(dt)  # (C, M)
        for start in range(0, n_rows, chunk):
            part = rows[i, start:start + chunk].to(dt)
            z = part @ w if bias is None else torch.addmm(bias, part, w)
            z = act(z).view(-1, cout)
            dst = out[i, start * k**nd:(start + part.shape[0]) * k**nd]
            if dt == out.dtype:
                torch.mm(z, h, out=dst)
            else:
                dst.copy_(z @ h)
    shape += [k] * nd
    return out.transpose(1, 2).reshape(b, n_hyper, *shape), levels + 1


def run_patch_layout_supported(seq: Iterable[nn.Module]) -> bool:
    """True when :func:`run_patch_layout` can run ``seq``."""
    return all(isinstance(m, _ELEMENTWISE + (LayerNormNd,)) or (isinstance(m, _CONVTS) and _patch_conv(m)) for m in seq)


def unshuffle(t: Tensor, nd: int, levels: int) -> Tensor:
    """``(B, M, *S, *k_1, .., *k_levels)`` -> ``(B, M, *(S * k_1 * .. * k_levels))``."""
    b, m = t.shape[:2]
    order = [0, 1]
    for i in range(nd):
        order += [2 + i] + [2 + nd * (1 + lv) + i for lv in range(levels)]
    t = permuted(t, order)
    sizes = [math.prod(t.shape[2 + i * (levels + 1): 2 + (i + 1) * (levels + 1)]) for i in range(nd)]
    return t.reshape(b, m, *sizes)


class PatchSequential(nn.Sequential):
    """``nn.Sequential`` (same keys) that runs channels-last GEMMs outside reference mode."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if reference_enabled() or not supported(self) or x.dim() < 4:
            return super().forward(x)
        return run_channels_last(self, x)
