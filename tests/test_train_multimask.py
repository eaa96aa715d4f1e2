"""The multimask outputs trained for a first click (ClickLoop's multimask_first) and their warm start."""
import numpy as np
import pytest
import torch
from conftest import load_golden
from golden_configs import sam_med3d_config

import voxprompt
from voxprompt.train.interaction import ClickLoop
from voxprompt.train.losses import per_sample_loss, segmentation_loss
from voxprompt.train.trainer import warm_start_multimask


def _ball(n: int, r: float) -> np.ndarray:
    g = np.indices((n, n, n)) - (n - 1) / 2
    return (g**2).sum(0) <= r * r


def _no_autocast():
    return torch.autocast("cpu", enabled=False)


class _Hypotheses(torch.nn.Module):
    """Token 0 predicts nothing; the multimask tokens predict nothing, the label, and everything."""

    img_size, low_res_size = 16, 16

    def __init__(self, gt: torch.Tensor, iou: float) -> None:
        super().__init__()
        self.gt, self.iou = gt, iou
        self.w = torch.nn.Parameter(torch.ones(()))

    def encode(self, x):
        return x * self.w

    def decode(self, emb, points, mask_input, multimask=False):
        b = emb.shape[0]
        empty = torch.full((b, 1, 16, 16, 16), -10.0) * self.w
        if not multimask:
            return empty, torch.full((b, 1), self.iou)
        label = (self.gt * 20 - 10) * self.w
        return torch.cat([empty, label, -empty], 1), torch.full((b, 3), self.iou)


def test_per_sample_loss_is_what_the_batch_loss_averages():
    logits = torch.randn(3, 1, 8, 8, 8)
    target = torch.rand(3, 1, 8, 8, 8) > 0.5
    for kind in ("dice_ce", "focal_dice", "focal_20dice"):
        per, dice, iou = per_sample_loss(logits, target, kind)
        mean, dice2, iou2 = segmentation_loss(logits, target, kind)
        assert per.shape == (3,) and torch.allclose(per.mean(), mean)
        assert torch.equal(dice, dice2) and torch.equal(iou, iou2)


def test_the_best_hypothesis_alone_gets_the_segmentation_loss():
    gt = torch.from_numpy(_ball(16, 5.0))[None, None].float().repeat(2, 1, 1, 1, 1)
    image = torch.zeros_like(gt)
    model = _Hypotheses(gt, iou=0.5)
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    single, _ = ClickLoop(model, 1, "cvpr25", "dice_ce")(image, gt, rng(), _no_autocast)
    both, stats = ClickLoop(model, 1, "cvpr25", "dice_ce", multimask_first=True)(image, gt, rng(), _no_autocast)
    best, _, _ = per_sample_loss((gt * 20 - 10), gt, "dice_ce")
    true_iou = torch.tensor([0.0, 1.0, float(gt.mean())])  # IoU of empty, the label, everything
    iou_error = float(((0.5 - true_iou) ** 2).mean())
    assert float((both - single).detach()) == pytest.approx(float(best.mean()) + iou_error, rel=1e-5, abs=1e-6)
    assert stats["dice_1_best_of"] == pytest.approx(1.0)


def test_samples_started_from_a_prior_get_no_multimask_loss():
    gt = torch.from_numpy(_ball(16, 5.0))[None, None].float().repeat(2, 1, 1, 1, 1)
    image = torch.zeros_like(gt)
    model = _Hypotheses(gt, iou=0.5)
    kw = dict(click_steps=1, click_mode="cvpr25", loss="dice_ce", mask_prior_prob=1.0)
    plain, _ = ClickLoop(model, **kw)(image, gt, np.random.default_rng(0), _no_autocast)
    multi, _ = ClickLoop(model, multimask_first=True, **kw)(image, gt, np.random.default_rng(0), _no_autocast)
    assert float(multi.detach()) == pytest.approx(float(plain.detach()))


@pytest.fixture(scope="module")
def tiny():
    g = load_golden("sam_med3d_tiny.pt")
    return lambda: voxprompt.load_model("sam-med3d", g["state_dict"], config=sam_med3d_config(g["config"]))


def test_multimask_tokens_learn_only_when_asked(tiny):
    gt = torch.from_numpy(_ball(128, 30.0))[None, None].float()
    image = torch.randn_like(gt)
    for on in (False, True):
        model = tiny().train()
        loss, _ = ClickLoop(model, 1, "cvpr25", "dice_ce", multimask_first=on)(
            image, gt, np.random.default_rng(0), _no_autocast)
        loss.backward()
        mlps = model.mask_decoder.output_hypernetworks_mlps
        grads = [sum(float(p.grad.abs().sum()) for p in mlps[k].parameters() if p.grad is not None)
                 for k in range(len(mlps))]
        assert grads[0] > 0
        assert (sum(grads[1:]) > 0) == on


def test_warm_start_copies_the_single_mask_output(tiny):
    model = tiny().eval()
    warm_start_multimask(model)
    x = torch.randn(1, 1, 128, 128, 128)
    pts = (torch.tensor([[[64.0, 64.0, 64.0]]]), torch.tensor([[1]]))
    with torch.no_grad():
        emb = model.encode(x)
        one, iou_one = model.decode(emb, points=pts, multimask=False)
        three, iou_three = model.decode(emb, points=pts, multimask=True)
    for k in range(3):  # close to token 0 (a little noise tells them apart), not equal
        agree = float(((one[0, 0] > 0) == (three[0, k] > 0)).float().mean())
        assert agree > 0.95 and not torch.equal(one[0, 0], three[0, k])
    torch.testing.assert_close(iou_three, iou_one.expand(1, 3), rtol=0.05, atol=0.02)
