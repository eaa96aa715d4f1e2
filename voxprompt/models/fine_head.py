"""A boundary head at the input's own resolution (ours, not in SAM): SAM's decoder places mask
logits on a grid 4x the token grid (a quarter of the input's resolution: 5.5 mm voxels for the
default model); this head moves them to the input grid using image features seen at that
resolution, so that the model itself places boundaries at the ROI's spacing.

Split in two so that a click stays cheap:

* :class:`FineStem` runs once per ROI in the image encoder: two 3x3(x3) convolutions of the
  normalised input (``(B, in_chans, *S) -> (B, F, *S)``). Its output travels inside the image
  embedding, packed space-to-depth behind SAM's channels (:func:`pack` / :func:`unpack`), so a
  session, a cache or an ONNX graph keeps handling one tensor.
* :class:`FineHead` runs per click in the mask decoder: the coarse logits upsampled (trilinear) to
  the input grid, one convolution of them added to the stem's features, GELU, one convolution to
  a logit correction. The last convolution starts at zero, so a model grown from one without the
  head predicts exactly what it did (its session upsampled the same way).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import conv_cls


def pack(fine: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, F, *S)`` -> ``(B, F * patch**d, *grid)``: each token carries its patch's features."""
    b, f, *size = fine.shape
    d = len(size)
    g = [s // patch for s in size]
    x = fine.reshape(b, f, *[v for gi in g for v in (gi, patch)])
    # (B, F, g0, p, g1, p, ...) -> (B, F, p, p, ..., g0, g1, ...)
    order = [0, 1] + [3 + 2 * i for i in range(d)] + [2 + 2 * i for i in range(d)]
    return x.permute(order).reshape(b, f * patch**d, *g)


def unpack(packed: torch.Tensor, channels: int, patch: int) -> torch.Tensor:
    """Inverse of :func:`pack`: ``(B, F * patch**d, *grid)`` -> ``(B, F, *S)``, laid out
    channels-last in memory (one copy; the head's convolutions want that layout)."""
    b, _, *g = packed.shape
    d = len(g)
    x = packed.reshape(b, channels, *([patch] * d), *g)
    # (B, F, p0, p1, ..., g0, g1, ...) -> memory order (B, g0, p0, g1, p1, ..., F)
    order = [0] + [v for i in range(d) for v in (2 + d + i, 2 + i)] + [1]
    x = x.permute(order).contiguous().reshape(b, *[gi * patch for gi in g], channels)
    return x.permute(0, d + 1, *range(1, d + 1))


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last memory (values unchanged): the CPU's convolutions of a few channels
    run several times faster so, forwards and backwards."""
    if torch.jit.is_tracing():  # a memory layout is not part of an exported graph
        return x
    fmt = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
    return x.contiguous(memory_format=fmt)


def _prefer_channels_last(module: nn.Module) -> None:
    """Weights with channels-last strides (the layout a single-channel input cannot signal; still
    contiguous, so checkpoints are unaffected and loading copies into these strides)."""
    for conv in module.children():
        fmt = torch.channels_last_3d if conv.weight.dim() == 5 else torch.channels_last
        conv.weight.data = conv.weight.data.contiguous(memory_format=fmt)


class FineStem(nn.Module):
    """Image features at the input resolution (encoder side, once per ROI)."""

    def __init__(self, spatial_dims: int, in_chans: int, channels: int) -> None:
        super().__init__()
        conv = conv_cls(spatial_dims)
        self.conv1 = conv(in_chans, channels, kernel_size=3, padding=1)
        self.conv2 = conv(channels, channels, kernel_size=3, padding=1)
        _prefer_channels_last(self)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.gelu(self.conv1(channels_last(image))))


class FineHead(nn.Module):
    """Coarse logits ``(B, M, *low)`` + stem features ``(B, F, *S)`` -> logits ``(B, M, *S)``."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        conv = conv_cls(spatial_dims)
        self.from_logits = conv(1, channels, kernel_size=3, padding=1, bias=False)
        self.to_logits = conv(channels, 1, kernel_size=3, padding=1)
        nn.init.zeros_(self.to_logits.weight)
        nn.init.zeros_(self.to_logits.bias)
        self.mode = "trilinear" if spatial_dims == 3 else "bilinear"
        _prefer_channels_last(self)

    def forward(self, logits: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        b, m = logits.shape[:2]
        size = fine.shape[2:]
        up = F.interpolate(logits.reshape(b * m, 1, *logits.shape[2:]), size=size, mode=self.mode,
                           align_corners=False)
        if fine.shape[0] == b * m:
            feats = fine
        elif fine.shape[0] == 1:  # one embedding for several prompt rows
            feats = fine.expand(b * m, *fine.shape[1:])
        else:
            feats = torch.repeat_interleave(fine, m, dim=0)
        hidden = F.gelu(channels_last(feats) + self.from_logits(channels_last(up)))
        out = up + self.to_logits(hidden)
        return out.reshape(b, m, *size)
