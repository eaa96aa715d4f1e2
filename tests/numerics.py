"""Tolerance for comparing two fp32 computations of IoU scores (the IoU head's output).

Relative L2 error ``||a - b|| / ||b||`` suits tensors whose norm is that of their typical values:
embeddings and mask logits. It does not suit IoU scores. A score is one output of the head's last
linear layer, ``y_i = sum_j W_ij h_j + b_i``: a sum of n + 1 terms of both signs, which can cancel.
Two fp32 computations of it (fast path vs reference, voxprompt vs the official code, compiled vs
eager) differ through

1. their inputs: if ``||h_a - h_b|| <= r ||h||`` (r: the relative L2 accuracy held for every other
   tensor), then ``|W_i (h_a - h_b)| <= r ||W_i|| ||h||`` (Cauchy-Schwarz);
2. the rounding of the sum itself, in any order: at most ``gamma_{n+1} (|W_i| |h| + |b_i|)`` each,
   ``gamma_k = k u / (1 - k u)``, u = 2^-24 (the standard bound for a k-term fp32 dot product).

So ``|y_a,i - y_b,i| <= r ||W_i|| ||h|| + 2 gamma_{n+1} m_i`` with ``m_i = |W_i| |h| + |b_i|``, the
magnitude of the terms summed, whatever |y_i| is. With random weights a score can be 0.02 while its terms
sum to about 2.5 in magnitude: then one fp32 ulp of the terms (2.4e-7) is 1e-5 of the score, and a
relative-only tolerance fails on an accurate result (and where it passes depends on the CPU's
summation order). This absolute bound needs no relative part: it already exceeds r |y_i|, because
``|y_i| <= ||W_i|| ||h|| + |b_i|``. It is loose by about 10-100x (measured differences are 1-3 ulps of the terms) and
still far below the O(0.1) error of a real mistake (wrong token, missing bias).
"""
from __future__ import annotations

import torch
from torch import nn

U32 = 2.0 ** -24  # unit roundoff of float32


def gamma(k: int) -> float:
    """Bound on the relative rounding error of a k-term fp32 sum of products, any order."""
    return k * U32 / (1 - k * U32)


class ScoreInputs:
    """Records the input ``h`` of ``model.mask_decoder.iou_prediction_head``'s last linear layer on
    every call in a ``with`` block (voxprompt's and the official modules have the same layout)."""

    def __init__(self, model: nn.Module) -> None:
        self.layer: nn.Linear = model.mask_decoder.iou_prediction_head.layers[-1]
        self.inputs: list[torch.Tensor] = []

    def __enter__(self) -> ScoreInputs:
        self._hook = self.layer.register_forward_pre_hook(lambda _m, args: self.inputs.append(args[0].detach()))
        return self

    def __exit__(self, *exc) -> None:
        self._hook.remove()

    def tolerance(self, call: int, rel_inputs: float, tokens: slice | list = slice(None)) -> torch.Tensor:
        """Per-score bound ``r ||W_i|| ||h|| + 2 gamma_{n+1} m_i`` (module docstring) for the scores
        of recorded call ``call``, columns ``tokens`` of the head output; shape (rows, len(tokens))."""
        h = self.inputs[call].double().reshape(-1, self.layer.in_features)
        w, b = self.layer.weight.detach().double(), self.layer.bias.detach().double()
        propagated = rel_inputs * h.norm(dim=1, keepdim=True) * w.norm(dim=1)
        rounding = 2 * gamma(self.layer.in_features + 1) * (h.abs() @ w.abs().T + b.abs())
        return (propagated + rounding)[:, tokens]


def assert_scores_close(actual: torch.Tensor, expected: torch.Tensor, tol: torch.Tensor) -> None:
    """Elementwise ``|actual - expected| <= tol`` (tol from :meth:`ScoreInputs.tolerance`)."""
    assert actual.shape == expected.shape == tol.shape, (actual.shape, expected.shape, tol.shape)
    diff = (actual.detach().double() - expected.detach().double()).abs()
    assert bool((diff <= tol).all()), f"score differences {diff.flatten().tolist()} exceed {tol.flatten().tolist()}"
