"""Mask priors for training (voxprompt.train.priors) and the click loop started from them."""
import numpy as np
import pytest
import torch

from voxprompt.eval.metrics import dice
from voxprompt.session.roi_predictor import mask_prior_logits
from voxprompt.train.priors import KINDS, degraded_prior


def _ball(n: int = 32, r: float = 9.0) -> np.ndarray:
    g = np.indices((n, n, n)) - (n - 1) / 2
    return (g**2).sum(0) <= r * r


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_a_plausible_mask_of_the_label(kind):
    gt = _ball()
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = degraded_prior(gt, rng, kind)
        assert m.shape == gt.shape and m.dtype == bool
        d = dice(m, gt)
        if kind == "exact":
            assert d == 1.0
        elif kind == "cut":
            assert not (m & ~gt).any() and m.sum() < gt.sum()  # one side of a plane, inside the label
        else:
            assert 0.3 < d < 1.0, (kind, d)  # close to the label, but not it


def test_kinds_drawn_and_empty_label():
    rng = np.random.default_rng(1)
    gt = _ball()
    draws = [dice(degraded_prior(gt, rng), gt) for _ in range(30)]
    assert any(d == 1.0 for d in draws) and any(d < 1.0 for d in draws)
    assert not degraded_prior(np.zeros((8, 8, 8), bool), rng).any()
    with pytest.raises(ValueError, match="unknown prior kind"):
        degraded_prior(gt, rng, "nope")


def test_coarse_prior_matches_a_coarser_grid():
    gt = _ball(30, 8.0)
    m = degraded_prior(gt, np.random.default_rng(3), "coarse")
    # piecewise constant on blocks of the drawn factor: far fewer distinct x-profiles than a fine ball
    assert 0.6 < dice(m, gt) < 1.0
    assert len({tuple(row) for row in m[15].astype(int)}) < len({tuple(row) for row in gt[15].astype(int)}) + 1


class _Stub(torch.nn.Module):
    """Records the mask_input of each decoder pass; predicts its prior (so the loop's plumbing shows)."""

    img_size, low_res_size = 16, 8

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.inputs: list[torch.Tensor] = []

    def encode(self, x):
        return x * self.w

    def decode(self, emb, points, mask_input, multimask=False):
        self.inputs.append(mask_input.clone())
        return mask_input * self.w, torch.zeros((emb.shape[0], 1))


def test_click_loop_starts_primed_samples_from_the_session_prior():
    from voxprompt.train.interaction import ClickLoop

    gt = torch.from_numpy(_ball(16, 5.0))[None, None].float().repeat(2, 1, 1, 1, 1)
    image = torch.zeros_like(gt)
    stub = _Stub()
    loop = ClickLoop(stub, click_steps=2, click_mode="cvpr25", loss="dice_ce", mask_prior_prob=1.0)
    loss, stats = loop(image, gt, np.random.default_rng(0), lambda: torch.autocast("cpu", enabled=False))
    first = stub.inputs[0]
    assert first.abs().max() == pytest.approx(10.0)  # +/- MASK_PRIOR_LOGIT, as a session feeds it
    np.testing.assert_allclose(first[0, 0].sign().numpy().max(), 1.0)
    assert torch.isfinite(loss)

    stub.inputs.clear()
    ClickLoop(stub, 2, "cvpr25", "dice_ce")(image, gt, np.random.default_rng(0),
                                            lambda: torch.autocast("cpu", enabled=False))
    assert stub.inputs[0].abs().max() == 0  # off by default: the zero prior of a fresh ROI


def test_prior_logits_of_exact_prior_reproduce_the_label():
    gt = _ball(16, 5.0)
    logits = mask_prior_logits(degraded_prior(gt, np.random.default_rng(0), "exact"), 8)
    up = torch.nn.functional.interpolate(logits, size=(16,) * 3, mode="trilinear", align_corners=False)
    assert dice(up[0, 0].numpy() > 0, gt) > 0.9
