"""Training: config validation, schedule, synthetic data, exact resume, 2-rank DDP on CPU."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from voxprompt.cli import main
from voxprompt.errors import UsageError
from voxprompt.models.loading import load_model
from voxprompt.train import Trainer, config_from_dict, load_config, lr_at
from voxprompt.train.losses import segmentation_loss
from voxprompt.train.synthetic import synthetic_sample

TINY = {  # a tiny voxprompt-med3d-small: 32^3 input, 4^3 tokens
    "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
    "global_attn_indexes": [0, 1], "prompt_embed_dim": 24, "decoder_num_heads": 2,
    "decoder_mlp_dim": 32, "iou_head_hidden_dim": 16, "mask_in_chans": 4,
}


def tiny_cfg(out: Path, **kw) -> dict:
    d = {"model_overrides": TINY, "synthetic": {"weight": 1.0, "max_objects": 3}, "steps": 4,
         "batch_size": 2, "click_steps": 2, "warmup_steps": 1, "out_dir": str(out), "save_every": 2,
         "log_every": 1, "seed": 3}
    d.update(kw)
    return d


def test_config_rejects_unknown_and_bad_values(tmp_path):
    with pytest.raises(UsageError, match="unknown key.*'lr_rate'"):
        config_from_dict({"synthetic": {"weight": 1}, "lr_rate": 1})
    with pytest.raises(UsageError, match=r"unknown key.*'weigth'.*config.synthetic"):
        config_from_dict({"synthetic": {"weigth": 1}})
    with pytest.raises(UsageError, match="loss must be one of"):
        config_from_dict({"synthetic": {"weight": 1}, "loss": "mse"})
    with pytest.raises(UsageError, match="no data"):
        config_from_dict({})
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_config(bad)


def test_cli_train_bad_config_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("synthetic: {weight: 1}\nbatchsize: 2\n")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "batchsize" in err


def test_lr_schedule_warmup_then_cosine():
    cfg = config_from_dict({"synthetic": {"weight": 1}, "lr": 1.0, "warmup_steps": 10, "steps": 110,
                            "min_lr_ratio": 0.1})
    lrs = [lr_at(cfg, s) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_synthetic_sample_deterministic_and_valid():
    a = synthetic_sample(np.random.default_rng(5), 32)
    b = synthetic_sample(np.random.default_rng(5), 32)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    image, label = a
    assert image.shape == label.shape == (32, 32, 32) and image.dtype == np.float32
    assert label.sum() >= 30 and np.isfinite(image).all()
    assert abs(image[image > image.min()].mean()) < 2  # normalised


def test_centred_first_click_lies_in_the_target_after_flips():
    from voxprompt.train.config import AugmentConfig, SyntheticSource
    from voxprompt.train.samples import SampleMixer

    mixer = SampleMixer([], SyntheticSource(1.0, max_objects=3), AugmentConfig(centered_click=1.0), 32, 1.5)
    images, labels, clicks = mixer.batch((0, 1), 6)
    for label, click in zip(labels, clicks):
        assert label[tuple(click)] == 1
        assert all(c in (15, 16) for c in click)  # the ROI centre, mirrored or not
    _, _, none = SampleMixer([], SyntheticSource(1.0), AugmentConfig(), 32, 1.5).batch((0, 1), 2)
    assert (none == -1).all()


def test_losses_perfect_prediction():
    gt = torch.zeros(1, 1, 8, 8, 8)
    gt[..., 2:6, 2:6, 2:6] = 1
    logits = (gt * 2 - 1) * 20
    for kind in ("dice_ce", "focal_dice"):
        loss, dice, iou = segmentation_loss(logits, gt, kind)
        assert float(loss) < 1e-3 and float(dice) == 1.0 and float(iou) == 1.0
    loss_bad, dice_bad, _ = segmentation_loss(-logits, gt, "dice_ce")
    assert float(loss_bad) > 1 and float(dice_bad) == 0.0


def test_resume_is_exact(tmp_path):
    straight = Trainer(config_from_dict(tiny_cfg(tmp_path / "a")))
    straight.fit(progress=False)
    first = Trainer(config_from_dict(tiny_cfg(tmp_path / "b")))
    first.fit(steps=2, progress=False)
    second = Trainer(config_from_dict(tiny_cfg(tmp_path / "b")))
    assert second.resume() and second.step == 2
    second.fit(progress=False)
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    init = load_model("voxprompt-med3d-small", pretrained=False,
                      config={**load_model("voxprompt-med3d-small").cfg.to_dict(), **TINY})
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], v) for k, v in init.state_dict().items())  # it trained
    assert (tmp_path / "b" / "loss_curve.png").is_file()
    rows = (tmp_path / "b" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    # the exported file loads by name with its stored config
    m = load_model("voxprompt-med3d-small", tmp_path / "a" / "model.safetensors")
    assert m.cfg.img_size == 32


def test_dataloader_workers_give_the_same_run(tmp_path):
    a = Trainer(config_from_dict(tiny_cfg(tmp_path / "a", steps=2)))
    a.fit(progress=False)
    b = Trainer(config_from_dict(tiny_cfg(tmp_path / "b", steps=2, num_workers=1)))
    b.fit(progress=False)
    wa, wb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


DDP_SCRIPT = """
import sys, torch
from safetensors.torch import save_file
from voxprompt.train import Trainer, config_from_dict
import json
cfg = config_from_dict(json.loads(sys.argv[1]))
t = Trainer(cfg)
t.fit(progress=False)
rank = torch.distributed.get_rank()
save_file({k: v.contiguous() for k, v in t.model.state_dict().items()}, f"{cfg.out_dir}/rank{rank}.safetensors")
im = t.mixer.batch((cfg.seed, 0, rank, 0), 1)[0]
torch.save(torch.from_numpy(im), f"{cfg.out_dir}/batch{rank}.pt")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_ranks_stay_identical(tmp_path):
    import json

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    cfg = tiny_cfg(tmp_path, steps=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
         str(_free_port()), str(script), json.dumps(cfg)],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = load_file(str(tmp_path / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "rank1.safetensors"))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    b0, b1 = torch.load(tmp_path / "batch0.pt"), torch.load(tmp_path / "batch1.pt")
    assert not torch.equal(b0, b1)  # the ranks saw different data


@pytest.mark.parametrize("swap", [True, False])
def test_point_pe_matches_its_cell_only_without_the_official_swap(swap):
    from voxprompt.models.config import SamConfig
    from voxprompt.models.prompt_encoder import PromptEncoder

    cfg = SamConfig(spatial_dims=3, img_size=32, patch_size=8, in_chans=1, prompt_embed_dim=24,
                    num_point_embeddings=2, pe_axis_swap=swap)
    pe = PromptEncoder(cfg).pe_layer
    dense = pe((4, 4, 4))  # (C, 4, 4, 4)
    i, j, k = 0, 3, 1
    point = pe.forward_with_coords(torch.tensor([[(i + .5) * 8, (j + .5) * 8, (k + .5) * 8]]), (32, 32, 32))[0]
    own, mirrored = dense[:, i, j, k], dense[:, j, i, k]
    assert torch.allclose(point, mirrored if swap else own, atol=1e-5)
    assert not torch.allclose(point, own if swap else mirrored, atol=1e-3)


def test_bounding_box_matches_argwhere():
    from voxprompt.train.samples import bounding_box

    rng = np.random.default_rng(0)
    for shape in ((9, 7, 5), (4, 6)):
        mask = np.zeros(shape, dtype=bool)
        assert bounding_box(mask) is None
        mask[tuple(rng.integers(0, s, size=5) for s in shape)] = True
        idx = np.argwhere(mask)
        lo, hi = bounding_box(mask)
        assert np.array_equal(lo, idx.min(0)) and np.array_equal(hi, idx.max(0) + 1)


def test_cli_train_on_a_complete_run_says_so_and_steps_extend_it(tmp_path, capsys, caplog):
    """Issue 20, item 10: a finished run is reported as complete (not a silent '4/4'); ``--steps N``
    past the config's steps extends it (at the schedule's final learning rate), exactly as a run
    straight to N."""
    import yaml

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_cfg(tmp_path / "run")))
    assert main(["train", str(cfg), "--quiet"]) == 0
    capsys.readouterr()
    log_before = (tmp_path / "run" / "log.csv").read_text()
    for extra in ([], ["--steps", "3"], ["--steps", "4"]):
        assert main(["train", str(cfg), "--quiet", *extra]) == 0
        out = capsys.readouterr().out
        assert "complete" in out and "step 4" in out and "--steps" in out, out
        assert (tmp_path / "run" / "log.csv").read_text() == log_before  # nothing trained
    with caplog.at_level("WARNING"):
        assert main(["train", str(cfg), "--quiet", "--steps", "6"]) == 0
    assert "final learning rate" in caplog.text
    assert (tmp_path / "run" / "checkpoints" / "step_0000006").is_dir()
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5", "6"]
    straight = tmp_path / "straight.yaml"
    straight.write_text(yaml.safe_dump(tiny_cfg(tmp_path / "straight")))
    assert main(["train", str(straight), "--quiet", "--steps", "6"]) == 0
    a = load_file(str(tmp_path / "run" / "model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_steps_past_a_schedule_ending_at_zero_are_refused(tmp_path, capsys):
    import yaml

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_cfg(tmp_path / "run", steps=1, min_lr_ratio=0.0)))
    assert main(["train", str(cfg), "--quiet", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "min_lr_ratio" in err and "steps" in err
