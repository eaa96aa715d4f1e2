"""Training from a box's prompt (``box_prob``): the clicks a session makes of the CVPR 2025 box."""
import numpy as np
import pytest
import torch

from voxprompt.errors import UsageError
from voxprompt.train.config import TrainConfig
from voxprompt.train.interaction import BOX_MARGIN, ClickLoop, box_prompt

N = 16


def _ball(centre, r: float) -> np.ndarray:
    g = np.indices((N, N, N)) - np.asarray(centre, float).reshape(3, 1, 1, 1)
    return (g**2).sum(0) <= r * r


class _Recording(torch.nn.Module):
    """Predicts nothing and records the prompts of every decoder call."""

    img_size, low_res_size = N, N

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def encode(self, x):
        return x * self.w

    def decode(self, emb, points, mask_input, multimask=False):
        self.calls.append((points[0].clone(), points[1].clone()))
        return torch.full((emb.shape[0], 1, N, N, N), -10.0) * self.w, torch.full((emb.shape[0], 1), 0.5)


def _run(gt: np.ndarray, **kw) -> _Recording:
    model = _Recording()
    loop = ClickLoop(model, 2, "cvpr25", "dice_ce", **kw)
    g = torch.from_numpy(gt)[:, None].float()
    loop(torch.zeros_like(g), g, np.random.default_rng(0), lambda: torch.autocast("cpu", enabled=False))
    return model


def test_box_prompt_is_the_centre_click_and_a_negative_beyond_each_in_plane_face():
    gt = _ball((8, 8, 8), 4.0)
    clicks = box_prompt(gt, np.random.default_rng(1))
    (seed, positive), negatives = clicks[0], clicks[1:]
    assert positive == 1 and gt[seed]
    assert len(negatives) == 4 and all(label == 0 for _, label in negatives)
    rows = np.flatnonzero(gt[8].any(axis=1))
    for q, _ in negatives:
        assert q[0] == seed[0] and not gt[q]  # on the box's slice (a one-slice box), outside the object
        # a face's own coordinate lies BOX_MARGIN voxels beyond it; the box may have grown (perturbation)
        off = [abs(q[ax] - seed[ax]) for ax in (1, 2)]
        assert max(off) >= (rows[-1] - rows[0]) // 2 + BOX_MARGIN


def test_box_prompt_clicks_inside_an_object_whose_box_centre_misses_it():
    shell = _ball((8, 8, 8), 6.0) & ~_ball((8, 8, 8), 3.5)
    seed, positive = box_prompt(shell, np.random.default_rng(0))[0]
    assert positive == 1 and shell[seed]


def test_a_boxed_first_pass_sends_the_box_prompt_padded_then_one_click_more():
    inner = _ball((8, 8, 8), 4.0)
    edge = _ball((8, 8, 2), 4.0)  # its box touches the x = 0 face: that negative falls outside the ROI
    model = _run(np.stack([inner, edge]), box_prob=1.0)
    coords, labels = model.calls[0]
    assert labels[0].tolist() == [1, 0, 0, 0, 0]
    assert labels[1].tolist() == [1, 0, 0, 0, -1]  # padded with "not a point"
    later_coords, later_labels = model.calls[1]
    assert later_labels.shape[1] == 6  # each sample gets one more click on the box's result
    torch.testing.assert_close(later_coords[:, :5], coords)


def test_box_prob_zero_draws_nothing_and_bad_values_are_refused():
    gt = np.stack([_ball((8, 8, 8), 4.0)] * 2)
    plain, off = _run(gt), _run(gt, box_prob=0.0)
    for (c1, l1), (c2, l2) in zip(plain.calls, off.calls):
        assert torch.equal(c1, c2) and torch.equal(l1, l2)
    assert plain.calls[0][1].shape[1] == 1  # without boxes, one click per pass
    with pytest.raises(ValueError, match="box_prob"):
        ClickLoop(_Recording(), 2, "cvpr25", "dice_ce", box_prob=1.5)
    with pytest.raises(UsageError, match="box_prob"):
        TrainConfig(box_prob=-0.1, synthetic={"weight": 1.0})
