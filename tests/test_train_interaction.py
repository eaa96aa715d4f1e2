"""ClickLoop's loss over the click passes: the first pass's weight."""
import numpy as np
import pytest
import torch

from voxprompt.errors import UsageError
from voxprompt.train.config import TrainConfig
from voxprompt.train.interaction import ClickLoop


def _ball(n: int, r: float) -> torch.Tensor:
    g = np.indices((n, n, n)) - (n - 1) / 2
    return torch.from_numpy((g**2).sum(0) <= r * r)[None, None].float()


class _Growing(torch.nn.Module):
    """Pass k (k clicks so far) predicts a ball of radius 2k: each pass has its own loss."""

    img_size, low_res_size = 16, 16

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def encode(self, x):
        return x * self.w

    def decode(self, emb, points, mask_input, multimask=False):
        k = points[0].shape[1]
        logits = (_ball(16, 2.0 * k) * 20 - 10).repeat(emb.shape[0], 1, 1, 1, 1) * self.w
        return logits, torch.full((emb.shape[0], 1), 0.5)


def _loss(steps: int, weight: float = 1.0) -> float:
    gt = _ball(16, 5.0)
    loop = ClickLoop(_Growing(), steps, "cvpr25", "dice_ce", first_click_weight=weight)
    loss, _ = loop(torch.zeros_like(gt), gt, np.random.default_rng(0), lambda: torch.autocast("cpu", enabled=False))
    return float(loss.detach())


def test_the_first_pass_weight_makes_a_weighted_mean_of_the_passes():
    first = _loss(1)
    second = 2 * _loss(2) - first  # the second pass's own loss
    assert first != pytest.approx(second)
    assert _loss(2, weight=3.0) == pytest.approx((3 * first + second) / 4, rel=1e-5, abs=1e-6)
    assert _loss(1, weight=3.0) == pytest.approx(first, rel=1e-5, abs=1e-6)


def test_a_first_pass_weight_must_be_positive():
    with pytest.raises(ValueError, match="first_click_weight"):
        ClickLoop(_Growing(), 2, "cvpr25", "dice_ce", first_click_weight=0.0)
    with pytest.raises(UsageError, match="first_click_weight"):
        TrainConfig(first_click_weight=-1.0, synthetic={"weight": 1.0})
