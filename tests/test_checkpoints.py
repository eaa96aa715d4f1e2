"""Official checkpoint layouts, safe loading, strict keys, conversion to safetensors."""
from __future__ import annotations

import argparse

import pytest
import torch
from conftest import load_golden
from golden_configs import sam_config, sam_med2d_config, sam_med3d_config

import voxprompt
from voxprompt.models.checkpoints import identify, read_checkpoint, save_safetensors


@pytest.fixture(scope="module")
def med3d():
    g = load_golden("sam_med3d_tiny.pt")
    return g, sam_med3d_config(g["config"])


@pytest.fixture(scope="module")
def med2d():
    g = load_golden("sam_med2d_tiny.pt")
    sd = {k: v.contiguous() for k, v in g["state_dict"].items()}
    return g, sd, sam_med2d_config(g["config"])


def _embed_3d(model, g):
    with torch.no_grad():
        emb = model.encode(g["image"].float())
        return model.decode(emb, points=(g["points"], g["labels"]))[0]


def test_sam_med3d_layout_with_args_namespace(tmp_path, med3d):
    g, cfg = med3d
    path = tmp_path / "sam_med3d_turbo.pth"
    torch.save(
        {"model_state_dict": g["state_dict"], "epoch": 199, "args": argparse.Namespace(lr=8e-5), "best_dice": 0.9},
        path,
    )
    model = voxprompt.load_model("sam-med3d", path, config=cfg)
    assert model.image_encoder.pos_embed.dtype == torch.float32  # fp16 file upcast on load
    torch.testing.assert_close(model.image_encoder.pos_embed, g["state_dict"]["image_encoder.pos_embed"].float())


def test_plain_and_module_prefixed_state_dicts(tmp_path):
    g = load_golden("sam_tiny.pt")
    cfg = sam_config(g["config"])
    plain = tmp_path / "sam_vit_b.pth"
    torch.save(g["state_dict"], plain)
    prefixed = tmp_path / "ddp.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in g["state_dict"].items()}}, prefixed)
    a = voxprompt.load_model("sam-vit-b", plain, config=cfg)
    b = voxprompt.load_model("sam-vit-b", prefixed, config=cfg)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_pickled_optimizer_refused_then_converted(tmp_path, med2d):
    g, sd, cfg = med2d
    model = voxprompt.load_model("sam-med2d", sd, config=cfg)
    path = tmp_path / "sam-med2d_b.pth"
    torch.save({"model": sd, "optimizer": torch.optim.Adam(model.parameters(), lr=1e-4)}, path)
    with pytest.raises(voxprompt.CheckpointError, match="--trust-pickle"):
        voxprompt.load_model("sam-med2d", path, config=cfg)
    trusted = voxprompt.load_model("sam-med2d", path, config=cfg, trust_pickle=True)
    out = tmp_path / "med2d.safetensors"
    path_out, name = voxprompt.convert_checkpoint(path, out, name="sam-med2d", trust_pickle=True, config=cfg.to_dict())
    assert name == "sam-med2d" and path_out == out
    converted = voxprompt.load_model("sam-med2d", out)  # config travels in the metadata
    with torch.no_grad():
        ea, eb = trusted.encode(g["image"]), converted.encode(g["image"])
    assert torch.equal(ea, eb)
    assert not list(tmp_path.glob(".*.tmp"))


def test_safetensors_round_trip_keeps_outputs(tmp_path, med3d):
    g, cfg = med3d
    model = voxprompt.load_model("sam-med3d", g["state_dict"], config=cfg)
    path = save_safetensors(model.state_dict(), tmp_path / "m.safetensors", "sam-med3d", cfg.to_dict())
    sd, meta = read_checkpoint(path)
    assert meta["voxprompt_model"] == "sam-med3d"
    again = voxprompt.load_model("sam-med3d", path)
    assert again.cfg == cfg
    assert torch.equal(_embed_3d(model, g), _embed_3d(again, g))


def test_safetensors_of_another_family_is_refused(tmp_path, med3d):
    g, cfg = med3d
    path = save_safetensors(g["state_dict"], tmp_path / "m.safetensors", "sam-med3d", cfg.to_dict())
    with pytest.raises(voxprompt.CheckpointError, match="sam-med3d model, not sam-vit-b"):
        voxprompt.load_model("sam-vit-b", path)


def test_strict_keys_report_missing_unexpected_and_shapes(med3d):
    g, cfg = med3d
    sd = dict(g["state_dict"])
    sd.pop("image_encoder.pos_embed")
    sd["image_encoder.extra"] = torch.zeros(1)
    sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 7)
    with pytest.raises(voxprompt.CheckpointError) as err:
        voxprompt.load_model("sam-med3d", sd, config=cfg)
    msg = str(err.value)
    assert "1 missing keys: image_encoder.pos_embed" in msg
    assert "1 unexpected keys: image_encoder.extra" in msg
    assert "mask_decoder.iou_token.weight: checkpoint (1, 7)" in msg


def test_checkpoint_of_other_architecture_is_named():
    sam_sd = voxprompt.load_model("sam-vit-b").state_dict()
    assert identify(sam_sd) == "sam-vit-b"
    with pytest.raises(voxprompt.CheckpointError, match="looks like a sam-vit-b checkpoint"):
        voxprompt.load_model("sam-med3d", sam_sd)
    med3d_sd = voxprompt.load_model("sam-med3d").state_dict()
    with pytest.raises(voxprompt.CheckpointError, match="looks like a sam-med3d checkpoint"):
        voxprompt.load_model("sam-med2d", med3d_sd)


def test_sam_unet_infers_resnet_depth():
    r34 = voxprompt.load_model("sam-unet-res34").state_dict()
    model = voxprompt.load_model("sam-unet", r34)
    assert model.cfg.resnet_depth == 34
    assert identify(voxprompt.load_model("sam-unet").state_dict()) == "sam-unet"


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated zip"])
def test_corrupt_files(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(voxprompt.CheckpointError, match="bad.pth"):
        voxprompt.load_model("sam-med3d", path)


def test_truncated_real_checkpoint(tmp_path, med3d):
    g, cfg = med3d
    path = tmp_path / "trunc.pth"
    torch.save({"model_state_dict": g["state_dict"]}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(voxprompt.CheckpointError, match="trunc.pth"):
        voxprompt.load_model("sam-med3d", path, config=cfg)


def test_bad_safetensors_and_missing_file(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage")
    with pytest.raises(voxprompt.CheckpointError, match="x.safetensors"):
        voxprompt.load_model("sam-med3d", bad)
    with pytest.raises(voxprompt.CheckpointError, match="no such file"):
        voxprompt.load_model("sam-med3d", tmp_path / "nope.pth")


def test_non_state_dict_content(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(voxprompt.CheckpointError, match="expected a dict"):
        voxprompt.load_model("sam-med3d", path)


# ---------------------------------------------------------------- issue 20: correct and unsurprising commands

TINY_OVERRIDES = {"embed_dim": 64, "depth": 2, "num_heads": 4, "global_attn_indexes": [1], "prompt_embed_dim": 48}


def test_partial_config_applies_on_top_of_the_named_model():
    """Item 1: ``load_model(name, config={...})`` overrides the zoo config of ``name``, key by key."""
    model = voxprompt.load_model("sam-med3d", pretrained=False, config=TINY_OVERRIDES)
    cfg = model.cfg
    assert (cfg.spatial_dims, cfg.img_size, cfg.in_chans, cfg.num_point_embeddings) == (3, 128, 1, 2)
    assert (cfg.embed_dim, cfg.depth, cfg.global_attn_indexes, cfg.prompt_embed_dim) == (64, 2, (1,), 48)
    again = voxprompt.load_model("sam-med3d", model.state_dict(), config=TINY_OVERRIDES)  # its weights load
    assert again.cfg == cfg
    assert voxprompt.load_model("sam-med3d", model.state_dict(), config=cfg.to_dict()).cfg == cfg  # full config
    assert voxprompt.load_model("sam-med3d", model.state_dict(), config=cfg).cfg == cfg  # a dataclass
    with pytest.raises(voxprompt.UsageError, match="embed_dimm.*known keys"):
        voxprompt.load_model("sam-med3d", pretrained=False, config={"embed_dimm": 64})


def test_mismatch_message_has_no_doubled_article():
    """Item 3: 'it looks like a a SAM-Med3D-style 3D model' lost its second 'a'."""
    small = voxprompt.load_model("sam-med3d", pretrained=False, config=TINY_OVERRIDES)
    with pytest.raises(voxprompt.CheckpointError) as err:
        voxprompt.load_model("sam-med3d", small.state_dict())
    msg = str(err.value)
    assert "it looks like a SAM-Med3D-style 3D model with a 64-wide encoder" in msg
    assert " a a " not in msg and " an a " not in msg


def test_pickle_refusal_gives_no_allowlist_advice(tmp_path, med2d):
    """Issue 20 #16: torch's 'use add_safe_globals' advice (an unsafe fix) is not passed on."""
    g, sd, cfg = med2d
    model = voxprompt.load_model("sam-med2d", sd, config=cfg)
    path = tmp_path / "opt.pth"
    torch.save({"model": sd, "optimizer": torch.optim.Adam(model.parameters(), lr=1e-4)}, path)
    with pytest.raises(voxprompt.CheckpointError) as err:
        voxprompt.load_model("sam-med2d", path, config=cfg)
    msg = str(err.value)
    assert "safe_globals" not in msg and "allowlist" not in msg and "\n" not in msg
    assert "torch.optim.adam.Adam" in msg and "voxprompt convert" in msg and "--trust-pickle" in msg


def test_key_mismatch_list_is_capped_and_names_the_architecture(med3d):
    """Issue 20 #16: first 5 names + 'and N more', and the detected architecture always named."""
    g, cfg = med3d
    keys = list(g["state_dict"])
    sd = {k: g["state_dict"][k] for k in keys[:-8]}
    with pytest.raises(voxprompt.CheckpointError) as err:
        voxprompt.load_model("sam-med3d", sd, config=cfg)
    msg = str(err.value)
    assert "8 missing keys: " in msg and msg.endswith(" and 3 more"), msg
    assert msg.split("8 missing keys: ")[1].split(" and 3 more")[0].count(",") == 4
    assert "it looks like a SAM-Med3D-style 3D model with a 64-wide encoder" in msg
    small = voxprompt.load_model("voxprompt-med3d-small").state_dict()  # same family: named all the same
    small.pop(next(iter(small)))
    with pytest.raises(voxprompt.CheckpointError, match="detected architecture: voxprompt-med3d-small"):
        voxprompt.load_model("voxprompt-med3d-small", small)
