"""ViTDet-style image encoder of SAM, generic in 2D (SAM, SAM-Med2D, SAM-UNet) and 3D (SAM-Med3D).

Tokens are kept channels-last, ``(B, *grid, C)``. Quirks of the official code that trained
weights depend on, reproduced on purpose:

* windowed blocks zero-pad the (post-LayerNorm) token grid up to a multiple of ``window_size``
  and attend over the whole padded window without masking (SAM-Med3D: an 8^3 grid padded to
  14^3; the padded tokens act as keys/values with ``k = b_k``, ``v = b_v``);
* decomposed relative positions (one table per axis) are added with the *unscaled* query.

Outside :func:`.fast.reference_mode` the attention takes the exact fast paths of
:mod:`.fast_attention` (real queries only, padded keys folded, ``scaled_dot_product_attention``).
``ImageEncoder.gradient_checkpointing = True`` recomputes each block in the backward pass.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .adapter import Adapter
from .common import LayerNormNd, MLPBlock, channels_first, channels_last, conv_cls
from .config import SamConfig
from .fast import reference_enabled, reference_mode
from .fast.attention import window_attention, windowed_block_attention
from .fine_head import FineStem, pack

REL_POS_NAMES = {2: ("rel_pos_h", "rel_pos_w"), 3: ("rel_pos_d", "rel_pos_h", "rel_pos_w")}


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided convolution (key ``proj``); returns channels-last."""

    def __init__(self, spatial_dims: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = conv_cls(spatial_dims)(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channels_last(self.proj(x))


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position rows for every (query, key) pair along one axis: (q_size, k_size, C).

    The table is linearly resized when its length differs from ``2 * max(q, k) - 1``.
    """
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        rel_pos = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist, mode="linear"
        )
        rel_pos = rel_pos.reshape(-1, max_rel_dist).permute(1, 0)
    dev = rel_pos.device
    q_coords = torch.arange(q_size, device=dev)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=dev)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


def add_decomposed_rel_pos(
    attn: torch.Tensor,
    q: torch.Tensor,
    tables: Sequence[torch.Tensor],
    q_size: Sequence[int],
    k_size: Sequence[int],
) -> torch.Tensor:
    """Add MViTv2 decomposed relative positions, one table per axis, to ``attn`` (B, Lq, Lk)."""
    n = len(q_size)
    b, _, dim = q.shape
    r_q = q.reshape(b, *q_size, dim)
    axes = "dhw"[-n:]
    rels = [
        torch.einsum(f"b{axes}c,{axes[a]}kc->b{axes}k", r_q, get_rel_pos(q_size[a], k_size[a], table))
        for a, table in enumerate(tables)
    ]
    attn = attn.view(b, *q_size, *k_size)
    if n == 2:
        attn = attn + rels[0][..., :, None] + rels[1][..., None, :]
    else:
        # SAM-Med3D's official broadcasting, kept because its weights were trained with it: each
        # (B, d, h, w, k) term is indexed so that its k axis lands on the *key-w* axis, the d-term
        # is indexed by the query (d, h, w), the h- and w-terms by query (d, h) and by key d resp.
        # key h in place of query w. Equal to the textbook version only when the tables are zero.
        rd, rh, rw = rels
        attn = attn + rd[:, :, :, :, None, None, :] + rh[:, :, :, None, :, None, :] + rw[:, :, :, None, None, :, :]
    return attn.reshape(b, math.prod(q_size), math.prod(k_size))


class Attention(nn.Module):
    """Multi-head self-attention with fused ``qkv`` and optional decomposed relative positions."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool,
        use_rel_pos: bool,
        input_size: Sequence[int],
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        self.rel_pos_names = REL_POS_NAMES[len(input_size)]
        if use_rel_pos:
            for name, size in zip(self.rel_pos_names, input_size):
                setattr(self, name, nn.Parameter(torch.zeros(2 * size - 1, head_dim)))

    def rel_pos_tables(self) -> list[torch.Tensor]:
        return [getattr(self, n) for n in self.rel_pos_names]

    def rel_pos_rows(self, size: Sequence[int]) -> list[torch.Tensor] | None:
        """Per-axis relative-position rows ``(s, s, head_dim)`` for a ``size`` grid, or None."""
        if not self.use_rel_pos:
            return None
        return [get_rel_pos(s, s, t) for s, t in zip(size, self.rel_pos_tables())]

    def forward_windows(self, x: torch.Tensor, window: int) -> torch.Tensor:
        """Fast path of a windowed block: ``(B, *size, C)`` normalised tokens -> attention output,
        exactly the official zero-padded windowed attention cropped to the real tokens."""
        out = windowed_block_attention(
            self.qkv(x), self.qkv.bias, self.num_heads, self.scale,
            self.rel_pos_rows([window] * (x.dim() - 2)), window,
        )
        return self.proj(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not reference_enabled():
            size = list(x.shape[1:-1])
            out = window_attention(self.qkv(x), self.num_heads, self.scale, self.rel_pos_rows(size), size)
            return self.proj(out)
        b, *size, _ = x.shape
        n_tok = math.prod(size)
        qkv = self.qkv(x).reshape(b, n_tok, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, n_tok, -1).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if self.use_rel_pos:
            attn = add_decomposed_rel_pos(attn, q, self.rel_pos_tables(), size, size)
        attn = attn.softmax(dim=-1)
        n = len(size)
        x = (attn @ v).view(b, self.num_heads, *size, -1)
        x = x.permute(0, *range(2, 2 + n), 1, 2 + n).reshape(b, *size, -1)
        return self.proj(x)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad a channels-last grid to multiples of ``window`` and cut it into windows.

    Returns ``(B * num_windows, window, ..., window, C)`` and the padded grid size.
    """
    b, *size, c = x.shape
    n = len(size)
    pads = [(window - s % window) % window for s in size]
    if any(pads):
        pad_arg: list[int] = [0, 0]
        for p in reversed(pads):
            pad_arg += [0, p]
        x = F.pad(x, pad_arg)
    padded = tuple(s + p for s, p in zip(size, pads))
    shape = [b]
    for s in padded:
        shape += [s // window, window]
    x = x.view(*shape, c)
    order = [0] + [1 + 2 * i for i in range(n)] + [2 + 2 * i for i in range(n)] + [1 + 2 * n]
    return x.permute(*order).reshape(-1, *([window] * n), c), padded


def window_unpartition(
    windows: torch.Tensor, window: int, padded: Sequence[int], size: Sequence[int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`, cropping the padding away."""
    n = len(size)
    counts = [p // window for p in padded]
    b = windows.shape[0] // math.prod(counts)
    x = windows.reshape(b, *counts, *([window] * n), -1)
    order = [0]
    for i in range(n):
        order += [1 + i, 1 + n + i]
    x = x.permute(*order + [1 + 2 * n]).reshape(b, *padded, -1)
    if tuple(padded) != tuple(size):
        x = x[(slice(None),) + tuple(slice(0, s) for s in size)].contiguous()
    return x


class Block(nn.Module):
    """Pre-norm transformer block: windowed or global attention, MLP, optional adapter."""

    def __init__(self, cfg: SamConfig, window_size: int) -> None:
        super().__init__()
        dim = cfg.embed_dim
        grid = [cfg.grid_size] * cfg.spatial_dims
        attn_size = grid if window_size == 0 else [window_size] * cfg.spatial_dims
        self.norm1 = nn.LayerNorm(dim, eps=cfg.layernorm_eps)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias, cfg.use_rel_pos, attn_size)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.layernorm_eps)
        self.mlp = MLPBlock(dim, int(dim * cfg.mlp_ratio))
        self.window_size = window_size
        self.Adapter: Adapter | None = Adapter(dim, cfg.adapter_ratio) if cfg.adapter else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0 and not reference_enabled():
            x = self.attn.forward_windows(x, self.window_size)
        elif self.window_size > 0:
            size = x.shape[1:-1]
            x, padded = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, padded, size)
        else:
            x = self.attn(x)
        x = shortcut + x
        x_norm = self.norm2(x)
        if self.Adapter is not None:
            return x + self.mlp(x_norm) + self.Adapter(x_norm)
        return x + self.mlp(x_norm)


class ImageEncoder(nn.Module):
    """Patch embedding + absolute PE + blocks + neck; ``(B, C_in, *S) -> (B, C_out, *grid)``."""

    def __init__(self, cfg: SamConfig) -> None:
        super().__init__()
        d = cfg.spatial_dims
        self.cfg = cfg
        self.gradient_checkpointing = False  # runtime switch, not stored in checkpoints
        self.patch_embed = PatchEmbed(d, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, *([cfg.grid_size] * d), cfg.embed_dim))
        self.blocks = nn.ModuleList(
            Block(cfg, 0 if i in cfg.global_attn_indexes else cfg.window_size) for i in range(cfg.depth)
        )
        conv = conv_cls(d)
        out = cfg.prompt_embed_dim
        self.neck = nn.Sequential(
            conv(cfg.embed_dim, out, kernel_size=1, bias=False),
            LayerNormNd(out),
            conv(out, out, kernel_size=3, padding=1, bias=False),
            LayerNormNd(out),
        )
        # ours: features for the boundary head, packed behind SAM's channels (models.fine_head)
        self.fine_stem = FineStem(d, cfg.in_chans, cfg.fine_channels) if cfg.fine_channels else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding plus absolute position embedding, channels-last tokens."""
        return self.patch_embed(x) + self.pos_embed

    def forward_neck(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.neck(channels_first(tokens))

    def run_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Block ``index``, recomputed in the backward pass when ``gradient_checkpointing`` is on."""
        blk = self.blocks[index]
        if self.gradient_checkpointing and torch.is_grad_enabled():
            ref = reference_enabled()  # the recomputation may run on another thread

            def run(t: torch.Tensor) -> torch.Tensor:
                with reference_mode(ref):
                    return blk(t)

            return checkpoint(run, x, use_reentrant=False)
        return blk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x
        x = self.embed(x)
        for i in range(len(self.blocks)):
            x = self.run_block(i, x)
        emb = self.forward_neck(x)
        if self.fine_stem is None:
            return emb
        return torch.cat([emb, pack(self.fine_stem(image).to(emb.dtype), self.cfg.patch_size)], dim=1)
