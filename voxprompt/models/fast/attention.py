"""Exact fast attention of the ViT encoder (the math of :mod:`.image_encoder`, less work).

Official windowed blocks zero-pad the token grid to a multiple of the window and attend over each
whole padded window. A padded token is the zero vector after LayerNorm, so its key and value are
the projection biases ``b_k`` and ``b_v`` whatever its position; only its relative-position bias
differs. Here:

* only the real queries are computed (their outputs are the only ones the block keeps);
* the real keys enter the attention as usual, and all padded keys of a window are folded into one
  virtual key ``(b_k, b_v)`` whose additive bias is the log-sum-exp of their relative-position
  biases: ``sum_j exp(q.b_k s + r_j) = exp(q.b_k s + logsumexp_j r_j)`` (exact);
* that log-sum-exp factorises over the decomposed per-axis terms, so it costs O(window^2) per
  query instead of O(window^3) (3D) -- the padded keys form at most ``n`` disjoint boxes;
* the attention is ``scaled_dot_product_attention`` with the bias as a float mask; queries are
  processed in chunks to bound the bias memory.

SAM-Med3D's quirky 3D broadcast (see :func:`.image_encoder.add_decomposed_rel_pos`) is reproduced:
for a query at (d, h, w) and a key at (kd, kh, kw) the bias is
``A[d,h,w,kw] + B[d,h,kd,kw] + C[d,h,kh,kw]`` where ``A = q(d,h,w).R_d[d,kw]``,
``B = q(d,h,kd).R_h[h,kw]`` and ``C = q(d,h,kh).R_w[kh,kw]`` -- B and C read the query vectors of
*other* window positions (padded ones included, whose ``q = b_q``).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# Upper bound on the number of bias elements materialised at once (per query chunk).
BIAS_BUDGET = 1 << 25


def _lse(x: Tensor, dims: Sequence[int]) -> Tensor:
    return torch.logsumexp(x, dim=tuple(dims), keepdim=True) if len(dims) else x


def _pad_boxes(real: Sequence[int], window: int) -> list[list[slice]]:
    """Disjoint index boxes covering the window minus the real box ``[0, r_0) x ... ``."""
    boxes = []
    for a, r in enumerate(real):
        if r < window:
            box = [slice(0, real[i]) for i in range(a)] + [slice(r, window)] + [slice(None)] * (len(real) - a - 1)
            boxes.append(box)
    return boxes


def _bias_2d(
    q_real: Tensor, tables: Sequence[Tensor], real: Sequence[int], window: int, pad: bool
) -> tuple[Tensor, Tensor | None]:
    """Bias of real queries ``(..., r0, r1, hd)`` vs real keys ``(..., L, Lr)`` and the log-sum-exp
    over the padded keys ``(..., L, 1)`` (None when nothing is padded)."""
    r0, r1 = real
    rh = torch.einsum("...hwc,hkc->...hwk", q_real, tables[0])  # (.., r0c, r1, window): key h
    rw = torch.einsum("...hwc,wkc->...hwk", q_real, tables[1][:r1])  # key w
    lead = rh.shape[:-1]
    real_bias = (rh[..., :r0, None] + rw[..., None, :r1]).reshape(*lead[:-2], -1, r0 * r1)
    if not pad:
        return real_bias, None
    parts = []
    for box_h, box_w in _pad_boxes(real, window):
        parts.append(_lse(rh[..., box_h], [-1]) + _lse(rw[..., box_w], [-1]))
    pad_lse = torch.logsumexp(torch.cat(parts, dim=-1), dim=-1, keepdim=True)
    return real_bias, pad_lse.reshape(*lead[:-2], -1, 1)


def _bias_3d(
    q_real: Tensor, q_rows: Tensor, tables: Sequence[Tensor], real: Sequence[int], window: int, pad: bool
) -> tuple[Tensor, Tensor | None]:
    """3D version with SAM-Med3D's broadcast. ``q_real``: ``(.., dc, r1, r2, hd)`` real queries;
    ``q_rows``: ``(.., dc, r1, window, hd)`` the query vectors of the same (d, h) rows at every
    w position of the window (padded ones included)."""
    r0, r1, r2 = real
    a = torch.einsum("...dhwc,dkc->...dhwk", q_real, tables[0])  # on key w
    b = torch.einsum("...dhxc,hkc->...dhxk", q_rows, tables[1][:r1])  # x = key d, k = key w
    c = torch.einsum("...dhxc,xkc->...dhxk", q_rows, tables[2])  # x = key h, k = key w
    lead = a.shape[:-4]
    dc = a.shape[-4]
    real_bias = (
        a[..., :, :, :, None, None, :r2]
        + b[..., :, :, None, :r0, None, :r2]
        + c[..., :, :, None, None, :r1, :r2]
    ).reshape(*lead, dc * r1 * r2, r0 * r1 * r2)
    if not pad:
        return real_bias, None
    parts = []
    for box_d, box_h, box_w in _pad_boxes(real, window):
        # sum over kw of exp(A[kw]) * sum_kd exp(B[kd, kw]) * sum_kh exp(C[kh, kw])
        lb = _lse(b[..., box_d, box_w], [-2])  # (.., dc, r1, 1, |w|)
        lc = _lse(c[..., box_h, box_w], [-2])
        parts.append(_lse(a[..., box_w] + lb + lc, [-1]))  # (.., dc, r1, r2, 1)
    pad_lse = torch.logsumexp(torch.cat(parts, dim=-1), dim=-1, keepdim=True)
    return real_bias, pad_lse.reshape(*lead, dc * r1 * r2, 1)


def window_attention(
    qkv: Tensor,
    num_heads: int,
    scale: float,
    tables: Sequence[Tensor] | None,
    real: Sequence[int],
) -> Tensor:
    """Attention of the real queries of windows ``qkv`` ``(N, *window_shape, 3C)`` (the official
    window content: projections of the tokens, biases at padded positions) whose real tokens fill
    the box ``[0, real)``. ``tables``: per-axis relative-position rows ``(window, window, hd)`` or
    None. Returns ``(N, *real, C)`` before the output projection."""
    n_win, *win, c3 = qkv.shape
    nd = len(win)
    window = win[0]
    c = c3 // 3
    hd = c // num_heads
    x = qkv.view(n_win, *win, 3, num_heads, hd)
    # (N, H, *win, hd) each
    perm = (0, nd + 1) + tuple(range(1, nd + 1)) + (nd + 2,)
    q_full, k_full, v_full = (x.select(nd + 1, i).permute(*perm) for i in range(3))
    real_idx = tuple(slice(0, r) for r in real)
    pad = any(r < w for r, w in zip(real, win))
    n_real = math.prod(real)
    k = k_full[(Ellipsis,) + real_idx + (slice(None),)].reshape(n_win, num_heads, n_real, hd)
    v = v_full[(Ellipsis,) + real_idx + (slice(None),)].reshape(n_win, num_heads, n_real, hd)
    if pad:  # every padded key/value is (b_k, b_v): the window's last position is padded
        last = (Ellipsis,) + (slice(-1, None),) * nd + (slice(None),)
        k = torch.cat([k, k_full[last].reshape(n_win, num_heads, 1, hd)], dim=2)
        v = torch.cat([v, v_full[last].reshape(n_win, num_heads, 1, hd)], dim=2)
    n_pad = math.prod(win) - n_real
    row = math.prod(real[1:])
    chunk = max(1, min(real[0], BIAS_BUDGET // max(1, n_win * num_heads * row * k.shape[2])))
    outs = []
    for d0 in range(0, real[0], chunk):
        d1 = min(real[0], d0 + chunk)
        q_real = q_full[(Ellipsis, slice(d0, d1)) + real_idx[1:] + (slice(None),)]
        lq = (d1 - d0) * row
        mask: Tensor | None = None
        if tables is not None:
            first = tables[0][d0:d1]
            if nd == 2:
                real_bias, pad_lse = _bias_2d(q_real, [first, tables[1]], real, window, pad)
            else:
                q_rows = q_full[..., d0:d1, : real[1], :, :]
                real_bias, pad_lse = _bias_3d(q_real, q_rows, [first, tables[1], tables[2]], real, window, pad)
            mask = real_bias if pad_lse is None else torch.cat([real_bias, pad_lse], dim=-1)
        elif pad:
            mask = q_real.new_zeros(n_win, num_heads, lq, n_real + 1)
            mask[..., -1] = math.log(n_pad)
        q = q_real.reshape(n_win, num_heads, lq, hd)
        if mask is not None:
            mask = mask.to(q.dtype)
        outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    # (N, H, L, hd) -> (N, *real, C)
    out = out.view(n_win, num_heads, *real, hd)
    return out.permute(0, *range(2, 2 + nd), 1, 2 + nd).reshape(n_win, *real, c)


def padded_qkv(qkv: Tensor, bias: Tensor | None, window: int) -> tuple[Tensor, tuple[int, ...]]:
    """The official padded qkv grid: projections of the real tokens, ``bias`` (the projection of a
    zero token) at padded positions. ``qkv``: ``(B, *size, 3C)``."""
    b, *size, c3 = qkv.shape
    padded = tuple(math.ceil(s / window) * window for s in size)
    if padded == tuple(size):
        return qkv, padded
    full = qkv.new_empty(b, *padded, c3)
    if bias is None:
        full.zero_()
    else:
        full.copy_(bias.to(qkv.dtype).expand_as(full))
    full[(slice(None),) + tuple(slice(0, s) for s in size)] = qkv
    return full, padded


def windowed_block_attention(
    qkv: Tensor,
    bias: Tensor | None,
    num_heads: int,
    scale: float,
    tables: Sequence[Tensor] | None,
    window: int,
) -> Tensor:
    """Windowed attention of a whole grid, real queries only: ``(B, *size, 3C) -> (B, *size, C)``.

    Windows are grouped by how much of them is real (interior windows, and the last window along
    each padded axis), one batched attention per group."""
    b, *size, c3 = qkv.shape
    nd = len(size)
    full, padded = padded_qkv(qkv, bias, window)
    counts = [p // window for p in padded]
    shape = [b]
    for n in counts:
        shape += [n, window]
    grid = full.view(*shape, c3)
    order = [0] + [1 + 2 * i for i in range(nd)] + [2 + 2 * i for i in range(nd)] + [1 + 2 * nd]
    grid = grid.permute(*order)  # (B, *counts, *window, 3C)
    out = qkv.new_empty(b, *size, c3 // 3)
    choices = []
    for s, n in zip(size, counts):
        last_real = s - (n - 1) * window
        axis = []
        if n > 1 or last_real == window:
            axis.append((0, n - 1 if last_real < window else n, window))
        if last_real < window:
            axis.append((n - 1, n, last_real))
        choices.append(axis)
    for combo in itertools.product(*choices):
        sel = (slice(None),) + tuple(slice(lo, hi) for lo, hi, _ in combo)
        win = grid[sel]
        m = [hi - lo for lo, hi, _ in combo]
        real = [r for _, _, r in combo]
        res = window_attention(win.reshape(-1, *([window] * nd), c3), num_heads, scale, tables, real)
        res = res.view(b, *m, *real, -1)
        inv = [0]
        for i in range(nd):
            inv += [1 + i, 1 + nd + i]
        res = res.permute(*inv, 1 + 2 * nd).reshape(b, *[mi * ri for mi, ri in zip(m, real)], -1)
        dst = (slice(None),) + tuple(slice(lo * window, lo * window + mi * ri)
                                     for (lo, _, _), mi, ri in zip(combo, m, real))
        out[dst] = res
    return out
