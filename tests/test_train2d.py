"""2D fine-tuning: paper freezing per family, SAM-Med2D's load_from, 2D sample sources, config checks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from conftest import load_golden
from golden_configs import sam_config, sam_med2d_config, sam_unet_config
from io2d_files import phantom
from PIL import Image as PILImage

import voxprompt
from voxprompt.errors import UsageError
from voxprompt.models.load_from import load_from, resize_rel_pos
from voxprompt.train import Trainer, config_from_dict
from voxprompt.train.freeze import apply_freeze
from voxprompt.train.interaction2d import error_points, jittered_box

FAMILIES = {
    "sam-vit-b": ("sam_tiny.pt", sam_config, lambda n: n.startswith("mask_decoder.")),
    "sam-med2d": ("sam_med2d_tiny.pt", sam_med2d_config,
                  lambda n: ".Adapter." in n or n.startswith(("prompt_encoder.", "mask_decoder."))),
    "sam-unet": ("sam_unet_tiny.pt", sam_unet_config, lambda n: not n.startswith("image_encoder.")),
}


def _overrides(name: str) -> dict:
    fixture, fn, _ = FAMILIES[name]
    return fn(load_golden(fixture)["config"]).to_dict()


def _cfg(name: str, out: Path, **kw) -> dict:
    d = {"model": name, "model_overrides": _overrides(name), "synthetic": {"weight": 1.0, "max_objects": 3},
         "steps": 2, "batch_size": 1, "click_steps": 3, "warmup_steps": 1, "out_dir": str(out), "save_every": 2,
         "log_every": 1, "seed": 3, "freeze": "paper", "loss": "focal_dice", "train2d": {"synthetic_size": 32}}
    d.update(kw)
    return d


@pytest.mark.parametrize("name", list(FAMILIES))
def test_paper_freezing_keeps_frozen_weights_bit_identical(name, tmp_path):
    loss = "focal_20dice" if name == "sam-unet" else "focal_dice"  # SAM-UNet reverses the weighting
    trainer = Trainer(config_from_dict(_cfg(name, tmp_path, batch_size=2 if name != "sam-unet" else 1, loss=loss)))
    expected = FAMILIES[name][2]
    params = dict(trainer.model.named_parameters())
    assert {n for n, p in params.items() if p.requires_grad} == {n for n in params if expected(n)}
    before = {n: p.detach().clone() for n, p in params.items()}
    stats = [trainer.train_step() for _ in range(2)]
    assert all(np.isfinite(s["loss"]) and 0 <= s["dice"] <= 1 for s in stats)
    assert trainer.cfg.loss == ("focal_20dice" if name == "sam-unet" else "focal_dice")
    frozen = [n for n, p in params.items() if not p.requires_grad]
    trained = [n for n, p in params.items() if p.requires_grad]
    assert frozen and all(torch.equal(before[n], params[n]) for n in frozen)
    changed = [n for n in trained if not torch.equal(before[n], params[n])]
    # every trained tensor that took part changed (unused multimask heads get no gradient)
    assert all(n in changed or params[n].grad is None for n in trained)
    assert len(changed) > 0.8 * len(trained)


def test_fit_exports_a_loadable_2d_model(tmp_path):
    path = Trainer(config_from_dict(_cfg("sam-med2d", tmp_path, click_steps=1))).fit(progress=False)
    model = voxprompt.load_model("sam-med2d", path)
    assert model.cfg.embed_dim == 64 and (tmp_path / "log.csv").is_file()


def test_freeze_presets_and_errors(tiny_sam, tiny_unet):
    unet = tiny_unet[1]
    apply_freeze(unet, "none")
    assert all(p.requires_grad for p in unet.parameters())  # SAM-UNet's ViT too
    apply_freeze(unet, "decoder")
    assert {n.split(".")[0] for n, p in unet.named_parameters() if p.requires_grad} == {"mask_decoder"}
    apply_freeze(unet, "paper")
    model = tiny_sam[1]
    apply_freeze(model, ["image_encoder."])
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    with pytest.raises(UsageError, match="preset 'papr'"):
        apply_freeze(model, "papr")
    with pytest.raises(UsageError, match="every parameter"):
        apply_freeze(model, [""])
    apply_freeze(model, "none")
    for bad, words in (({"init_mode": "resize"}, "init_mode"), ({"init_mode": "load_from"}, "needs init_checkpoint"),
                       ({"train2d": {"slice_axes": [3]}}, "slice_axes"), ({"train2d": {"window": "wide"}}, "window"),
                       ({"freeze": 3}, "freeze")):
        with pytest.raises(UsageError, match=words):
            config_from_dict({"synthetic": {"weight": 1}, **bad})


def test_load_from_resizes_sam_weights_like_sam_med2d(tmp_path):
    """SAM weights of a 512 px model -> a 256 px model with adapters (official load_from)."""
    small = dict(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=6, prompt_embed_dim=32,
                 decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32)
    src_cfg = voxprompt.SamConfig(img_size=512, **small)
    torch.manual_seed(11)
    src = voxprompt.build_model(src_cfg, name="sam-vit-b").state_dict()
    for k in src:  # make pos_embed / rel-pos non-trivial (officially zero-initialised)
        if "pos" in k and src[k].is_floating_point():
            src[k] = torch.randn_like(src[k])
    torch.save(src, tmp_path / "sam512.pth")
    dst_cfg = voxprompt.SamConfig(img_size=256, adapter=True, **small).to_dict()
    cfg = config_from_dict({"model": "sam-med2d", "model_overrides": dst_cfg,
                            "init_checkpoint": str(tmp_path / "sam512.pth"), "init_mode": "load_from",
                            "synthetic": {"weight": 1.0}, "out_dir": str(tmp_path / "run"), "seed": 5})
    model = Trainer(cfg).model
    fresh = _fresh(dst_cfg, 5)
    sd = model.state_dict()
    pos = F.interpolate(src["image_encoder.pos_embed"].permute(0, 3, 1, 2), (16, 16), mode="bilinear",
                        align_corners=False).permute(0, 2, 3, 1)
    assert torch.equal(sd["image_encoder.pos_embed"], pos)
    g = src["image_encoder.blocks.1.attn.rel_pos_h"]  # global block: 63 -> 31
    assert g.shape[0] == 63 and torch.equal(sd["image_encoder.blocks.1.attn.rel_pos_h"],
                                            F.interpolate(g[None, None], (31, g.shape[1]), mode="bilinear")[0, 0])
    assert torch.equal(sd["image_encoder.blocks.0.attn.rel_pos_w"], src["image_encoder.blocks.0.attn.rel_pos_w"])
    for k in ("image_encoder.blocks.0.attn.qkv.weight", "prompt_encoder.point_embeddings.0.weight",
              "mask_decoder.transformer.layers.0.self_attn.q_proj.weight"):
        assert torch.equal(sd[k], src[k])
    for k in ("mask_decoder.mask_tokens.weight", "mask_decoder.iou_prediction_head.layers.0.weight",
              "mask_decoder.output_hypernetworks_mlps.0.layers.0.weight",
              "image_encoder.blocks.0.Adapter.channel.0.weight"):
        assert torch.equal(sd[k], fresh[k]) and (k not in src or not torch.equal(sd[k], src[k]))
    assert resize_rel_pos(g, 63).equal(g)
    with pytest.raises(voxprompt.CheckpointError, match="shares no key"):
        load_from(model, {"foo": torch.zeros(1)})


def _fresh(cfg: dict, seed: int) -> dict:
    torch.manual_seed(seed)
    return voxprompt.load_model("sam-med2d", config=cfg, pretrained=False).state_dict()


def _pairs_folder(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    index = {}
    for i in range(2):
        grey, mask = phantom(50 + 10 * i, 70, seed=i)
        PILImage.fromarray(np.stack([grey] * 3, -1)).save(root / "images" / f"im{i}.png")
        PILImage.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"im{i}_organ_000.png")
        index[f"images/im{i}.png"] = [f"masks/im{i}_organ_000.png"]
    (root / "image2label_train.json").write_text(json.dumps(index))
    return root


def _volume_dataset(root: Path) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    img = np.random.default_rng(0).normal(0, 5, (12, 40, 40)).astype(np.float32)
    lab = np.zeros(img.shape, np.uint8)
    lab[3:9, 10:25, 12:30] = 1
    img[lab > 0] += 80
    for arr, p in ((img, root / "imagesTr" / "c_0000.nii.gz"), (lab, root / "labelsTr" / "c.nii.gz")):
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(p))
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "organ": 1},
                                                   "channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}))
    return root


def test_2d_sources_pairs_and_slices(tmp_path):
    pairs = _pairs_folder(tmp_path / "sam_med2d_data")
    vols = _volume_dataset(tmp_path / "vols")
    cfg = _cfg("sam-med2d", tmp_path / "run", synthetic={"weight": 0.0}, steps=1, click_steps=2,
               data=[{"path": str(pairs), "weight": 1.0}, {"path": str(vols), "split": None, "weight": 1.0}],
               train2d={"slice_axes": [0, 2], "window": "soft-tissue"})
    trainer = Trainer(config_from_dict(cfg))
    images, masks = trainer.mixer.batch((0, 0, 0, 0), 4)
    assert images.shape == (4, 3, 256, 256) and images.dtype == np.float32
    assert masks.shape == (4, 256, 256) and masks.dtype == np.uint8 and all(m.sum() >= 4 for m in masks)
    again, _ = trainer.mixer.batch((0, 0, 0, 0), 4)
    assert np.array_equal(images, again)  # a pure function of the seed
    assert np.isfinite(trainer.train_step()["loss"])


def test_prompt_simulation_helpers():
    rng = np.random.default_rng(0)
    m = np.zeros((64, 64), bool)
    m[10:30, 20:50] = True
    boxes = [jittered_box(m, rng, 5) for _ in range(50)]
    assert all(b[2] - b[0] == 30 and b[3] - b[1] == 20 for b in boxes)  # translated, not resized
    shifts = {b[0] - 20 for b in boxes}
    assert min(shifts) >= -5 and max(shifts) <= 4 and len(shifts) > 3
    pred = np.zeros_like(m)
    pred[10:30, 20:35] = True
    pred[0:5, 0:5] = True
    xy, labels = error_points(pred, m, 9, rng)
    for (x, y), lab in zip(xy, labels):
        assert pred[int(y), int(x)] != m[int(y), int(x)] and lab == int(m[int(y), int(x)])
    xy, labels = error_points(m, m, 3, rng)  # no error: positive points in the object
    assert labels == [1, 1, 1] and all(m[int(y), int(x)] for x, y in xy)
