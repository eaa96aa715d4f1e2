"""Exact channels-last fast path of the small conv stacks (mask upscaler, mask downscaler).

A convolution whose kernel equals its stride (no padding) is a matrix product over
non-overlapping patches, and so is its transposed twin (each input voxel writes one output patch).
Run channels-last, each layer is one GEMM plus a permutation, and the channel LayerNorms become
``F.layer_norm`` over the last axis -- the same math as the official convolutions, in fp32
rounding. Stacks holding any other layer run the official way.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import LayerNormNd, channels_first, channels_last
from .fast import reference_enabled

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
        x = x.permute(*order).reshape(b, *size, cin * k**nd)
    return F.linear(x, conv.weight.reshape(conv.out_channels, -1), conv.bias)


def convt_patches(x: Tensor, conv: nn.Module) -> Tensor:
    """``ConvTranspose`` with kernel == stride on channels-last ``(B, *S, Cin)`` -> ``(B, *kS, Cout)``."""
    k = conv.kernel_size[0]
    b, *size, cin = x.shape
    nd = len(size)
    cout = conv.out_channels
    w = conv.weight.reshape(cin, cout, k**nd).permute(0, 2, 1).reshape(cin, -1)  # (Cin, k^n * Cout)
    bias = None if conv.bias is None else conv.bias.repeat(k**nd)
    y = F.linear(x, w.t(), bias).view(b, *size, *([k] * nd), cout)
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


def run_patch_layout(seq: nn.Sequential, x: Tensor) -> Optional[tuple[Tensor, int]]:
    """Run a stack of kernel==stride transposed convs (+ LayerNorms, activations) without ever
    reordering voxels: returns ``(y, levels)``, ``y`` of shape ``(B, *S, *k, *k, ..., C)`` (one
    ``k`` group per transposed conv, ``levels`` of them), and None for any other stack. Per-voxel
    products (the mask decoder's hypernetwork dot) can run in this layout and be unshuffled
    afterwards with :func:`unshuffle`, on far fewer channels."""
    if not all(isinstance(m, _ELEMENTWISE + (LayerNormNd,)) or (isinstance(m, _CONVTS) and _patch_conv(m)) for m in seq):
        return None
    y = channels_last(x)
    nd = x.dim() - 2
    levels = 0
    for m in seq:
        if isinstance(m, _CONVTS):
            k, cin, cout = m.kernel_size[0], m.in_channels, m.out_channels
            w = m.weight.reshape(cin, cout, k**nd).permute(0, 2, 1).reshape(cin, -1)
            bias = None if m.bias is None else m.bias.repeat(k**nd)
            y = F.linear(y, w.t(), bias).view(*y.shape[:-1], *([k] * nd), cout)
            levels += 1
        elif isinstance(m, LayerNormNd):
            y = F.layer_norm(y, (m.weight.shape[0],), m.weight, m.bias, m.eps)
        else:
            y = m(y)
    return y, levels


def unshuffle(t: Tensor, nd: int, levels: int) -> Tensor:
    """``(B, M, *S, *k_1, .., *k_levels)`` -> ``(B, M, *(S * k_1 * .. * k_levels))``."""
    b, m = t.shape[:2]
    order = [0, 1]
    for i in range(nd):
        order += [2 + i] + [2 + nd * (1 + lv) + i for lv in range(levels)]
    t = t.permute(*order)
    sizes = [math.prod(t.shape[2 + i * (levels + 1): 2 + (i + 1) * (levels + 1)]) for i in range(nd)]
    return t.reshape(b, m, *sizes)


class PatchSequential(nn.Sequential):
    """``nn.Sequential`` (same keys) that runs channels-last GEMMs outside reference mode."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if reference_enabled() or not supported(self) or x.dim() < 4:
            return super().forward(x)
        return run_channels_last(self, x)
