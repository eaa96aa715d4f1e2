"""Small building blocks shared by every model, generic in the number of spatial dimensions."""
from __future__ import annotations

import torch
from torch import nn

from .fast import packed_linear, reference_enabled


def conv_cls(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


def conv_transpose_cls(spatial_dims: int) -> type[nn.Module]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]


class LayerNormNd(nn.Module):
    """LayerNorm over the channel axis (dim 1) of a channels-first tensor (SAM's LayerNorm2d/3d)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        shape = (-1,) + (1,) * (x.dim() - 2)
        return self.weight.view(shape) * x + self.bias.view(shape)


class MLPBlock(nn.Module):
    """Two linear layers with an activation between (keys ``lin1``, ``lin2``).

    ``gemm_dtype`` (set only on the mixed-precision inference copy, see
    ``PromptableModel.low_precision``): the block runs in that dtype (its weights are stored in it)
    and returns the input's dtype."""

    gemm_dtype: torch.dtype | None = None

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gemm_dtype is not None and x.dtype != self.gemm_dtype:
            return self.forward(x.to(self.gemm_dtype)).to(x.dtype)
        if not reference_enabled():  # a few rows on CPU: oneDNN with packed weights
            h = packed_linear(self.lin1, x, self.act)
            y = None if h is None else packed_linear(self.lin2, h)
            if y is not None:
                return y
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (keys ``layers.N``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = torch.relu(x)
        return x


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *S) -> (B, *S, C)."""
    return x.permute(0, *range(2, x.dim()), 1)


def channels_first(x: torch.Tensor) -> torch.Tensor:
    """(B, *S, C) -> (B, C, *S)."""
    return x.permute(0, x.dim() - 1, *range(1, x.dim() - 1))


def token_major(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(B, C, *S)`` with its memory laid out as ``(B, *S, C)``: same shape and values, but the
    decoder's token rows ``x.flatten(2).transpose(1, 2)`` are then contiguous (no transposing copy,
    and no strided adds and norms, on every click)."""
    return channels_first(channels_last(x).contiguous())
